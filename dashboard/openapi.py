"""The OpenAPI 3.1 description of ``/api/v1``, written by hand beside the routes it describes.

Hand-written rather than generated so the document says what the API promises (roles, errors,
which fields can be null, enums, descriptions) rather than what a decorator could infer. The answers
themselves are the store's records (:mod:`dashboard.store`) serialised by field name, so
:data:`SCHEMA_RECORDS` names the record each schema describes, and a test holds the two together:
every record field is a schema property of a compatible JSON type (nullable where the field may be
None), and every property is a field. A test also compares the paths with the app's URL map, so a
route added without a description fails the suite, and validates the document with
``openapi-spec-validator``.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

from dashboard.store.audit import AuditEntry, AuditPage
from dashboard.store.calls import CallDetail, UtteranceRecord
from dashboard.store.flags_queue import QueueRow, ResolvedFlag
from dashboard.store.patients import (
    BaselineRecord,
    BaselineReset,
    BaselineStatus,
    ContributionChange,
    ContributionRecord,
    MeasureRecord,
    PatientBaseline,
    PatientRow,
)
from schema.identity import PatientKeyKind

API_VERSION = "1.0.0"

_NULLABLE_NUMBER = {"type": ["number", "null"]}
_NULLABLE_STRING = {"type": ["string", "null"]}
_NULLABLE_DATETIME = {"type": ["string", "null"], "format": "date-time"}
_DATETIME = {"type": "string", "format": "date-time"}
_ID = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}  # PostgreSQL integer ids
_NULLABLE_ID = {"type": ["integer", "null"]}
_KEY_KIND = {
    "type": ["string", "null"],
    "enum": [*(kind.value for kind in PatientKeyKind), None],
    "description": "what the patient is keyed by: hotline_reference (calls passing that patient_ref reach them) "
    "or caller_number (calls from that number, keyed by HMAC; the number and the HMAC are never shown)",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _path_id(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": description, "schema": _ID}


_TEXT = {"type": "string", "pattern": "^[^\\u0000]*$"}
"""Free-text query parameters: anything but NUL, which PostgreSQL text cannot hold (the API answers 400)."""


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or _TEXT}


def _roles_note(roles: str, changes: bool) -> str:
    note = f"Roles: {roles}."
    if changes:
        note += " With a session cookie instead of a token, send the `X-CSRF-Token` header."
    return note


def _operation(
    operation_id: str,
    summary: str,
    roles: str,
    ok: dict[str, Any],
    *,
    changes: bool = False,
    parameters: list[dict[str, Any]] | None = None,
    body: dict[str, Any] | None = None,
    extra: dict[str, dict[str, Any]] | None = None,
    ok_status: str = "200",
) -> dict[str, Any]:
    responses: dict[str, Any] = {
        ok_status: ok,
        "401": _error("No valid bearer token and no signed-in session."),
        "403": _error("Signed in, but the role may not use this route (auditors may never change anything)."),
    }
    if changes:
        responses["400"] = _error("Invalid request, or a session call without a valid CSRF token.")
    responses.update(extra or {})
    op: dict[str, Any] = {
        "operationId": operation_id,
        "summary": summary,
        "description": _roles_note(roles, changes),
        "tags": ["triage"] if roles.startswith("nurse") else ["review"],
        "security": [{"bearerToken": []}, {"sessionCookie": []}],
        "responses": responses,
    }
    if parameters:
        op["parameters"] = parameters
    if body:
        op["requestBody"] = body
    return op


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "message"],
        "properties": {
            "error": {"type": "string", "description": "machine-readable code, e.g. not_found, conflict, csrf"},
            "message": {"type": "string"},
        },
    },
    "Me": {
        "type": "object",
        "required": ["username", "role", "via_token"],
        "properties": {
            "username": {"type": "string"},
            "role": {"type": "string", "enum": ["nurse", "admin", "auditor"]},
            "via_token": {"type": "boolean"},
        },
    },
    "BaselineStatus": {
        "type": ["object", "null"],
        "description": "null: no baseline yet. Otherwise what the patient's current baseline is built from.",
        "properties": {
            "baseline_id": _ID,
            "n_utterances": {"type": "integer"},
            "n_calls": {"type": "integer"},
            "updated_at": _DATETIME,
            "model_version": {"type": "string"},
        },
    },
    "QueueRow": {
        "type": "object",
        "required": ["kind", "call_id", "patient", "started_at", "verdict", "speech_s"],
        "properties": {
            "kind": {"type": "string", "enum": ["flag", "live"]},
            "call_id": _ID,
            "flag_id": _NULLABLE_ID,
            "flag_status": {"type": ["string", "null"], "enum": ["open", "acknowledged", None]},
            "level": _NULLABLE_STRING,
            "severity": _NULLABLE_NUMBER,
            "raised_at": _NULLABLE_DATETIME,
            "acknowledged_at": _NULLABLE_DATETIME,
            "acknowledged_by": _NULLABLE_STRING,
            "patient_id": _NULLABLE_ID,
            "patient": {"type": "string", "description": "the hotline's reference, or 'caller #<id>'"},
            "started_at": _DATETIME,
            "call_status": {"type": "string"},
            "live": {"type": "boolean"},
            "verdict": {"type": "string", "enum": ["pending", "pain_likely", "no_pain", "inconclusive"]},
            "probability": _NULLABLE_NUMBER,
            "speech_s": {"type": "number"},
            "baseline": _ref("BaselineStatus"),
        },
    },
    "Queue": {
        "type": "object",
        "required": ["rows"],
        "properties": {"rows": {"type": "array", "items": _ref("QueueRow")}},
    },
    "Flag": {
        "type": "object",
        "required": ["id", "call_id", "status", "level", "severity"],
        "properties": {
            "id": _ID,
            "call_id": _ID,
            "status": {"type": "string", "enum": ["open", "acknowledged", "resolved"]},
            "level": {"type": "string"},
            "severity": {"type": "number"},
            "label": {"type": ["string", "null"], "enum": ["pain_confirmed", "no_pain", "unsure", None]},
            "note": _NULLABLE_STRING,
            "raised_at": _DATETIME,
            "updated_at": _DATETIME,
            "acknowledged_at": _NULLABLE_DATETIME,
            "acknowledged_by": _NULLABLE_STRING,
            "resolved_at": _NULLABLE_DATETIME,
            "resolved_by": _NULLABLE_STRING,
            "grow_job": {
                "type": ["string", "null"],
                "description": "resolve only: the baseline-growth job enqueued for a no_pain label",
            },
        },
    },
    "Utterance": {
        "type": "object",
        "required": ["id", "seq", "start_ms", "end_ms", "speech_s", "status"],
        "properties": {
            "id": _ID,
            "seq": {"type": "integer"},
            "start_ms": {"type": "integer", "description": "from the start of the stream"},
            "end_ms": {"type": "integer"},
            "speech_s": {"type": "number"},
            "status": {"type": "string", "enum": ["pending", "scored", "failed", "skipped"]},
            "probability": _NULLABLE_NUMBER,
            "speaker_similarity": _NULLABLE_NUMBER,
            "baseline_applied": {"type": "boolean"},
            "baseline_n": {"type": "integer"},
            "model_version": _NULLABLE_STRING,
        },
    },
    "CallDetail": {
        "type": "object",
        "required": ["call", "patient", "flag", "threshold", "utterances", "evidence", "speaker_check"],
        "properties": {
            "call": {
                "type": "object",
                "properties": {
                    "id": _ID,
                    "started_at": _DATETIME,
                    "ended_at": _NULLABLE_DATETIME,
                    "status": {"type": "string"},
                    "live": {"type": "boolean"},
                    "verdict": {"type": "string"},
                    "probability": _NULLABLE_NUMBER,
                    "speech_s": {"type": "number"},
                    "consent": {"type": "boolean"},
                    "stream_status": _NULLABLE_STRING,
                },
            },
            "patient": {
                "type": ["object", "null"],
                "properties": {"id": _ID, "label": {"type": "string"}},
            },
            "flag": {"oneOf": [_ref("Flag"), {"type": "null"}]},
            "threshold": {"type": ["number", "null"], "description": "the probability at which calls are flagged"},
            "utterances": {"type": "array", "items": _ref("Utterance")},
            "evidence": {
                "type": ["object", "null"],
                "description": "set when the call is finalised: top utterances and the measures that moved "
                "most against the caller's own baseline, in semitones, dB, percent",
            },
            "speaker_check": {
                "type": "object",
                "properties": {"checked": {"type": "integer"}, "mismatches": _NULLABLE_ID},
            },
            "baseline": _ref("BaselineStatus"),
        },
    },
    "ResolveRequest": {
        "type": "object",
        "required": ["label"],
        "properties": {
            "label": {"type": "string", "enum": ["pain_confirmed", "no_pain", "unsure"]},
            "note": {"type": "string", "maxLength": 2000},
        },
    },
    "PatientRow": {
        "type": "object",
        "required": ["id", "label", "key_kind", "calls"],
        "properties": {
            "id": _ID,
            "label": {"type": "string"},
            "key_kind": _KEY_KIND,
            "created_at": _DATETIME,
            "last_call_at": _NULLABLE_DATETIME,
            "calls": {"type": "integer"},
            "baseline": _ref("BaselineStatus"),
        },
    },
    "Patients": {
        "type": "object",
        "required": ["patients"],
        "properties": {"patients": {"type": "array", "items": _ref("PatientRow")}},
    },
    "Contribution": {
        "type": "object",
        "required": ["id", "source", "included"],
        "properties": {
            "id": _ID,
            "utterance_id": _NULLABLE_ID,
            "call_id": _NULLABLE_ID,
            "source": {"type": "string", "enum": ["enrolment", "resolved_call"]},
            "included": {"type": "boolean"},
            "created_at": _DATETIME,
        },
    },
    "Baseline": {
        "type": "object",
        "required": ["id", "embedder", "model_version", "count", "stale", "contributions"],
        "properties": {
            "id": _ID,
            "embedder": {"type": "string"},
            "model_version": {"type": "string"},
            "count": {"type": "integer", "description": "utterances in the stored statistics"},
            "updated_at": _DATETIME,
            "n_utterances": {"type": "integer", "description": "included contributions"},
            "n_calls": {"type": "integer"},
            "n_excluded": {"type": "integer"},
            "stale": {"type": "boolean", "description": "a rebuild is pending (count differs from n_utterances)"},
            "contributions": {"type": "array", "items": _ref("Contribution")},
        },
    },
    "Measure": {
        "type": "object",
        "required": ["key", "label", "unit"],
        "properties": {
            "key": {"type": "string"},
            "label": {"type": "string"},
            "unit": {"type": "string"},
            "patient_mean": _NULLABLE_NUMBER,
            "patient_sd": _NULLABLE_NUMBER,
            "patient_n": {"type": "integer"},
            "population_mean": _NULLABLE_NUMBER,
            "population_sd": _NULLABLE_NUMBER,
            "population_patients": {"type": "integer"},
        },
    },
    "PatientBaseline": {
        "type": "object",
        "required": ["patient", "baselines", "measures"],
        "properties": {
            "patient": {
                "type": "object",
                "properties": {"id": _ID, "label": {"type": "string"}, "key_kind": _KEY_KIND, "created_at": _DATETIME},
            },
            "baselines": {"type": "array", "items": _ref("Baseline")},
            "measures": {"type": "array", "items": _ref("Measure")},
        },
    },
    "ContributionChange": {
        "type": "object",
        "required": ["contribution_id", "baseline_id", "included", "changed", "rebuild_job"],
        "properties": {
            "contribution_id": _ID,
            "baseline_id": _ID,
            "patient_id": _ID,
            "included": {"type": "boolean"},
            "changed": {"type": "boolean"},
            "rebuild_job": {"type": ["string", "null"], "description": "null if the queue was unreachable"},
        },
    },
    "BaselineReset": {
        "type": "object",
        "required": ["patient_id", "baseline_ids", "excluded", "rebuild_jobs"],
        "properties": {
            "patient_id": _ID,
            "baseline_ids": {"type": "array", "items": _ID},
            "excluded": {"type": "integer"},
            "rebuild_jobs": {"type": "array", "items": {"type": "string"}},
        },
    },
    "AuditEvent": {
        "type": "object",
        "required": ["id", "at", "actor", "action", "object_type", "object_id", "detail"],
        "properties": {
            "id": _ID,
            "at": _DATETIME,
            "actor": {"type": "string"},
            "action": {"type": "string", "examples": ["call.view", "flag.resolve", "baseline.exclude"]},
            "object_type": {"type": "string"},
            "object_id": {"type": "string"},
            "detail": {"type": "object"},
        },
    },
    "AuditPage": {
        "type": "object",
        "required": ["events", "next_before_id"],
        "properties": {
            "events": {"type": "array", "items": _ref("AuditEvent")},
            "next_before_id": {"type": ["integer", "null"], "description": "pass as before_id for the next page"},
        },
    },
}

SCHEMA_RECORDS: dict[str, type] = {
    "BaselineStatus": BaselineStatus,
    "QueueRow": QueueRow,
    "Flag": ResolvedFlag,  # acknowledge answers the same fields without grow_job (a FlagRecord)
    "Utterance": UtteranceRecord,
    "CallDetail": CallDetail,
    "PatientRow": PatientRow,
    "Contribution": ContributionRecord,
    "Baseline": BaselineRecord,
    "Measure": MeasureRecord,
    "PatientBaseline": PatientBaseline,
    "ContributionChange": ContributionChange,
    "BaselineReset": BaselineReset,
    "AuditEvent": AuditEntry,
    "AuditPage": AuditPage,
}
"""The store record each schema describes; the schemas not listed are no record (errors, requests,
``/me`` and the ``{"rows": ...}`` and ``{"patients": ...}`` envelopes)."""


def _paths() -> dict[str, Any]:
    not_found = {"404": _error("No such object.")}
    conflict = {"409": _error("The flag is already resolved.")}
    return {
        "/api/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": [],
                "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
            }
        },
        "/api/v1/me": {
            "get": _operation(
                "me",
                "Who the token or session belongs to",
                "nurse, admin, auditor",
                _json(_ref("Me"), "The caller's account."),
            )
        },
        "/api/v1/queue": {
            "get": _operation(
                "queue",
                "Open flags (most severe, newest first), then live calls",
                "nurse, admin, auditor",
                _json(_ref("Queue"), "The triage queue. Audited as queue.view."),
            )
        },
        "/api/v1/calls/{call_id}": {
            "get": _operation(
                "call",
                "A call: utterance scores, threshold, verdict, evidence, speaker checks, flag",
                "nurse, admin, auditor",
                _json(_ref("CallDetail"), "The call. Audited as call.view."),
                parameters=[_path_id("call_id", "call id")],
                extra=not_found,
            )
        },
        "/api/v1/flags/{flag_id}/acknowledge": {
            "post": _operation(
                "acknowledgeFlag",
                "Acknowledge a flag (idempotent)",
                "nurse, admin",
                _json(_ref("Flag"), "The flag, now acknowledged."),
                changes=True,
                parameters=[_path_id("flag_id", "flag id")],
                extra={**not_found, **conflict},
            )
        },
        "/api/v1/flags/{flag_id}/resolve": {
            "post": _operation(
                "resolveFlag",
                "Resolve a flag with a label and note; no_pain lets the baseline grow",
                "nurse, admin",
                _json(_ref("Flag"), "The resolved flag, with grow_job."),
                changes=True,
                parameters=[_path_id("flag_id", "flag id")],
                body={
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("ResolveRequest")},
                        "application/x-www-form-urlencoded": {"schema": _ref("ResolveRequest")},
                    },
                },
                extra={**not_found, **conflict},
            )
        },
        "/api/v1/patients": {
            "get": _operation(
                "patients",
                "Search patients by hotline reference (or id)",
                "admin, auditor",
                _json(_ref("Patients"), "Matching patients, most recent call first. Audited."),
                parameters=[_query("q", "part of the hotline reference, or a patient id")],
                extra={"400": _error("q contains a NUL character.")},
            )
        },
        "/api/v1/patients/{patient_id}/baseline": {
            "get": _operation(
                "patientBaseline",
                "A patient's baselines, contributions and plain-unit measures",
                "admin, auditor",
                _json(_ref("PatientBaseline"), "The baseline. Audited as baseline.view."),
                parameters=[_path_id("patient_id", "patient id")],
                extra=not_found,
            )
        },
        "/api/v1/patients/{patient_id}/baseline/reset": {
            "post": _operation(
                "resetBaseline",
                "Exclude every contribution of the patient's baselines and rebuild them",
                "admin",
                _json(_ref("BaselineReset"), "Excluded; rebuild jobs enqueued."),
                changes=True,
                parameters=[_path_id("patient_id", "patient id")],
                extra=not_found,
                ok_status="202",
            )
        },
        "/api/v1/contributions/{contribution_id}/exclude": {
            "post": _operation(
                "excludeContribution",
                "Exclude one contribution from its baseline, then rebuild",
                "admin",
                _json(_ref("ContributionChange"), "Excluded; rebuild enqueued."),
                changes=True,
                parameters=[_path_id("contribution_id", "contribution id")],
                extra=not_found,
                ok_status="202",
            )
        },
        "/api/v1/contributions/{contribution_id}/include": {
            "post": _operation(
                "includeContribution",
                "Re-include an excluded contribution, then rebuild",
                "admin",
                _json(_ref("ContributionChange"), "Included; rebuild enqueued."),
                changes=True,
                parameters=[_path_id("contribution_id", "contribution id")],
                extra=not_found,
                ok_status="202",
            )
        },
        "/api/v1/audit": {
            "get": _operation(
                "audit",
                "The audit log, newest first, with filters",
                "admin, auditor",
                _json(_ref("AuditPage"), "A page of events. Reading it is audited too."),
                parameters=[
                    _query("actor", "exact username or process name"),
                    _query("action", "exact action, e.g. flag.resolve"),
                    _query("object_type", "call, flag, patient, user, ..."),
                    _query("object_id", "exact object id"),
                    _query("before_id", "page: events with a smaller id", _ID),
                    _query(
                        "limit", "page size (1-500, default 100)", {"type": "integer", "minimum": 1, "maximum": 500}
                    ),
                ],
                extra={
                    "400": _error(
                        "before_id or limit is not an integer, before_id is out of range, or a filter "
                        "contains a NUL character."
                    )
                },
            )
        },
    }


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the OpenAPI 3.1 document (callers may not mutate the shared one)."""
    return deepcopy(
        {
            "openapi": "3.1.0",
            "info": {
                "title": "painline API",
                "version": API_VERSION,
                "description": (
                    "Triage flags, calls and patient baselines for the hotline's own systems. Decision "
                    "support, not a diagnosis. Every read or change of a patient's data is written to the "
                    "audit log under the token owner's username. Tokens: `painline users token USERNAME`."
                ),
            },
            "servers": [{"url": "/"}],
            "tags": [
                {"name": "triage", "description": "nurses' queue, calls and flags"},
                {"name": "review", "description": "patients, baselines and the audit log"},
            ],
            "paths": _paths(),
            "components": {
                "schemas": _SCHEMAS,
                "securitySchemes": {
                    "bearerToken": {"type": "http", "scheme": "bearer", "description": "an API token (pl_...)"},
                    "sessionCookie": {
                        "type": "apiKey",
                        "in": "cookie",
                        "name": "painline_session",
                        "description": "a signed-in browser session",
                    },
                },
            },
        }
    )


__all__ = ["API_VERSION", "SCHEMA_RECORDS", "openapi_document"]
