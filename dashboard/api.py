"""The JSON API under ``/api/v1``: the pages' data and actions for the hotline's own systems.

Every route is a thin shell over :class:`dashboard.store.Store`, the same methods the pages call,
so the API cannot show or do anything the pages would not (and writes the same audit events). The
store's records become JSON through one helper, :func:`dashboard.store.to_json` (field names are the
keys), and a test holds :mod:`dashboard.openapi`'s schemas to those records.
Authentication is a bearer token (``Authorization: Bearer pl_...``, issued by ``painline users token``)
or a signed-in browser session (then state-changing calls need the ``X-CSRF-Token`` header); see
:mod:`dashboard.auth`. Errors are JSON: ``{"error": code, "message": text}`` with 400, 401, 403, 404,
409 or 429. The OpenAPI 3.1 description is served, without authentication, at
``/api/v1/openapi.json`` (:mod:`dashboard.openapi`).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, request
from flask.blueprints import BlueprintSetupState
from flask.typing import ResponseReturnValue
from werkzeug.routing import IntegerConverter, Map

from dashboard import params
from dashboard.auth import ACTORS, ADMIN, AUDITOR, VIEWERS, current_user, json_error, require_api_role
from dashboard.openapi import openapi_document
from dashboard.params import MAX_ID
from dashboard.store import Conflict, Invalid, NotFound, Store, to_json
from dashboard.store.audit import AuditFilters

PREFIX = "/api/v1"

bp = Blueprint("api", __name__, url_prefix=PREFIX)

REVIEWERS = (ADMIN, AUDITOR)
"""Patients, baselines and the audit log: admins, and auditors read-only."""


class RowIdConverter(IntegerConverter):
    """``<id:name>``: a row id in 1..MAX_ID; anything else is a 404 at routing, before any query runs."""

    def __init__(self, url_map: Map) -> None:
        super().__init__(url_map, min=1, max=MAX_ID)


@bp.record_once
def _register_id_converter(state: BlueprintSetupState) -> None:
    """Runs before the routes below are added (deferred functions run in definition order)."""
    state.app.url_map.converters.setdefault("id", RowIdConverter)


def init_app(app: Flask) -> None:
    """Nothing app-wide: the blueprint carries its own error handlers."""


def _store() -> Store:
    return Store.for_app()


def _actor() -> str:
    user = current_user()
    assert user is not None  # every route below is guarded
    return user.username


def _ok(doc: object, status: int = 200) -> ResponseReturnValue:
    """``doc`` (a record, or a dict or list of them) as the JSON answer."""
    response = jsonify(to_json(doc))
    response.status_code = status
    return response


def _body() -> dict[str, Any]:
    """The request's JSON object, or its form fields (so a plain HTML form can call the API too)."""
    data = request.get_json(silent=True)
    if isinstance(data, dict):
        return data
    if request.is_json:
        raise Invalid("the request body must be a JSON object")
    return request.form.to_dict()


@bp.errorhandler(NotFound)
def _not_found(exc: NotFound) -> ResponseReturnValue:
    return json_error(404, "not_found", str(exc))


@bp.errorhandler(Conflict)
def _conflict(exc: Conflict) -> ResponseReturnValue:
    return json_error(409, "conflict", str(exc))


@bp.errorhandler(Invalid)
def _invalid(exc: Invalid) -> ResponseReturnValue:
    return json_error(400, "invalid", str(exc))


# ---------------------------------------------------------------------------------------------------
# routes


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    """The API description; public, like any API's documentation (it holds no data)."""
    return jsonify(openapi_document())


@bp.get("/me")
@require_api_role(*VIEWERS)
def me() -> ResponseReturnValue:
    user = current_user()
    assert user is not None
    return _ok({"username": user.username, "role": user.role, "via_token": user.via_token})


@bp.get("/queue")
@require_api_role(*VIEWERS)
def queue() -> ResponseReturnValue:
    return _ok({"rows": _store().flags.queue_rows(_actor())})


@bp.get("/calls/<id:call_id>")
@require_api_role(*VIEWERS)
def call(call_id: int) -> ResponseReturnValue:
    return _ok(_store().calls.call(call_id, _actor()))


@bp.post("/flags/<id:flag_id>/acknowledge")
@require_api_role(*ACTORS)
def acknowledge(flag_id: int) -> ResponseReturnValue:
    return _ok(_store().flags.acknowledge_flag(flag_id, _actor()))


@bp.post("/flags/<id:flag_id>/resolve")
@require_api_role(*ACTORS)
def resolve(flag_id: int) -> ResponseReturnValue:
    body = _body()
    label = body.get("label")
    note = body.get("note")
    if not isinstance(label, str):
        raise Invalid("label is required")
    if note is not None and not isinstance(note, str):
        raise Invalid("note must be a string")
    if "\x00" in label or (note is not None and "\x00" in note):
        raise Invalid("label and note must not contain NUL characters")
    return _ok(_store().flags.resolve_flag(flag_id, _actor(), label, note))


@bp.get("/patients")
@require_api_role(*REVIEWERS)
def patients() -> ResponseReturnValue:
    return _ok({"patients": _store().patients.search(params.search_query(request.args), _actor())})


@bp.get("/patients/<id:patient_id>/baseline")
@require_api_role(*REVIEWERS)
def baseline(patient_id: int) -> ResponseReturnValue:
    return _ok(_store().patients.baseline(patient_id, _actor()))


@bp.post("/patients/<id:patient_id>/baseline/reset")
@require_api_role(ADMIN)
def reset_baseline(patient_id: int) -> ResponseReturnValue:
    return _ok(_store().patients.reset_baseline(patient_id, _actor()), 202)


@bp.post("/contributions/<id:contribution_id>/exclude")
@require_api_role(ADMIN)
def exclude_contribution(contribution_id: int) -> ResponseReturnValue:
    return _ok(_store().patients.set_contribution_included(contribution_id, False, _actor()), 202)


@bp.post("/contributions/<id:contribution_id>/include")
@require_api_role(ADMIN)
def include_contribution(contribution_id: int) -> ResponseReturnValue:
    return _ok(_store().patients.set_contribution_included(contribution_id, True, _actor()), 202)


@bp.get("/audit")
@require_api_role(*REVIEWERS)
def audit() -> ResponseReturnValue:
    args = request.args
    try:
        limit = int(args.get("limit", 100))
    except ValueError as exc:
        raise Invalid("limit must be an integer") from exc
    # the same validation as the audit page's (dashboard.params), so both refuse the same values
    match = params.audit_match(args)
    filters = AuditFilters(
        actor=match.actor, action=match.action, object_type=match.object_type, object_id=match.object_id
    )
    return _ok(_store().audit.log(_actor(), filters, before_id=params.row_id(args, "before_id"), limit=limit))


__all__ = ["MAX_ID", "PREFIX", "REVIEWERS", "RowIdConverter", "bp", "init_app"]
