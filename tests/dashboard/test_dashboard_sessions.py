"""Server-side sessions (issue 13): sign-out, password change and deactivation end every session of
the user, copied cookies included, and only a person's requests keep a session alive."""

from __future__ import annotations

import io
import time
from dataclasses import replace

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import select

from dashboard.config import config_of, configure
from dashboard.sessions import SessionStore, digest, store_of
from dashboard.users import set_active
from schema.db import session_scope
from schema.models import AuditEvent
from tests.dashboard.test_dashboard_users import parse
from tests.dashboard_fixtures import DashUsers, csrf_of, login

COOKIE = "painline_session"


def copy_of(client: FlaskClient, app: Flask) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie (a stolen or shared cookie)."""
    cookie = client.get_cookie(COOKIE)
    assert cookie is not None
    other = app.test_client()
    other.set_cookie(COOKIE, cookie.value)
    return other


def signed_in(client: FlaskClient) -> bool:
    """Whether ``client`` is signed in, by the page guard and the API guard (which must agree)."""
    page = client.get("/probe/nurse")
    api = client.get("/api/v1/queue")
    assert (page.status_code == 200) == (api.status_code == 200), (page.status_code, api.status_code)
    if page.status_code != 200:
        assert page.status_code == 302 and "/login" in page.headers["Location"]
        assert api.status_code == 401
    return page.status_code == 200


def audit_actions(app: Flask, action: str) -> list[AuditEvent]:
    with session_scope(app.extensions["painline.sessions"]) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action)))


def test_a_copied_cookie_and_its_csrf_token_die_with_sign_out(dash_app: Flask, dash_users: DashUsers) -> None:
    nurse = dash_app.test_client()
    login(nurse, "nurse1")
    token = csrf_of(nurse)
    thief = copy_of(nurse, dash_app)
    assert signed_in(thief)
    assert thief.post("/probe/form", headers={"X-CSRF-Token": token}).status_code == 200
    assert nurse.post("/logout", data={"csrf_token": token}).status_code == 302
    assert not signed_in(nurse)
    assert not signed_in(thief)
    assert thief.get("/").status_code == 302
    assert thief.post("/probe/form", headers={"X-CSRF-Token": token}).status_code == 400
    assert thief.post("/probe/form", data={"csrf_token": token}).status_code == 400


def test_sign_out_ends_every_session_of_that_user_only(dash_app: Flask, dash_users: DashUsers) -> None:
    station_a, station_b, admin = (dash_app.test_client() for _ in range(3))
    login(station_a, "nurse1")
    login(station_b, "nurse1")
    login(admin, "admin1")
    assert store_of(dash_app).count_user(dash_users.ids["nurse"]) == 2
    station_a.post("/logout", data={"csrf_token": csrf_of(station_a)})
    assert not signed_in(station_b)
    assert signed_in(admin)
    assert store_of(dash_app).count_user(dash_users.ids["nurse"]) == 0


def test_deactivate_then_activate_does_not_revive_a_session(dash_app: Flask, dash_users: DashUsers) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    nurse = dash_app.test_client()
    login(nurse, "nurse1")
    copy = copy_of(nurse, dash_app)
    set_active(sessions, "nurse1", False, revoker=store_of(dash_app))
    set_active(sessions, "nurse1", True, revoker=store_of(dash_app))
    assert not signed_in(nurse)
    assert not signed_in(copy)


def test_a_request_while_deactivated_ends_the_session_even_without_the_revoker(
    dash_app: Flask, dash_users: DashUsers
) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    nurse = dash_app.test_client()
    login(nurse, "nurse1")
    set_active(sessions, "nurse1", False, revoker=None)
    assert not signed_in(nurse)
    set_active(sessions, "nurse1", True, revoker=None)
    assert not signed_in(nurse)


def test_password_change_revokes_the_other_sessions(dash_app: Flask, dash_users: DashUsers) -> None:
    from dashboard.users import run_command

    sessions = dash_app.extensions["painline.sessions"]
    ward, home = dash_app.test_client(), dash_app.test_client()
    login(ward, "nurse1")
    login(home, "nurse1")
    status = run_command(
        sessions,
        parse(["users", "password", "nurse1"]),
        stdin=io.StringIO("a brand new secret\n"),
        revoker=store_of(dash_app),
    )
    assert status == 0
    assert not signed_in(ward) and not signed_in(home)
    assert login(ward, "nurse1", "a brand new secret").status_code == 302
    assert signed_in(ward)


def test_the_cookie_is_an_opaque_id_and_redis_holds_only_its_digest(dash_app: Flask, dash_users: DashUsers) -> None:
    nurse = dash_app.test_client()
    login(nurse, "nurse1")
    cookie = nurse.get_cookie(COOKIE)
    assert cookie is not None
    session_id = cookie.value
    assert len(session_id) >= 40 and "." not in session_id  # no signed payload, just random bits
    redis: Redis = dash_app.extensions["painline.redis"]
    namespace = config_of(dash_app).key_namespace
    keys = [k.decode() for k in redis.scan_iter(match=f"painline:{namespace}:*")]
    assert keys and not any(session_id in k for k in keys)
    assert f"painline:{namespace}:session:{digest(session_id)}" in keys
    record = store_of(dash_app).load(session_id)
    assert record is not None and record.user_id == dash_users.ids["nurse"]
    assert record.csrf_token == csrf_of(nurse) and record.created_at <= record.last_active <= time.time()
    forged = dash_app.test_client()
    forged.set_cookie(COOKIE, session_id[:-2] + "xx")
    assert not signed_in(forged)


def test_sign_in_issues_a_new_id_and_ends_the_anonymous_one(dash_app: Flask, dash_users: DashUsers) -> None:
    nurse = dash_app.test_client()
    nurse.get("/login")
    csrf_of(nurse)
    before = nurse.get_cookie(COOKIE)
    assert before is not None
    planted = copy_of(nurse, dash_app)  # an id fixed in the victim's browser before she signs in
    login(nurse, "nurse1")
    after = nurse.get_cookie(COOKIE)
    assert after is not None and after.value != before.value
    assert store_of(dash_app).load(before.value) is None
    assert not signed_in(planted)


def test_background_refreshes_do_not_keep_an_unattended_queue_signed_in(dash_app: Flask, dash_users: DashUsers) -> None:
    configure(dash_app, replace(config_of(dash_app), idle_timeout_s=2))
    station = dash_app.test_client()
    login(station, "nurse1")
    background = {"X-Painline-Background": "1"}
    time.sleep(1.2)
    assert station.get("/probe/nurse", headers=background).status_code == 200
    assert station.get("/api/v1/queue", headers={"Accept": "text/event-stream"}).status_code == 200
    time.sleep(1.2)  # 2.4 s since the sign-in, 1.2 s since the last refreshes
    response = station.get("/probe/nurse", headers=background)
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert not signed_in(station)
    assert [e.actor for e in audit_actions(dash_app, "auth.session_expired")] == ["nurse1"]
    assert store_of(dash_app).count_user(dash_users.ids["nurse"]) == 0


def test_a_person_s_request_does_keep_the_session_alive(dash_app: Flask, dash_users: DashUsers) -> None:
    configure(dash_app, replace(config_of(dash_app), idle_timeout_s=2))
    station = dash_app.test_client()
    login(station, "nurse1")
    for _ in range(2):
        time.sleep(1.2)
        assert station.get("/probe/nurse").status_code == 200
    assert signed_in(station)


def test_session_store_revoke_user_is_atomic_over_its_set(dash_app: Flask) -> None:
    from dashboard.sessions import SessionRecord

    store = SessionStore(dash_app.extensions["painline.redis"], config_of(dash_app).key_namespace, 60)
    now = time.time()
    ids = [store.create(SessionRecord(user_id=7, csrf_token="t", created_at=now, last_active=now)) for _ in range(3)]
    other = store.create(SessionRecord(user_id=8, csrf_token="t", created_at=now, last_active=now))
    assert store.count_user(7) == 3
    assert store.revoke_user(7) == 3
    assert all(store.load(i) is None for i in ids) and store.load(other) is not None
    # a revoked record cannot be written back by a request that was still running
    record = SessionRecord(user_id=7, csrf_token="t", created_at=now, last_active=now)
    assert store.save(ids[0], record) is False and store.load(ids[0]) is None
