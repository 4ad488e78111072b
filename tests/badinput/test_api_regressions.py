"""Regressions for the 500s schemathesis found in the JSON API (each input below used to fail the query).

PostgreSQL ``integer`` ids and text columns: an id above 2**31-1 cannot be bound and a NUL cannot be
stored or compared, and both raised DataError out of the view (a 500 with no JSON body). Ids out of
range are now a routing 404 and NULs a 400, both as the API's JSON errors.
"""

from __future__ import annotations

import pytest
from flask import Flask

from dashboard.api import MAX_ID
from tests.dashboard_fixtures import DashUsers, Seed, bearer


@pytest.mark.parametrize(
    "path",
    [
        f"/api/v1/calls/{MAX_ID + 1}",
        "/api/v1/calls/83032297284",
        "/api/v1/patients/80137529094216/baseline",
        "/api/v1/calls/0",
    ],
)
def test_ids_beyond_postgres_integer_are_404(dash_app: Flask, dash_users: DashUsers, path: str) -> None:
    response = dash_app.test_client().get(path, headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == 404 and response.is_json


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/flags/188006965327617620705280/acknowledge",
        "/api/v1/contributions/49130963417251/exclude",
        f"/api/v1/patients/{MAX_ID + 1}/baseline/reset",
    ],
)
def test_changes_to_ids_beyond_postgres_integer_are_404(dash_app: Flask, dash_users: DashUsers, path: str) -> None:
    response = dash_app.test_client().post(path, headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == 404 and response.is_json


def test_largest_id_is_routed(dash_app: Flask, dash_users: DashUsers) -> None:
    response = dash_app.test_client().get(f"/api/v1/calls/{MAX_ID}", headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == 404 and response.get_json()["error"] == "not_found"  # the view ran: no such call


@pytest.mark.parametrize(
    "query",
    [
        "before_id=-159480465967",
        f"before_id={MAX_ID + 1}",
        "before_id=0",
        "actor=a%00b",
        "action=%00",
        "object_type=x%00",
        "object_id=%00",
    ],
)
def test_audit_filters_out_of_range_or_with_nul_are_400(dash_app: Flask, dash_users: DashUsers, query: str) -> None:
    response = dash_app.test_client().get(f"/api/v1/audit?{query}", headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == 400 and response.get_json()["error"] == "invalid"


@pytest.mark.parametrize(
    ("q", "status"),
    [
        ("99999999999999999999", 200),  # digits beyond integer: a reference search only
        ("²", 200),  # str.isdigit() but not int()-able
        ("9" * 199, 200),  # far beyond any row id, within the search length limit
        ("9" * 5000, 400),  # beyond the 200-character search limit (and Python's int-from-string limit)
        ("a%00b", 400),
    ],
    ids=["beyond-integer", "superscript-two", "199-digits", "5000-digits", "nul"],
)
def test_patient_search_odd_queries(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed, q: str, status: int
) -> None:
    response = dash_app.test_client().get(f"/api/v1/patients?q={q}", headers=bearer(dash_users.tokens["admin"]))
    assert response.status_code == status and response.is_json


def test_patient_search_by_id_still_works(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    response = dash_app.test_client().get(
        f"/api/v1/patients?q={dash_seed.patient_id}", headers=bearer(dash_users.tokens["admin"])
    )
    assert [p["id"] for p in response.get_json()["patients"]] == [dash_seed.patient_id]


def test_resolve_note_with_nul_is_400(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    response = dash_app.test_client().post(
        f"/api/v1/flags/{dash_seed.flag_id}/resolve",
        json={"label": "unsure", "note": "a\x00b"},
        headers=bearer(dash_users.tokens["nurse"]),
    )
    assert response.status_code == 400 and response.get_json()["error"] == "invalid"
