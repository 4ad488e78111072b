"""The admin pages: patients, what each baseline is made of, and the audit log.

Routes (blueprint ``admin``, all under ``/admin``; admins may change, auditors may only look):

- ``GET /admin/patients?q=``: search by hotline reference or patient id; each patient shows the kind
  of key calls reach them by (hotline reference or keyed caller number), never the key itself;
- ``GET /admin/patients/<id>``: the baseline page: the same key kind (and a warning when a reference
  reads as a phone number, which calls from that number would never reach); baselines with their
  model version, size and last update; the key acoustic measures against the population as an SVG
  plot; the contributions of one baseline with exclude/include buttons; reset; enrolment from
  uploaded audio;
- ``POST /admin/contributions/<id>/exclude`` and ``.../include``, ``POST /admin/patients/<id>/reset``,
  ``POST /admin/patients/<id>/enrol`` (admin only);
- ``GET /admin/audit``: the audit trail with filters (actor, action, object type and id, dates).

Reads and changes go through :class:`dashboard.queries.Store`, as the JSON API's do. Excluding,
including and resetting flip ``included`` at once and enqueue ``worker.jobs.rebuild_baseline`` (the
worker's rebuild is the one place statistics are re-derived); until it has run the page says the
baseline is being rebuilt.

Enrolment from upload needs the embedders, which only workers load, and the dashboard may not import
``worker``. So the upload is decoded here (``analysis.audio.load_audio``), put through the telephone
channel exactly as ``painline baseline enroll`` does, and stored as 8 kHz mu-law bytes in Redis under
``schema.contract.enrol_upload_key(token)`` (a list, one clip per item) for :data:`UPLOAD_TTL_S`
seconds; then ``worker.jobs.enroll_uploaded(patient_id, token, user_id)`` is enqueued through
``schema.contract.enqueue`` with job id ``enrol-upload-<token>`` and the deployment's retry policy.
Job arguments are ids only (Redis holds them and RQ logs them, so not even the admin's username: the
worker looks it up for the audit trail); the audio never touches the database or disk (temporary
files are deleted as soon as they are decoded), and the job deletes the key when it has read it.
Redis is the one store every web and worker process shares, so this works with web and workers on
different hosts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flask import Blueprint, abort, current_app, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from redis.exceptions import RedisError
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.datastructures import FileStorage

from analysis.audio import AudioLoadError, load_audio
from analysis.channel import TELEPHONE_RATE, mulaw_encode, telephone
from dashboard.api import MAX_ID as MAX_ROW_ID
from dashboard.auth import ADMIN, AUDITOR, require_role
from dashboard.charts import MeasureRow, measures_plot
from dashboard.config import config_of
from dashboard.page_queries import AuditFilters, audit_events, audit_vocabulary, voiceprint_summary
from dashboard.queries import Invalid, NotFound, Store
from schema.audit import AuditDetailError, record
from schema.contract import JobName, enqueue, enrol_job_id, enrol_upload_key
from schema.db import session_scope
from schema.models import Patient

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

UPLOAD_TTL_S = 3600
MAX_UPLOAD_BYTES = 32 * 1024 * 1024
MAX_CLIPS = 10
MIN_CLIP_S = 1.0
MAX_CLIP_S = 120.0
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
            unit=by_key[key]["unit"],
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
    q = _text_arg("q", 200)
    rows = _store().search_patients(q, _actor())
    return render_template("admin/patients.html", rows=rows, q=q)


@bp.get("/patients/<id:patient_id>")
@require_role(ADMIN, AUDITOR)
def patient(patient_id: int) -> ResponseReturnValue:
    try:
        doc = _store().baseline(patient_id, _actor())
    except NotFound:
        abort(404)
    with session_scope(_sessions()) as session:
        voiceprint = voiceprint_summary(session, patient_id)
    wanted = request.args.get("baseline", type=int)
    baselines = doc["baselines"]
    selected = next((b for b in baselines if b["id"] == wanted), baselines[0] if baselines else None)
    rows = plot_rows(doc["measures"])
    evidence_n = max((m["patient_n"] for m in doc["measures"]), default=0)
    pooled = max((m["population_patients"] for m in doc["measures"]), default=0)
    return render_template(
        "admin/patient.html",
        doc=doc,
        patient=doc["patient"],
        baselines=baselines,
        selected=selected,
        plot=measures_plot(rows),
        measure_rows=rows,
        evidence_n=evidence_n,
        pooled_patients=pooled,
        voiceprint=voiceprint,
        max_clips=MAX_CLIPS,
    )


def _back_to_patient(patient_id: int, baseline_id: int | None = None) -> ResponseReturnValue:
    params = {"baseline": baseline_id} if baseline_id else {}
    return redirect(url_for("admin.patient", patient_id=patient_id, **params) + "#contributions")


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


class UploadError(ValueError):
    """An uploaded file is not usable audio; the message is safe to show (no audio, no file content)."""


def decode_upload(upload: FileStorage) -> bytes:
    """One uploaded recording as the 8 kHz mu-law bytes a call would deliver."""
    suffix = Path(upload.filename or "").suffix.lower()[:8] or ".audio"
    handle, name = tempfile.mkstemp(prefix="painline-enrol-", suffix=suffix)
    try:
        with os.fdopen(handle, "wb") as out:
            upload.save(out)
        try:
            samples, rate = load_audio(name)
        except AudioLoadError as exc:
            raise UploadError("not a readable audio file") from exc
    finally:
        Path(name).unlink(missing_ok=True)
    seconds = len(samples) / float(rate) if rate else 0.0
    if seconds < MIN_CLIP_S:
        raise UploadError(f"shorter than {MIN_CLIP_S:.0f} s")
    if seconds > MAX_CLIP_S:
        raise UploadError(f"longer than {MAX_CLIP_S:.0f} s")
    return mulaw_encode(telephone(samples, rate))


@bp.post("/patients/<id:patient_id>/enrol")
@require_role(ADMIN)
def enrol(patient_id: int) -> ResponseReturnValue:
    if (request.content_length or 0) > MAX_UPLOAD_BYTES:
        abort(413)
    files = [f for f in request.files.getlist("audio") if f and f.filename]
    if not files:
        flash("Choose one or more recordings of the patient's normal voice.", "error")
        return _back_to_patient(patient_id)
    if len(files) > MAX_CLIPS:
        flash(f"At most {MAX_CLIPS} recordings at a time.", "error")
        return _back_to_patient(patient_id)
    with session_scope(_sessions()) as session:
        if session.get(Patient, patient_id) is None:
            abort(404)
    clips: list[bytes] = []
    for index, upload in enumerate(files, start=1):
        try:
            clips.append(decode_upload(upload))
        except UploadError as exc:
            flash(f"Recording {index} refused: {exc}. Nothing was enrolled.", "error")
            return _back_to_patient(patient_id)
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
        queued = enqueue(queue, JobName.ENROL_UPLOAD, patient_id, token, g.current_user.id,
                         job_id=enrol_job_id(token), options=config_of().jobs).ok
    if not queued:
        with contextlib.suppress(RedisError, OSError):
            redis.delete(enrol_upload_key(token))
        flash("Enrolment could not be queued (queue unavailable). Try again shortly.", "error")
        return _back_to_patient(patient_id)
    seconds = sum(len(c) for c in clips) / TELEPHONE_RATE
    with session_scope(_sessions()) as session:
        record(
            session, _actor(), "baseline.enrol_upload", "patient", patient_id,
            clips=len(clips), seconds=round(seconds, 1), job_id=enrol_job_id(token),
        )
    flash(
        f"{len(clips)} recording(s), {seconds:.0f} s, queued for enrolment. The baseline updates when a worker "
        "has processed them; reload this page in a minute.",
        "success",
    )
    return _back_to_patient(patient_id)


# ---------------------------------------------------------------------------------------------------
# the audit log


def _text_arg(name: str, limit: int) -> str:
    """A query parameter as a filter: stripped and cut; a NUL (which PostgreSQL text cannot hold) is a 400."""
    value = request.args.get(name, "").strip()[:limit]
    if "\x00" in value:
        abort(400, description=f"{name} must not contain NUL characters")
    return value


def _date(name: str) -> datetime | None:
    """A YYYY-MM-DD filter; anything else is a 400 rather than silently ignored."""
    value = request.args.get(name, "").strip()
    if not value:
        return None
    try:
        parsed = datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        abort(400, description=f"{name} must be a date written YYYY-MM-DD")
    if parsed.year >= 9999:  # the day after it cannot be represented
        abort(400, description=f"{name} is out of range")
    return parsed


@bp.get("/audit")
@require_role(ADMIN, AUDITOR)
def audit() -> ResponseReturnValue:
    args = request.args
    since, until = _date("from"), _date("to")
    filters = AuditFilters(
        actor=_text_arg("actor", 150),
        action=_text_arg("action", 64),
        object_type=_text_arg("object_type", 64),
        object_id=_text_arg("object_id", 128),
        since=since,
        until=until + timedelta(days=1) if until is not None else None,
    )
    before = args.get("before", type=int)
    if before is not None and not 1 <= before <= MAX_ROW_ID:
        abort(400, description="before must be an audit event id")
    with session_scope(_sessions()) as session:
        events = audit_events(session, filters, before_id=before, limit=AUDIT_PAGE + 1)
        vocabulary = audit_vocabulary(session)
        more = len(events) > AUDIT_PAGE
        events = events[:AUDIT_PAGE]
        # as Store.audit_log does for the API: reading the trail is itself recorded, with the filters
        used: dict[str, object] = {
            k: args.get(k) for k in ("actor", "action", "object_type", "object_id") if args.get(k)
        }
        # dates as dates under neutral names: the trail refuses "from"/"to" keys and number-shaped strings
        used.update({k: v.date() for k, v in (("since", since), ("until", until)) if v is not None})
        try:
            record(session, _actor(), "audit.view", "audit", "-", filters=used, shown=len(events))
        except AuditDetailError:
            record(session, _actor(), "audit.view", "audit", "-", filters=sorted(used), shown=len(events))
    params = {k: v for k, v in args.items() if k != "before" and v}
    older = url_for("admin.audit", **params, before=events[-1].id) if more and events else None
    return render_template(
        "admin/audit.html", events=events, filters=args, vocabulary=vocabulary, older=older, newest=bool(before)
    )


__all__ = [
    "UPLOAD_TTL_S",
    "bp",
    "decode_upload",
]
