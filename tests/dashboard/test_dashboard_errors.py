"""Error pages and security headers on every kind of response (issue 13), on the real app.

- styled error pages (400, 401, 403, 404, 413, 500) in the base layout with a way back: the queue,
  and sign-in when signed out; the JSON API keeps JSON errors;
- the security headers (CSP, framing, sniffing, referrer, permissions) on pages, the API, static
  files, redirects and errors alike.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest
from flask import Blueprint, Flask, abort
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from dashboard.headers import CONTENT_SECURITY_POLICY, SECURITY_HEADERS
from tests.dashboard_fixtures import DashUsers, Seed, bearer, csrf_of

ClientAs = Callable[[str], FlaskClient]

EXPECTED_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data:",
    "frame-ancestors": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "object-src": "'none'",
}


def broken_blueprint() -> Blueprint:
    """Routes that fail on purpose, signed in or not (no role guard): what a bug or a refusal looks like."""
    bp = Blueprint("broken", __name__)

    @bp.get("/broken/crash")
    def crash() -> str:
        raise RuntimeError("secret internals: do not show me")

    @bp.get("/broken/401")
    def unauthorized() -> str:
        abort(401)

    @bp.get("/broken/403")
    def forbidden() -> str:
        abort(403)

    @bp.get("/api/v1/broken/crash")
    def api_crash() -> str:
        raise RuntimeError("secret internals: do not show me")

    return bp


@pytest.fixture
def app(pages_app: Flask) -> Iterator[Flask]:
    pages_app.register_blueprint(broken_blueprint())
    pages_app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: a crash becomes a 500 page
    yield pages_app


def _styled(response: TestResponse) -> str:
    html = response.get_data(as_text=True)
    assert response.mimetype == "text/html", response.mimetype
    assert 'class="site-header"' in html and "painline.css" in html, "not in the base layout"
    assert 'href="/"' in html and "triage queue" in html.lower(), "no way back to the queue"
    return html


def _signs_in(html: str) -> bool:
    return 'href="/login' in html


# ---------------------------------------------------------------------------------------------------
# error pages


def test_404_is_a_styled_page_with_a_way_back(app: Flask, client_as: ClientAs) -> None:
    response = client_as("nurse").get("/no/such/page")
    assert response.status_code == 404
    html = _styled(response)
    assert "Page not found" in html
    assert not _signs_in(html)  # signed in: no sign-in link


def test_a_missing_call_is_the_same_404_page(app: Flask, client_as: ClientAs) -> None:
    response = client_as("nurse").get("/calls/987654")
    assert response.status_code == 404
    assert "Page not found" in _styled(response)


def test_403_says_who_may_see_it_and_links_back(app: Flask, client_as: ClientAs) -> None:
    response = client_as("nurse").get("/admin/audit")
    assert response.status_code == 403
    html = _styled(response)
    assert "Not allowed" in html and not _signs_in(html)


@pytest.mark.parametrize("code", [401, 403])
def test_401_and_403_when_signed_out_offer_sign_in(app: Flask, code: int) -> None:
    response = app.test_client().get(f"/broken/{code}")
    assert response.status_code == code
    html = _styled(response)
    assert _signs_in(html)
    assert f'href="/login?next=/broken/{code}"' in html


def test_400_explains_a_missing_form_token(app: Flask, client_as: ClientAs, dash_seed: Seed) -> None:
    response = client_as("nurse").post(f"/flags/{dash_seed.flag_id}/resolve", data={"label": "unsure"})
    assert response.status_code == 400
    html = _styled(response)
    assert "security token" in html


def test_500_is_a_styled_page_without_internals(app: Flask, client_as: ClientAs) -> None:
    response = client_as("nurse").get("/broken/crash")
    assert response.status_code == 500
    html = _styled(response)
    assert "Something went wrong" in html and "secret internals" not in html


def test_500_when_signed_out_still_renders(app: Flask) -> None:
    response = app.test_client().get("/broken/crash")
    assert response.status_code == 500
    assert _signs_in(_styled(response))


def test_413_on_an_upload_links_back_to_the_patient(app: Flask, client_as: ClientAs, dash_seed: Seed) -> None:
    client = client_as("admin")
    app.config["MAX_CONTENT_LENGTH"] = 4096
    data = {"csrf_token": csrf_of(client), "audio": [(io.BytesIO(b"\0" * 8192), "big.wav")]}
    response = client.post(
        f"/admin/patients/{dash_seed.patient_id}/enrol", data=data, content_type="multipart/form-data"
    )
    assert response.status_code == 413
    html = _styled(response)
    assert "Nothing was enrolled" in html and "4 KiB" in html
    assert f'href="/admin/patients/{dash_seed.patient_id}"' in html


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/api/v1/no/such/route", 404, "not_found"),
        ("/api/v1/calls/987654", 404, "not_found"),
        ("/api/v1/broken/crash", 500, "internal_server_error"),
    ],
)
def test_the_api_keeps_json_errors(app: Flask, dash_users: DashUsers, path: str, status: int, error: str) -> None:
    response = app.test_client().get(path, headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == status
    assert response.is_json, response.get_data(as_text=True)[:200]
    body = response.get_json()
    assert body["error"] == error and "secret internals" not in body["message"]


# ---------------------------------------------------------------------------------------------------
# security headers


def _assert_headers(response: TestResponse, what: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (what, name, response.headers.get(name))
    policy = dict(
        [*part.strip().split(" ", 1), ""][:2] for part in response.headers["Content-Security-Policy"].split(";")
    )
    for directive, value in EXPECTED_CSP.items():
        assert policy.get(directive) == value, (what, directive, policy.get(directive))
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] in ("no-referrer", "same-origin")
    permissions = response.headers["Permissions-Policy"]
    for feature in ("microphone=()", "camera=()", "geolocation=()"):
        assert feature in permissions, (what, permissions)


def test_the_policy_is_the_strict_one() -> None:
    assert SECURITY_HEADERS["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY and "unsafe-eval" not in CONTENT_SECURITY_POLICY


def test_every_kind_of_response_carries_the_security_headers(
    app: Flask, client_as: ClientAs, dash_users: DashUsers, dash_seed: Seed
) -> None:
    nurse = client_as("nurse")
    anonymous = app.test_client()
    token = bearer(dash_users.tokens["admin"])
    cases: list[tuple[str, TestResponse, int]] = [
        ("page", nurse.get("/"), 200),
        ("call page", nurse.get(f"/calls/{dash_seed.call_id}"), 200),
        ("queue fragment", nurse.get("/queue/rows"), 200),
        ("sign-in page", anonymous.get("/login"), 200),
        ("redirect to sign-in", anonymous.get("/"), 302),
        ("static file", anonymous.get("/ui/painline.css"), 200),
        ("api", anonymous.get("/api/v1/queue", headers=token), 200),
        ("api description", anonymous.get("/api/v1/openapi.json"), 200),
        ("api 401", anonymous.get("/api/v1/queue"), 401),
        ("api 404", anonymous.get("/api/v1/no/such/route", headers=token), 404),
        ("page 404", nurse.get("/no/such/page"), 404),
        ("static 404", anonymous.get("/ui/nothing.css"), 404),
        ("page 403", nurse.get("/admin/audit"), 403),
        ("page 400", nurse.post("/flags/1/resolve", data={}), 400),
        ("page 500", nurse.get("/broken/crash"), 500),
        ("api 500", anonymous.get("/api/v1/broken/crash", headers=token), 500),
        ("health", anonymous.get("/healthz"), 200),
    ]
    for what, response, status in cases:
        assert response.status_code == status, (what, response.status_code)
        _assert_headers(response, what)
