"""The admin pages: patients, what each baseline is made of, and the audit log.

Routes (blueprint ``admin``, all under ``/admin``; admins may change, auditors may only look):

- ``GET /admin/patients?q=``: search by hotline reference or patient id; each patient shows the kind
  of key calls reach them by (hotline reference or keyed caller number), never the key itself;
- ``GET /admin/patients/<id>``: the baseline page: the same key kind (and a warning when a reference
  reads as a phone number, which calls from that number would never reach); baselines with their
  model version, size and last update; the key acoustic measures against the population as an SVG
  plot; the contributions of one baseline with exclude/include buttons, each with its source (an
  enrolment upload, a command-line enrolment, or a resolved call's utterance, linked), time, length,
  the model's probability where it scored one, and who excluded it (:mod:`dashboard.baseline_page`
  derives these from existing rows and the audit trail), and what "built from N" and "M in the
  statistics" mean; reset; enrolment from uploaded audio;
- ``POST /admin/contributions/<id>/exclude`` and ``.../include``, ``POST /admin/patients/<id>/reset``,
  ``POST /admin/patients/<id>/enrol`` (admin only);
- ``GET /admin/audit``: the audit trail with filters (actor, action, object type and id, dates); each
  object that has a page links to it.

Query parameters are validated by :mod:`dashboard.params`, the same functions the JSON API uses; a
refused one is a 400 page naming the field (:mod:`dashboard.errors`).

Reads and changes go through :class:`dashboard.queries.Store`, as the JSON API's do. Excluding,
including and resetting flip ``included`` at once and enqueue ``worker.jobs.rebuild_baseline`` (the
worker's rebuild is the one place statistics are re-derived); until it has run the page says the
baseline is being rebuilt.

Enrolment from upload needs the embedders, which only workers load, and the dashboard may not import
``worker``. So the upload is checked and decoded here (:mod:`dashboard.uploads`: every file's header
is judged against :data:`ENROL_LIMITS` before any is decoded, so a small compressed file cannot
expand into gigabytes; a refused upload answers 400 with the patient page and the reason at the
form), put through the telephone channel exactly as ``painline baseline enroll`` does, and stored as
8 kHz mu-law bytes in Redis under
``schema.contract.enrol_upload_key(token)`` (a list, one clip per item) for :data:`UPLOAD_TTL_S`
seconds; then ``worker.jobs.enroll_uploaded(patient_id, token, user_id)`` is enqueued through
``schema.contract.enqueue`` with job id ``enrol-upload-<token>`` and the deployment's retry policy.
Job arguments are ids only (Redis holds them and RQ logs them, so not even the admin's username: the
worker looks it up for the audit trail); the audio never touches the database (it is read from the
request's own spooled upload, never copied to a file of ours), and the job deletes the key when it
has read it.
Redis is the one store every web and worker process shares, so this works with web and workers on
different hosts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from datetime import timedelta
from typing import Any

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker

from analysis.channel import TELEPHONE_RATE
from dashboard import params
from dashboard.auth import ADMIN, AUDITOR, require_role
from dashboard.baseline_page import ContributionRow, account, contribution_rows
from dashboard.charts import MeasureRow, measures_plot
from dashboard.config import config_of
from dashboard.formatting import measure_unit
from dashboard.page_queries import AuditFilters, audit_events, audit_vocabulary, voiceprint_summary
from dashboard.queries import Invalid, NotFound, Store
from dashboard.uploads import UploadError, UploadLimits, telephone_clips
from schema.audit import AuditDetailError, record
from schema.contract import JobName, enqueue, enrol_job_id, enrol_upload_key
from schema.db import session_scope
from schema.models import Patient

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

UPLOAD_TTL_S = 3600
ENROL_LIMITS = UploadLimits()
"""What one enrolment upload may hold (files, bytes, and per file duration, channels and rate)."""
AUDIT_PAGE = 100
PLOT_MEASURES = ("pitch", "loudness", "jitter", "shimmer", "hnr")
"""The key acoustic measures of the baseline plot, in display order."""
DECIMALS = {"jitter": 2, "shimmer": 2}


def _sessions() -> sessionmaker[Session]:
    return current_app.extensions["painline.sessions"]


def _store() -> Store:
    return Store.for_app()


def _actor() -> str:
    return g.current_user.username


def plot_rows(measures: list[dict]) -> list[MeasureRow]:
    """The :meth:`Store.baseline` measures the plot shows, as chart rows."""
    by_key = {m["key"]: m for m in measures}
    return [
        MeasureRow(
            key=key,
            label=by_key[key]["label"],
            unit=measure_unit(key, by_key[key]["unit"]),  # absolute values: pitch needs its reference
            patient=by_key[key]["patient_mean"],
            population_mean=by_key[key]["population_mean"],
            population_sd=by_key[key]["population_sd"],
            decimals=DECIMALS.get(key, 1),
        )
        for key in PLOT_MEASURES
        if key in by_key
    ]


# ---------------------------------------------------------------------------------------------------
# patients


@bp.get("/patients")
@require_role(ADMIN, AUDITOR)
def patients() -> ResponseReturnValue:
    q = params.search_query(request.args)
    rows = _store().search_patients(q, _actor())
    return render_template("admin/patients.html", rows=rows, q=q)


@bp.get("/patients/<id:patient_id>")
@require_role(ADMIN, AUDITOR)
def patient(patient_id: int) -> ResponseReturnValue:
    return _patient_page(patient_id)


def _patient_page(patient_id: int, *, status: int = 200, enrol_error: str | None = None) -> ResponseReturnValue:
    """The baseline page; after a refused upload, with the reason at the enrolment form and a 400."""
    try:
        doc = _store().baseline(patient_id, _actor())
    except NotFound:
        abort(404)
    wanted = request.args.get("baseline", type=int)
    baselines = doc["baselines"]
    selected = next((b for b in baselines if b["id"] == wanted), baselines[0] if baselines else None)
    contributions: list[ContributionRow] = []
    with session_scope(_sessions()) as session:
        voiceprint = voiceprint_summary(session, patient_id)
        if selected is not None:
            contributions = contribution_rows(
                session,
                patient_id=patient_id,
                baseline_id=selected["id"],
                model_version=selected["model_version"],
                upload_window=timedelta(seconds=UPLOAD_TTL_S),
            )
    rows = plot_rows(doc["measures"])
    evidence_n = max((m["patient_n"] for m in doc["measures"]), default=0)
    pooled = max((m["population_patients"] for m in doc["measures"]), default=0)
    return render_template(
        "admin/patient.html",
        doc=doc,
        patient=doc["patient"],
        baselines=baselines,
        selected=selected,
        contributions=contributions,
        counts=account(contributions, selected["count"]) if selected else None,
        plot=measures_plot(rows),
        measure_rows=rows,
        evidence_n=evidence_n,
        pooled_patients=pooled,
        voiceprint=voiceprint,
        limits=ENROL_LIMITS,
        enrol_error=enrol_error,
    ), status


def _back_to_patient(patient_id: int, baseline_id: int | None = None) -> ResponseReturnValue:
    query: dict[str, Any] = {"baseline": baseline_id} if baseline_id else {}
    return redirect(url_for("admin.patient", patient_id=patient_id, **query) + "#contributions")


def _set_included(contribution_id: int, included: bool) -> ResponseReturnValue:
    try:
        result = _store().set_contribution_included(contribution_id, included, _actor())
    except NotFound:
        abort(404)
    except Invalid as exc:
        abort(400, description=str(exc))
    verb = "included" if included else "excluded"
    message = f"Contribution {contribution_id} {verb}."
    if result["rebuild_job"] is None:
        flash(message + " The baseline could not be rebuilt yet (queue unavailable): repeat to retry.", "warning")
    else:
        flash(message + " The baseline is being rebuilt.", "success")
    return _back_to_patient(result["patient_id"], result["baseline_id"])


@bp.post("/contributions/<id:contribution_id>/exclude")
@require_role(ADMIN)
def exclude(contribution_id: int) -> ResponseReturnValue:
    return _set_included(contribution_id, False)


@bp.post("/contributions/<id:contribution_id>/include")
@require_role(ADMIN)
def include(contribution_id: int) -> ResponseReturnValue:
    return _set_included(contribution_id, True)


@bp.post("/patients/<id:patient_id>/reset")
@require_role(ADMIN)
def reset(patient_id: int) -> ResponseReturnValue:
    if request.form.get("confirm") != "yes":
        flash("Tick the confirmation box to reset this baseline.", "error")
        return _back_to_patient(patient_id)
    try:
        result = _store().reset_baseline(patient_id, _actor())
    except NotFound:
        abort(404)
    flash(f"Baseline reset: {result['excluded']} contributions excluded (they can be included again).", "success")
    return _back_to_patient(patient_id)


# ---------------------------------------------------------------------------------------------------
# enrolment from uploaded audio


@bp.post("/patients/<id:patient_id>/enrol")
@require_role(ADMIN)
def enrol(patient_id: int) -> ResponseReturnValue:
    if (request.content_length or 0) > ENROL_LIMITS.max_bytes:
        abort(413)  # dashboard.errors says so in the layout, with a link back to this patient
    with session_scope(_sessions()) as session:
        if session.get(Patient, patient_id) is None:
            abort(404)
    files = [f for f in request.files.getlist("audio") if f and f.filename]
    if not files:
        return _refuse_upload(patient_id, "Choose one or more recordings of the patient's normal voice.")
    if len(files) > ENROL_LIMITS.max_clips:
        refused = f"At most {ENROL_LIMITS.max_clips} recordings at a time. Nothing was enrolled."
        return _refuse_upload(patient_id, refused)
    try:
        clips = telephone_clips([f.stream for f in files], ENROL_LIMITS)
    except UploadError as exc:
        number = exc.recording or 1
        name = files[number - 1].filename
        return _refuse_upload(patient_id, f"Recording {number} refused: {exc} ({name}). Nothing was enrolled.")
    token = secrets.token_hex(16)
    redis = current_app.extensions["painline.redis"]
    queue = current_app.extensions["painline.queue"]
    try:
        pipe = redis.pipeline()
        pipe.rpush(enrol_upload_key(token), *clips)
        pipe.expire(enrol_upload_key(token), UPLOAD_TTL_S)
        pipe.execute()
    except (RedisError, OSError) as exc:
        log.warning("patient %s: enrolment upload not stored (%s)", patient_id, type(exc).__name__)
        queued = False
    else:
        # the user id, not the name: job arguments sit in Redis and appear in RQ's log lines
        queued = enqueue(
            queue,
            JobName.ENROL_UPLOAD,
            patient_id,
            token,
            g.current_user.id,
            job_id=enrol_job_id(token),
            options=config_of().jobs,
        ).ok
    if not queued:
        with contextlib.suppress(RedisError, OSError):
            redis.delete(enrol_upload_key(token))
        flash("Enrolment could not be queued (queue unavailable). Try again shortly.", "error")
        return _back_to_patient(patient_id)
    seconds = sum(len(c) for c in clips) / TELEPHONE_RATE
    with session_scope(_sessions()) as session:
        record(
            session,
            _actor(),
            "baseline.enrol_upload",
            "patient",
            patient_id,
            clips=len(clips),
            seconds=round(seconds, 1),
            job_id=enrol_job_id(token),
        )
    flash(
        f"{len(clips)} recording(s), {seconds:.0f} s, queued for enrolment. The baseline updates when a worker "
        "has processed them; reload this page in a minute.",
        "success",
    )
    return _back_to_patient(patient_id)


def _refuse_upload(patient_id: int, reason: str) -> ResponseReturnValue:
    """The patient page again, answering 400, with ``reason`` at the enrolment form (nothing was stored)."""
    return _patient_page(patient_id, status=400, enrol_error=reason)


# ---------------------------------------------------------------------------------------------------
# the audit log


@bp.get("/audit")
@require_role(ADMIN, AUDITOR)
def audit() -> ResponseReturnValue:
    args = request.args
    match = params.audit_match(args)
    days = params.day_range(args)
    before = params.row_id(args, "before")
    filters = AuditFilters(
        actor=match.actor or "",
        action=match.action or "",
        object_type=match.object_type or "",
        object_id=match.object_id or "",
        since=days.since,
        until=days.until,
    )
    since, until = days.first, days.last
    with session_scope(_sessions()) as session:
        events = audit_events(session, filters, before_id=before, limit=AUDIT_PAGE + 1)
        vocabulary = audit_vocabulary(session)
        more = len(events) > AUDIT_PAGE
        events = events[:AUDIT_PAGE]
        # as Store.audit_log does for the API: reading the trail is itself recorded, with the filters
        used: dict[str, object] = dict(match.used())
        # dates as dates under neutral names: the trail refuses "from"/"to" keys and number-shaped strings
        used.update({k: v for k, v in (("since", since), ("until", until)) if v is not None})
        try:
            record(session, _actor(), "audit.view", "audit", "-", filters=used, shown=len(events))
        except AuditDetailError:
            record(session, _actor(), "audit.view", "audit", "-", filters=sorted(used), shown=len(events))
    kept: dict[str, Any] = {k: v for k, v in args.items() if k != "before" and v}
    older = url_for("admin.audit", **kept, before=events[-1].id) if more and events else None
    return render_template(
        "admin/audit.html", events=events, filters=args, vocabulary=vocabulary, older=older, newest=bool(before)
    )


__all__ = [
    "ENROL_LIMITS",
    "UPLOAD_TTL_S",
    "bp",
]
