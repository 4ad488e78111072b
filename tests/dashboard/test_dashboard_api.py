"""The JSON API: role x route matrix, behaviour of each route, audit rows, jobs, and the OpenAPI document."""

from __future__ import annotations

import json
import re

import pytest
from flask import Flask
from openapi_spec_validator import validate
from sqlalchemy import select

from dashboard.openapi import openapi_document
from schema.contract import grow_job_id, rebuild_job_id
from schema.db import session_scope
from schema.models import AuditEvent, BaselineContribution, Flag
from tests.dashboard_fixtures import DashUsers, Seed, bearer, csrf_of, login

# (method, path template, roles allowed); every /api/v1 route except the public openapi.json
MATRIX = [
    ("GET", "/api/v1/me", {"nurse", "admin", "auditor"}),
    ("GET", "/api/v1/queue", {"nurse", "admin", "auditor"}),
    ("GET", "/api/v1/calls/{call_id}", {"nurse", "admin", "auditor"}),
    ("POST", "/api/v1/flags/{flag_id}/acknowledge", {"nurse", "admin"}),
    ("POST", "/api/v1/flags/{flag_id}/resolve", {"nurse", "admin"}),
    ("GET", "/api/v1/patients", {"admin", "auditor"}),
    ("GET", "/api/v1/patients/{patient_id}/baseline", {"admin", "auditor"}),
    ("POST", "/api/v1/patients/{patient_id}/baseline/reset", {"admin"}),
    ("POST", "/api/v1/contributions/{contribution_id}/exclude", {"admin"}),
    ("POST", "/api/v1/contributions/{contribution_id}/include", {"admin"}),
    ("GET", "/api/v1/audit", {"admin", "auditor"}),
]


def fill(path: str, seed: Seed) -> str:
    return path.format(
        call_id=seed.call_id, flag_id=seed.flag_id, patient_id=seed.patient_id, contribution_id=seed.contribution_ids[0]
    )


def audit(app: Flask, action: str) -> list[AuditEvent]:
    with session_scope(app.extensions["painline.sessions"]) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


@pytest.mark.parametrize("role", ["nurse", "admin", "auditor"])
@pytest.mark.parametrize(("method", "path", "allowed"), MATRIX, ids=[f"{m} {p}" for m, p, _ in MATRIX])
def test_role_matrix(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed, role: str, method: str, path: str, allowed: set[str]
) -> None:
    client = dash_app.test_client()
    body = {"label": "unsure"} if path.endswith("/resolve") else None
    response = client.open(fill(path, dash_seed), method=method, json=body, headers=bearer(dash_users.tokens[role]))
    if role in allowed:
        assert response.status_code in (200, 202), response.get_data(as_text=True)
    else:
        assert response.status_code == 403
        assert response.get_json()["error"] == "forbidden"
    anonymous = client.open(fill(path, dash_seed), method=method, json=body)
    assert anonymous.status_code in (401, 400)  # 400: an unsafe request with neither token nor CSRF token
    assert anonymous.is_json


def test_matrix_covers_every_api_route(dash_app: Flask) -> None:
    listed = {(m, p) for m, p, _ in MATRIX} | {("GET", "/api/v1/openapi.json")}
    assert listed == api_routes(dash_app)


def api_routes(app: Flask) -> set[tuple[str, str]]:
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        routes |= {(m, path) for m in rule.methods or () if m not in {"HEAD", "OPTIONS"}}
    return routes


def test_session_api_calls_need_the_csrf_header(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    login(client, "nurse1")
    path = f"/api/v1/flags/{dash_seed.flag_id}/acknowledge"
    refused = client.post(path)
    assert refused.status_code == 400 and refused.get_json()["error"] == "csrf"
    assert client.post(path, headers={"X-CSRF-Token": csrf_of(client)}).status_code == 200


def test_queue_lists_open_flags_then_live_calls(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    response = dash_app.test_client().get("/api/v1/queue", headers=bearer(dash_users.tokens["nurse"]))
    rows = response.get_json()["rows"]
    assert [(r["kind"], r["call_id"]) for r in rows] == [("flag", dash_seed.call_id), ("live", dash_seed.live_call_id)]
    first = rows[0]
    assert first["patient"] == "PT-100" and first["probability"] == pytest.approx(0.81)
    assert first["baseline"]["n_utterances"] == 2 and first["baseline"]["n_calls"] == 1
    assert first["started_at"].endswith("+00:00")
    event = audit(dash_app, "queue.view")[-1]
    assert event.actor == "nurse1" and event.detail["call_ids"] == [dash_seed.call_id, dash_seed.live_call_id]


def test_call_detail_and_its_audit_row(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    doc = client.get(f"/api/v1/calls/{dash_seed.call_id}", headers=bearer(dash_users.tokens["auditor"])).get_json()
    assert doc["threshold"] == pytest.approx(0.6)
    assert doc["call"]["verdict"] == "pain_likely"
    assert [u["probability"] for u in doc["utterances"]] == pytest.approx([0.4, 0.9, 0.85])
    assert doc["evidence"]["moved"][0]["unit"] == "semitones"
    assert doc["flag"]["status"] == "open" and doc["speaker_check"]["checked"] == 3
    event = audit(dash_app, "call.view")[-1]
    assert (event.actor, event.object_id) == ("auditor1", str(dash_seed.call_id))
    missing = client.get("/api/v1/calls/999999", headers=bearer(dash_users.tokens["nurse"]))
    assert missing.status_code == 404 and missing.get_json()["error"] == "not_found"


def test_acknowledge_then_resolve_no_pain_enqueues_growth_with_ids_only(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed
) -> None:
    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["nurse"])
    ack = client.post(f"/api/v1/flags/{dash_seed.flag_id}/acknowledge", headers=headers)
    assert ack.get_json()["status"] == "acknowledged" and ack.get_json()["acknowledged_by"] == "nurse1"
    resolved = client.post(
        f"/api/v1/flags/{dash_seed.flag_id}/resolve",
        headers=headers,
        json={"label": "no_pain", "note": "settled, chatting normally"},
    )
    assert resolved.status_code == 200
    answer = resolved.get_json()
    assert answer["status"] == "resolved" and answer["grow_job"] == grow_job_id(dash_seed.call_id)
    job = dash_app.extensions["painline.queue"].fetch_job(grow_job_id(dash_seed.call_id))
    assert job is not None
    assert job.func_name == "worker.jobs.grow_baseline_from_call"
    assert job.args == (dash_seed.call_id,) and job.kwargs == {}
    with session_scope(dash_app.extensions["painline.sessions"]) as s:
        flag = s.get(Flag, dash_seed.flag_id)
        assert flag is not None
        assert (flag.label, flag.note, flag.resolved_by) == ("no_pain", "settled, chatting normally", "nurse1")
    event = audit(dash_app, "flag.resolve")[-1]
    assert event.detail["label"] == "no_pain" and "settled" not in json.dumps(event.detail)
    again = client.post(f"/api/v1/flags/{dash_seed.flag_id}/resolve", headers=headers, json={"label": "unsure"})
    assert again.status_code == 409


def test_resolve_other_labels_enqueue_nothing(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    response = client.post(
        f"/api/v1/flags/{dash_seed.flag_id}/resolve",
        headers=bearer(dash_users.tokens["admin"]),
        data={"label": "pain_confirmed"},
    )
    assert response.status_code == 200 and response.get_json()["grow_job"] is None
    assert dash_app.extensions["painline.queue"].fetch_job(grow_job_id(dash_seed.call_id)) is None


def test_resolve_validates_its_input(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["nurse"])
    path = f"/api/v1/flags/{dash_seed.flag_id}/resolve"
    assert client.post(path, headers=headers, json={"label": "maybe"}).status_code == 400
    assert client.post(path, headers=headers, json={}).status_code == 400
    assert client.post(path, headers=headers, json={"label": "unsure", "note": "x" * 2001}).status_code == 400
    assert client.post(path, headers=headers, json=["unsure"]).status_code == 400


def test_patient_search_and_baseline(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["admin"])
    found = client.get("/api/v1/patients?q=pt-1", headers=headers).get_json()["patients"]
    assert [p["id"] for p in found] == [dash_seed.patient_id] and found[0]["calls"] == 2
    assert client.get("/api/v1/patients?q=zzz", headers=headers).get_json()["patients"] == []
    assert client.get("/api/v1/patients?q=%25", headers=headers).get_json()["patients"] == []  # no LIKE wildcards
    search_event = audit(dash_app, "patient.search")[0]
    assert search_event.detail == {"query_chars": 4, "patient_ids": [dash_seed.patient_id]}

    doc = client.get(f"/api/v1/patients/{dash_seed.patient_id}/baseline", headers=headers).get_json()
    assert doc["patient"]["label"] == "PT-100"
    (baseline,) = doc["baselines"]
    assert baseline["id"] == dash_seed.baseline_id and baseline["n_utterances"] == 2 and not baseline["stale"]
    assert {c["source"] for c in baseline["contributions"]} == {"enrolment", "resolved_call"}
    pitch = next(m for m in doc["measures"] if m["key"] == "pitch")
    assert pitch["unit"] == "semitones" and pitch["patient_n"] == 2 and pitch["population_patients"] == 1
    event = audit(dash_app, "baseline.view")[-1]
    assert (event.actor, event.object_id) == ("admin1", str(dash_seed.patient_id))


def test_exclude_include_and_reset_are_audited_and_enqueue_rebuilds(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed
) -> None:
    from worker.baselines import rebuild

    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["admin"])
    queue = dash_app.extensions["painline.queue"]
    sessions = dash_app.extensions["painline.sessions"]
    target = dash_seed.contribution_ids[1]
    excluded = client.post(f"/api/v1/contributions/{target}/exclude", headers=headers)
    assert excluded.status_code == 202
    answer = excluded.get_json()
    assert answer["changed"] is True and answer["rebuild_job"] == rebuild_job_id(dash_seed.baseline_id)
    job = queue.fetch_job(rebuild_job_id(dash_seed.baseline_id))
    assert job.func_name == "worker.jobs.rebuild_baseline" and job.args == (dash_seed.baseline_id,)
    stale = client.get(f"/api/v1/patients/{dash_seed.patient_id}/baseline", headers=headers).get_json()["baselines"][0]
    assert stale["stale"] is True and stale["n_excluded"] == 1
    # what the enqueued job does: afterwards the baseline is consistent again
    with session_scope(sessions) as s:
        assert rebuild(s, dash_seed.baseline_id).n == 1
    fresh = client.get(f"/api/v1/patients/{dash_seed.patient_id}/baseline", headers=headers).get_json()["baselines"][0]
    assert fresh["stale"] is False and fresh["count"] == 1
    assert audit(dash_app, "baseline.exclude")[-1].detail["contribution_id"] == target

    included = client.post(f"/api/v1/contributions/{target}/include", headers=headers)
    assert included.get_json()["included"] is True and audit(dash_app, "baseline.include")

    reset = client.post(f"/api/v1/patients/{dash_seed.patient_id}/baseline/reset", headers=headers)
    assert reset.status_code == 202 and reset.get_json()["excluded"] == 2
    assert reset.get_json()["baseline_ids"] == [dash_seed.baseline_id]
    with session_scope(sessions) as s:
        included_left = s.scalars(
            select(BaselineContribution).where(
                BaselineContribution.baseline_id == dash_seed.baseline_id, BaselineContribution.included.is_(True)
            )
        ).all()
    assert included_left == []
    assert audit(dash_app, "baseline.reset")[-1].actor == "admin1"
    assert client.post("/api/v1/contributions/999999/exclude", headers=headers).status_code == 404


def test_audit_log_filters_and_pages(dash_app: Flask, dash_users: DashUsers, dash_seed: Seed) -> None:
    client = dash_app.test_client()
    nurse = bearer(dash_users.tokens["nurse"])
    for _ in range(3):
        client.get(f"/api/v1/calls/{dash_seed.call_id}", headers=nurse)
    auditor = bearer(dash_users.tokens["auditor"])
    page = client.get("/api/v1/audit?actor=nurse1&action=call.view&limit=2", headers=auditor).get_json()
    assert len(page["events"]) == 2 and page["next_before_id"] is not None
    assert all(e["actor"] == "nurse1" and e["action"] == "call.view" for e in page["events"])
    rest = client.get(
        f"/api/v1/audit?actor=nurse1&action=call.view&before_id={page['next_before_id']}", headers=auditor
    ).get_json()
    assert len(rest["events"]) == 1 and rest["next_before_id"] is None
    by_type = client.get("/api/v1/audit?object_type=call", headers=auditor).get_json()["events"]
    assert by_type and all(e["object_type"] == "call" for e in by_type)
    assert client.get("/api/v1/audit?limit=x", headers=auditor).status_code == 400
    assert audit(dash_app, "audit.view")[-1].actor == "auditor1"
    # a filter shaped like a phone number must not crash the audit write, nor be copied into it
    odd = client.get("/api/v1/audit?object_id=5551234567&action=call.view", headers=auditor)
    assert odd.status_code == 200
    assert audit(dash_app, "audit.view")[-1].detail["filters"] == {"object_id": "(withheld)", "action": "call.view"}


def test_unknown_api_route_and_method_give_json(dash_app: Flask, dash_users: DashUsers) -> None:
    client = dash_app.test_client()
    missing = client.get("/api/v1/nothing", headers=bearer(dash_users.tokens["admin"]))
    assert missing.status_code == 404 and missing.is_json
    wrong = client.delete("/api/v1/queue", headers=bearer(dash_users.tokens["admin"]))
    assert wrong.status_code == 405 and wrong.is_json


def test_openapi_document_is_valid_and_lists_every_route(dash_app: Flask) -> None:
    response = dash_app.test_client().get("/api/v1/openapi.json")
    assert response.status_code == 200
    doc = response.get_json()
    validate(doc)
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == api_routes(dash_app)
    for method, path, allowed in MATRIX:
        operation = doc["paths"][path][method.lower()]
        assert operation["security"] and "401" in operation["responses"] and "403" in operation["responses"]
        for role in allowed:
            assert role in operation["description"]
    assert openapi_document() == doc
