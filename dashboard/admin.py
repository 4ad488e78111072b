"""The admin pages: patients, what each baseline is made of, and the audit log.

Routes (blueprint ``admin``, all under ``/admin``; admins may change, auditors may only look):

- ``GET /admin/patients?q=``: search by hotline reference or patient id; each patient shows the kind
  of key calls reach them by (hotline reference or keyed caller number), never the key itself;
- ``GET /admin/patients/<id>``: the baseline page: the same key kind (and a warning when a reference
  reads as a phone number, which calls from that number would never reach); baselines with their
  model version, size and last update; the key acoustic measures against the population as an SVG
  plot; the contributions of one baseline with exclude/include buttons, each with its source (an
  enrolment upload, a command-line enrolment, or a resolved call's utterance, linked), time, length,
  the model's probability where it scored one, and who excluded it (:mod:`dashboard.store.contributions`
  derives these from existing rows and the audit trail), and what "built from N" and "M in the
  statistics" mean; reset; enrolment from uploaded audio;
- ``POST /admin/contributions/<id>/exclude`` and ``.../include``, ``POST /admin/patients/<id>/reset``,
  ``POST /admin/patients/<id>/enrol`` (admin only);
- ``GET /admin/audit``: the audit trail with filters (actor, action, object type and id, dates); each
  object that has a page links to it.

Query parameters are validated by :mod:`dashboard.params`, the same functions the JSON API uses; a
refused one is a 400 page naming the field (:mod:`dashboard.errors`).

Every read and change goes through :class:`dashboard.store.Store` (its ``patients`` and ``audit``
subjects), as the JSON API's do: the pages write nothing to the database, Redis or the job queue
themselves. Excluding, including and resetting flip ``included`` at once and enqueue
``worker.jobs.rebuild_baseline`` (the worker's rebuild is the one place statistics are re-derived);
until it has run the page says the baseline is being rebuilt.

Enrolment from upload needs the embedders, which only workers load, and the dashboard may not import
``worker``. So the upload is checked and decoded here (:mod:`dashboard.uploads`: every file's header
is judged against :data:`ENROL_LIMITS` before any is decoded, so a small compressed file cannot
expand into gigabytes; a refused upload answers 400 with the patient page and the reason at the
form), put through the telephone channel exactly as ``painline baseline enrol`` does, and handed to
:meth:`dashboard.store.patients.PatientStore.enrol_upload`, which stores the 8 kHz mu-law clips in
Redis for :data:`UPLOAD_TTL_S` seconds, enqueues ``worker.jobs.enrol_uploaded`` and audits the upload.
The audio never touches the database (it is read from the request's own spooled upload, never copied
to a file of ours).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dashboard import params
from dashboard.auth import ADMIN, AUDITOR, require_role
from dashboard.charts import MeasureRow, measures_plot
from dashboard.formatting import measure_unit
from dashboard.store import Invalid, NotFound, Store
from dashboard.store.audit import AuditFilters
from dashboard.store.contributions import ContributionRow, account
from dashboard.store.patients import UPLOAD_TTL_S, MeasureRecord
from dashboard.uploads import UploadError, UploadLimits, telephone_clips

log = logging.getLogger(__name__)

bp = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")

ENROL_LIMITS = UploadLimits()
"""What one enrolment upload may hold (files, bytes, and per file duration, channels and rate)."""
AUDIT_PAGE = 100
PLOT_MEASURES = ("pitch", "loudness", "jitter", "shimmer", "hnr")
"""The key acoustic measures of the baseline plot, in display order."""
DECIMALS = {"jitter": 2, "shimmer": 2}


def _store() -> Store:
    return Store.for_app()


def _actor() -> str:
    return g.current_user.username


def plot_rows(measures: tuple[MeasureRecord, ...]) -> list[MeasureRow]:
    """The baseline's measures the plot shows, as chart rows, in :data:`PLOT_MEASURES` order."""
    by_key = {m.key: m for m in measures}
    return [
        MeasureRow(
            key=key,
            label=by_key[key].label,
            unit=measure_unit(key, by_key[key].unit),  # absolute values: pitch needs its reference
            patient=by_key[key].patient_mean,
            population_mean=by_key[key].population_mean,
            population_sd=by_key[key].population_sd,
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
    rows = _store().patients.search(q, _actor())
    return render_template("admin/patients.html", rows=rows, q=q)


@bp.get("/patients/<id:patient_id>")
@require_role(ADMIN, AUDITOR)
def patient(patient_id: int) -> ResponseReturnValue:
    return _patient_page(patient_id)


def _patient_page(patient_id: int, *, status: int = 200, enrol_error: str | None = None) -> ResponseReturnValue:
    """The baseline page; after a refused upload, with the reason at the enrolment form and a 400."""
    patients = _store().patients
    try:
        doc = patients.baseline(patient_id, _actor())
    except NotFound:
        abort(404)
    wanted = request.args.get("baseline", type=int)
    baselines = doc.baselines
    selected = next((b for b in baselines if b.id == wanted), baselines[0] if baselines else None)
    contributions: list[ContributionRow] = []
    if selected is not None:
        contributions = patients.contributions(patient_id, selected)
    voiceprint = patients.voiceprint(patient_id)
    rows = plot_rows(doc.measures)
    evidence_n = max((m.patient_n for m in doc.measures), default=0)
    pooled = max((m.population_patients for m in doc.measures), default=0)
    return render_template(
        "admin/patient.html",
        doc=doc,
        patient=doc.patient,
        baselines=baselines,
        selected=selected,
        contributions=contributions,
        counts=account(contributions, selected.count) if selected else None,
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
        change = _store().patients.set_contribution_included(contribution_id, included, _actor())
    except NotFound:
        abort(404)
    except Invalid as exc:
        abort(400, description=str(exc))
    verb = "included" if included else "excluded"
    message = f"Contribution {contribution_id} {verb}."
    if change.rebuild_job is None:
        flash(message + " The baseline could not be rebuilt yet (queue unavailable): repeat to retry.", "warning")
    else:
        flash(message + " The baseline is being rebuilt.", "success")
    return _back_to_patient(change.patient_id, change.baseline_id)


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
        reset_done = _store().patients.reset_baseline(patient_id, _actor())
    except NotFound:
        abort(404)
    flash(f"Baseline reset: {reset_done.excluded} contributions excluded (they can be included again).", "success")
    return _back_to_patient(patient_id)


# ---------------------------------------------------------------------------------------------------
# enrolment from uploaded audio


@bp.post("/patients/<id:patient_id>/enrol")
@require_role(ADMIN)
def enrol(patient_id: int) -> ResponseReturnValue:
    if (request.content_length or 0) > ENROL_LIMITS.max_bytes:
        abort(413)  # dashboard.errors says so in the layout, with a link back to this patient
    patients = _store().patients
    try:
        patients.require(patient_id)
    except NotFound:
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
    upload = patients.enrol_upload(patient_id, clips, g.current_user.id, _actor())
    if not upload.queued:
        flash("Enrolment could not be queued (queue unavailable). Try again shortly.", "error")
        return _back_to_patient(patient_id)
    flash(
        f"{upload.clips} recording(s), {upload.seconds:.0f} s, queued for enrolment. The baseline updates when a "
        "worker has processed them; reload this page in a minute.",
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
        actor=match.actor,
        action=match.action,
        object_type=match.object_type,
        object_id=match.object_id,
        since=days.since,
        until=days.until,
    )
    # reading the trail is itself recorded, with the filters used (as the API's read is)
    used: dict[str, object] = dict(match.used())
    # dates as dates under neutral names: the trail refuses "from"/"to" keys and number-shaped strings
    used.update({k: v for k, v in (("since", days.first), ("until", days.last)) if v is not None})
    screen = _store().audit.browse(_actor(), filters, used, before_id=before, limit=AUDIT_PAGE)
    kept: dict[str, Any] = {k: v for k, v in args.items() if k != "before" and v}
    page = screen.page
    older = url_for("admin.audit", **kept, before=page.next_before_id) if page.next_before_id else None
    return render_template(
        "admin/audit.html",
        events=page.events,
        filters=args,
        vocabulary=screen.vocabulary,
        older=older,
        newest=bool(before),
    )


__all__ = [
    "ENROL_LIMITS",
    "UPLOAD_TTL_S",
    "bp",
]
