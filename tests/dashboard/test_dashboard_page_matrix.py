"""Role x route matrix for every dashboard page, the pages' counterpart of the API matrix.

The list below is checked against the app's own url_map, so a new page without a row here fails
``test_matrix_covers_every_page_route``. Each row is tried as nurse, admin, auditor and anonymous:
the allowed roles get past the guard (any answer but 401/403 and the login redirect), the others
get 403 (signed in) or the login redirect (anonymous GET) or a refused write (anonymous POST).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.dashboard_fixtures import Seed, csrf_of

STAFF = {"nurse", "admin", "auditor"}
# (method, path template, roles allowed)
PAGES = [
    ("GET", "/", STAFF),
    ("GET", "/queue/rows", STAFF),
    ("GET", "/calls/{call_id}", STAFF),
    ("GET", "/calls/{call_id}/live", STAFF),
    ("POST", "/flags/{flag_id}/acknowledge", {"nurse", "admin"}),
    ("POST", "/flags/{flag_id}/resolve", {"nurse", "admin"}),
    ("GET", "/admin/patients", {"admin", "auditor"}),
    ("GET", "/admin/patients/{patient_id}", {"admin", "auditor"}),
    ("POST", "/admin/patients/{patient_id}/enrol", {"admin"}),
    ("POST", "/admin/patients/{patient_id}/reset", {"admin"}),
    ("POST", "/admin/contributions/{contribution_id}/exclude", {"admin"}),
    ("POST", "/admin/contributions/{contribution_id}/include", {"admin"}),
    ("GET", "/admin/audit", {"admin", "auditor"}),
]
# open to everyone by design: sign-in, health check, static files, the Twilio-signed routes
PUBLIC = {
    "/login",
    "/logout",
    "/healthz",
    "/static/{filename}",
    "/ui/{filename}",
    "/twilio/voice",
    "/twilio/stream",
    "/twilio/stream-status",
}
# the live queue (Server-Sent Events) streams forever; its guard is tested in test_dashboard_live.py
STREAMING = {"/events"}
# for the operator's scraper only: no sign-in, but never answered through the proxy (checked below)
INTERNAL = {"/metrics"}


def page_routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(m, path) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return routes


def fill(path: str, seed: Seed) -> str:
    return path.format(
        call_id=seed.call_id, flag_id=seed.flag_id, patient_id=seed.patient_id, contribution_id=seed.contribution_ids[0]
    )


def test_matrix_covers_every_page_route(pages_app: Flask) -> None:
    listed = {(m, p) for m, p, _ in PAGES}
    routes = {(m, p) for m, p in page_routes(pages_app) if not p.startswith("/probe/")}  # the auth tests' own
    unlisted = {(m, p) for m, p in routes if p not in PUBLIC | STREAMING | INTERNAL} - listed
    assert not unlisted, f"pages without a role rule in this matrix: {sorted(unlisted)}"


@pytest.mark.parametrize("path", sorted(INTERNAL))
def test_internal_routes_answer_direct_scrapes_only(pages_app: Flask, path: str) -> None:
    client = pages_app.test_client()
    assert client.get(path).status_code == 200  # the test client's address is loopback
    assert client.get(path, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 404
    outside = client.get(path, environ_overrides={"REMOTE_ADDR": "8.8.4.4"})  # (documentation ranges count as private)
    assert outside.status_code == 404


@pytest.mark.parametrize("role", ["nurse", "admin", "auditor", "anonymous"])
@pytest.mark.parametrize(("method", "path", "allowed"), PAGES, ids=[f"{m} {p}" for m, p, _ in PAGES])
def test_page_matrix(
    pages_app: Flask,
    client_as: Callable[[str], FlaskClient],
    dash_seed: Seed,
    role: str,
    method: str,
    path: str,
    allowed: set[str],
) -> None:
    client = pages_app.test_client() if role == "anonymous" else client_as(role)
    url = fill(path, dash_seed)
    if method == "GET":
        response = client.get(url)
    else:
        token = csrf_of(client) if role != "anonymous" else ""
        response = client.post(url, data={"csrf_token": token, "label": "unsure", "confirm": "yes"})
    location = response.headers.get("Location", "")
    if role in allowed:
        assert response.status_code not in (401, 403) and "/login" not in location, (role, response.status_code)
    elif role == "anonymous":
        if method == "GET":
            assert response.status_code == 302 and "/login" in location
        else:
            assert response.status_code in (400, 401, 403) or "/login" in location
    else:
        assert response.status_code == 403, (role, response.status_code)


@pytest.mark.parametrize(("method", "path"), [(m, p) for m, p, _ in PAGES if "{" in p])
def test_ids_beyond_the_database_integer_are_404_not_500(
    client_as: Callable[[str], FlaskClient],
    method: str,
    path: str,
) -> None:
    client = client_as("admin")
    url = re.sub(r"\{[a-z_]+\}", str(2**31), path)
    response = client.get(url) if method == "GET" else client.post(url, data={"csrf_token": csrf_of(client)})
    assert response.status_code == 404
