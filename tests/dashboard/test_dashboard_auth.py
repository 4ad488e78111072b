"""Sign-in, sign-out, idle timeout, CSRF, rate limiting and token auth, on the real app and databases."""

from __future__ import annotations

import time

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from dashboard.config import config_of
from dashboard.security import hash_api_token, safe_next_url, verify_password
from dashboard.sessions import ServerSession, store_of
from dashboard.users import revoke_api_tokens, set_active
from painline.config import Settings
from schema.db import session_scope
from schema.models import ApiToken, AuditEvent, User
from tests.dashboard_fixtures import PASSWORD, DashUsers, bearer, csrf_of, login


def audit_rows(app: Flask, action: str) -> list[AuditEvent]:
    with session_scope(app.extensions["painline.sessions"]) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def test_login_page_renders_a_form_with_a_csrf_token(dash_app: Flask) -> None:
    client = dash_app.test_client()
    response = client.get("/login")
    assert response.status_code == 200
    page = response.get_data(as_text=True)
    assert 'name="csrf_token"' in page and csrf_of(client) in page
    assert 'autocomplete="current-password"' in page


def test_login_success_sets_a_hardened_session_and_is_audited(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    response = login(client, "nurse1", next="/calls/5")
    assert response.status_code == 302
    assert response.headers["Location"] == "/calls/5"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Secure" not in cookie  # public_url is http in the tests
    me = client.get("/api/v1/me")
    assert me.status_code == 200 and me.json is not None
    assert me.json["username"] == "nurse1" and me.json["via_token"] is False
    rows = audit_rows(dash_app, "auth.login")
    assert [r.actor for r in rows] == ["nurse1"]
    assert PASSWORD not in str([r.detail for r in audit_rows(dash_app, "auth.login")])


def test_login_refuses_an_offsite_next(dash_app: Flask, dash_users: DashUsers) -> None:
    response = login(dash_app.test_client(), "nurse1", next="//evil.example/x")
    assert response.headers["Location"] == "/"


def test_login_failure_is_401_and_audited_without_the_password(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    response = login(client, "nurse1", "wrong password entirely")
    assert response.status_code == 401
    assert "Unknown username or wrong password" in response.get_data(as_text=True)
    assert client.get("/api/v1/me").status_code == 401
    unknown = login(client, "nobody-here", "whatever password")
    assert unknown.status_code == 401
    rows = audit_rows(dash_app, "auth.login_failed")
    assert [(r.actor, r.detail["reason"]) for r in rows] == [("nurse1", "bad_password"), ("anonymous", "unknown_user")]
    assert all("wrong password" not in str(r.detail) and "nobody-here" not in str(r.detail) for r in rows)


def test_inactive_account_cannot_sign_in(dash_app: Flask, dash_users: DashUsers) -> None:
    set_active(dash_app.extensions["painline.sessions"], "nurse1", False, revoker=store_of(dash_app))
    assert login(dash_app.test_client(), "nurse1").status_code == 401


def test_rate_limit_gives_429_after_five_failures_even_with_the_right_password(
    dash_app: Flask, dash_users: DashUsers
) -> None:
    client = dash_app.test_client()
    for _ in range(5):
        assert login(client, "admin1", "not the password!").status_code == 401
    assert login(client, "admin1").status_code == 429
    assert audit_rows(dash_app, "auth.login_throttled")
    # the counter is per username: another account from the same address still signs in
    assert login(dash_app.test_client(), "nurse1").status_code == 302
    # keys hold no username in clear
    redis = dash_app.extensions["painline.redis"]
    keys = [k.decode() for k in redis.scan_iter(match=f"painline:{config_of(dash_app).key_namespace}:login:*")]
    assert keys and all("admin1" not in k for k in keys)


def test_success_clears_the_failure_count(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    for _ in range(4):
        login(client, "nurse1", "not the password!")
    assert login(client, "nurse1").status_code == 302
    client.post("/logout", data={"csrf_token": csrf_of(client)})
    for _ in range(4):
        assert login(client, "nurse1", "not the password!").status_code == 401


def test_logout_ends_the_session_and_is_audited(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "auditor1")
    response = client.post("/logout", data={"csrf_token": csrf_of(client)})
    assert response.status_code == 302 and response.headers["Location"].endswith("/login")
    assert client.get("/api/v1/me").status_code == 401
    assert [r.actor for r in audit_rows(dash_app, "auth.logout")] == ["auditor1"]


def test_logout_is_post_only(dash_app: Flask) -> None:
    assert dash_app.test_client().get("/logout").status_code == 405


def backdate(client: FlaskClient, seconds: float) -> None:
    """Make the client's session look ``seconds`` older than its last activity."""
    with client.session_transaction() as session:
        assert isinstance(session, ServerSession)
        session.last_active -= seconds
        session.modified = True


def test_idle_timeout_signs_out(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "nurse1")
    assert client.get("/probe/nurse").status_code == 200
    backdate(client, config_of(dash_app).idle_timeout_s + 5)
    response = client.get("/probe/nurse")
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert client.get("/api/v1/me").status_code == 401
    assert [r.actor for r in audit_rows(dash_app, "auth.session_expired")] == ["nurse1"]


def test_activity_keeps_the_session_alive(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "nurse1")
    backdate(client, config_of(dash_app).idle_timeout_s - 60)
    assert client.get("/probe/nurse").status_code == 200
    with client.session_transaction() as session:
        assert isinstance(session, ServerSession)
        assert time.time() - session.last_active < 5


def test_page_guard_redirects_anonymous_and_forbids_the_wrong_role(dash_app: Flask, dash_users: DashUsers) -> None:
    anonymous = dash_app.test_client().get("/probe/nurse?x=1")
    assert anonymous.status_code == 302
    assert "/login?next=/probe/nurse?x%3D1" in anonymous.headers["Location"]
    nurse = dash_app.test_client()
    login(nurse, "nurse1")
    assert nurse.get("/probe/admin").status_code == 403
    assert audit_rows(dash_app, "auth.access_denied")[0].actor == "nurse1"
    admin = dash_app.test_client()
    login(admin, "admin1")
    assert admin.get("/probe/nurse").status_code == 200  # an admin may do what a nurse can
    auditor = dash_app.test_client()
    login(auditor, "auditor1")
    assert auditor.get("/probe/nurse").status_code == 403


def test_form_post_without_csrf_token_is_refused(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "nurse1")
    assert client.post("/probe/form", data={}).status_code == 400
    assert client.post("/probe/form", data={"csrf_token": "forged"}).status_code == 400
    assert client.post("/probe/form", data={"csrf_token": csrf_of(client)}).status_code == 200
    assert client.post("/probe/form", headers={"X-CSRF-Token": csrf_of(client)}).status_code == 200


def test_login_and_logout_need_the_csrf_token_too(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    client.get("/login")
    refused = client.post("/login", data={"username": "nurse1", "password": PASSWORD})
    assert refused.status_code == 400
    assert client.get("/api/v1/me").status_code == 401
    login(client, "nurse1")
    assert client.post("/logout").status_code == 400
    assert client.get("/api/v1/me").status_code == 200


def test_sign_in_rotates_the_csrf_token(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    client.get("/login")
    before = csrf_of(client)
    login(client, "nurse1")
    assert csrf_of(client) != before


def test_auditor_can_never_change_anything_even_where_a_route_allows_it(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "auditor1")
    # /probe/form lists "auditor" among its roles; the read-only rule still wins
    assert client.post("/probe/form", data={"csrf_token": csrf_of(client)}).status_code == 403
    # signing out is the one change an auditor may make
    assert client.post("/logout", data={"csrf_token": csrf_of(client)}).status_code == 302


def test_twilio_routes_are_exempt_from_csrf(dash_app: Flask) -> None:
    # no CSRF token and no signature: refused by the signature check (403), not by CSRF (400)
    response = dash_app.test_client().post("/twilio/voice", data={"CallSid": "CA" + "0" * 32})
    assert response.status_code == 403


def test_api_token_auth_valid_missing_malformed_revoked(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    ok = client.get("/api/v1/me", headers=bearer(dash_users.tokens["nurse"]))
    assert ok.status_code == 200 and ok.json == {"username": "nurse1", "role": "nurse", "via_token": True}
    missing = client.get("/api/v1/me")
    assert missing.status_code == 401 and missing.json is not None and missing.json["error"] == "unauthorized"
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/api/v1/me", headers=bearer("pl_not-a-token")).status_code == 401
    assert client.get("/api/v1/me", headers={"Authorization": "Basic abc"}).status_code == 401
    revoke_api_tokens(dash_app.extensions["painline.sessions"], "nurse1")
    revoked = client.get("/api/v1/me", headers=bearer(dash_users.tokens["nurse"]))
    assert revoked.status_code == 401


def test_token_of_a_deactivated_user_stops_working(dash_app: Flask, dash_users: DashUsers) -> None:
    set_active(dash_app.extensions["painline.sessions"], "admin1", False, revoker=store_of(dash_app))
    assert dash_app.test_client().get("/api/v1/me", headers=bearer(dash_users.tokens["admin"])).status_code == 401


def test_a_bad_token_is_not_rescued_by_a_session(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    login(client, "admin1")
    assert client.get("/api/v1/me").status_code == 200
    assert client.get("/api/v1/me", headers=bearer("pl_wrong")).status_code == 401


def test_only_the_token_hash_is_stored(dash_app: Flask, dash_users: DashUsers) -> None:
    token = dash_users.tokens["admin"]
    with session_scope(dash_app.extensions["painline.sessions"]) as s:
        hashes = set(s.scalars(select(ApiToken.token_hash)))
        password_hashes = list(s.scalars(select(User.password_hash)))
    assert hash_api_token(token) in hashes and token not in hashes
    assert all(PASSWORD not in h and verify_password(h, PASSWORD) for h in password_hashes)


def test_safe_next_url() -> None:
    assert safe_next_url("/calls/1?x=2", "/") == "/calls/1?x=2"
    for bad in ("https://evil.example", "//evil.example", "/\\evil.example", "javascript:alert(1)", "", None):
        assert safe_next_url(bad, "/home") == "/home"


def test_session_cookie_is_secure_behind_https(app_settings: Settings, dash_app: Flask) -> None:
    from painline.app import close_app, create_app

    app = create_app(app_settings.with_(public_url="https://painline.example"))
    try:
        assert app.config["SESSION_COOKIE_SECURE"] is True
        assert app.config["SESSION_COOKIE_HTTPONLY"] is True
    finally:
        close_app(app)
