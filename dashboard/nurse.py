"""The nurse's pages: the triage queue, its live updates, and one call with its chart and evidence.

Routes (blueprint ``nurse``):

- ``GET /``: open flags and live calls, most severe and newest first (nurse, admin, auditor); sorted
  and filtered by query parameters (:func:`queue_view`: ``sort``, ``dir``, ``level``, ``state``,
  ``patient``), so column links and the filter form work without JavaScript and can be bookmarked;
- ``GET /queue/rows``: the queue's ``<tbody>`` alone (same parameters), which ``static/live.js``
  fetches on each event;
- ``GET /events``: Server-Sent Events relayed from the Redis flag and call channels (:mod:`dashboard.live`);
- ``GET /calls/<id>``: the probability chart, utterances, verdict, evidence and speaker checks;
- ``GET /calls/<id>/live``: the same page, unaudited, which ``static/live.js`` fetches to update the
  open call page's parts when an event names this call (or on its short poll while the call is live);
- ``POST /flags/<id>/acknowledge`` and ``POST /flags/<id>/resolve`` (nurse, admin): change the flag,
  then redirect to the call (post/redirect/get). Resolving with ``no_pain`` enqueues
  ``worker.jobs.grow_baseline_from_call`` by name, job id ``grow-baseline-<call id>``: the worker
  applies the baseline policy; the web process never imports ``worker``.

Reads and changes go through :class:`dashboard.store.Store` (its ``flags`` and ``calls`` subjects),
the same methods the JSON API calls,
so pages and API show the same rows in the same order and write the same audit events
(``queue.view``, ``call.view``, ``flag.acknowledge``, ``flag.resolve``). The queue fragment refreshed
and call page refreshed by the live script are not audited, or each event would write one row per
open screen; the nurse's own opening of the page is.
CSRF and the auditor's read-only rule are enforced for every POST by :mod:`dashboard.auth`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dashboard import formatting, live
from dashboard.auth import ACTORS, VIEWERS, require_role
from dashboard.charts import ChartPoint, probability_chart
from dashboard.store import (
    CallDetail,
    Conflict,
    Invalid,
    NotFound,
    QueueSort,
    QueueState,
    QueueView,
    SortDirection,
    Store,
)
from schema.models import FlagLabel, FlagLevel

log = logging.getLogger(__name__)

bp = Blueprint(
    "nurse",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui",
)
formatting.register(bp)

PATIENT_FILTER_MAX = 64
SORT_LABELS = {
    QueueSort.SEVERITY: "Level",
    QueueSort.PATIENT: "Patient",
    QueueSort.RAISED: "Raised",
    QueueSort.STARTED: "Call start",
    QueueSort.PROBABILITY: "Probability",
}
STATE_LABELS = {
    QueueState.OPEN: "open flags",
    QueueState.ACKNOWLEDGED: "acknowledged flags",
    QueueState.UNFLAGGED: "live calls without a flag",
}

SPEAKER_THRESHOLD = 0.70
"""``worker.context.DEFAULT_SPEAKER_THRESHOLD``, for display only (a test checks they agree)."""


def _store() -> Store:
    return Store.for_app()


def _actor() -> str:
    return g.current_user.username


def chart_for(doc: CallDetail) -> str:
    """The probability chart of a call from :meth:`dashboard.store.calls.CallStore.call`."""
    points = [
        ChartPoint(
            seq=u.seq,
            start_s=u.start_ms / 1000.0,
            end_s=u.end_ms / 1000.0,
            probability=float(u.probability),
            speaker_mismatch=u.speaker_similarity is not None and u.speaker_similarity < SPEAKER_THRESHOLD,
        )
        for u in doc.utterances
        if u.probability is not None
    ]
    call = doc.call
    duration = (call.ended_at - call.started_at).total_seconds() if call.ended_at else None
    return probability_chart(points, doc.threshold, duration_s=duration)


def shows_pitch(evidence: dict) -> bool:
    """Whether the evidence shows pitch, whose absolute semitones the page must then say are re 27.5 Hz."""
    shown = list(evidence.get("moved") or []) + list(evidence.get("measures") or [])
    return any((m.get("measure") or m.get("key")) == "pitch" for m in shown if isinstance(m, dict))


# ---------------------------------------------------------------------------------------------------
# the queue


def _choice(kind: Any, raw: str | None) -> Any:
    """``kind(raw)`` for a StrEnum, or None when absent or not one of its values (ignored, not an error:
    a stale bookmark should still show the queue)."""
    if not raw:
        return None
    try:
        return kind(raw)
    except ValueError:
        return None


def queue_view(args: Mapping[str, str]) -> QueueView:
    """The queue's sort and filters from a query string; unknown values fall back to the default."""
    return QueueView(
        sort=_choice(QueueSort, args.get("sort")) or QueueSort.SEVERITY,
        direction=_choice(SortDirection, args.get("dir")) or SortDirection.DESC,
        level=_choice(FlagLevel, args.get("level")),
        state=_choice(QueueState, args.get("state")),
        patient=(args.get("patient") or "").strip()[:PATIENT_FILTER_MAX],
    )


def view_args(view: QueueView, **changes: str) -> dict[str, Any]:
    """Query parameters that reproduce ``view`` (defaults left out), with ``changes`` applied."""
    args: dict[str, Any] = {
        "sort": view.sort.value if view.sort is not QueueSort.SEVERITY else "",
        "dir": view.direction.value if view.direction is not SortDirection.DESC else "",
        "level": view.level.value if view.level is not None else "",
        "state": view.state.value if view.state is not None else "",
        "patient": view.patient,
    }
    args.update(changes)
    return {key: value for key, value in args.items() if value}


def sort_link(view: QueueView, column: QueueSort) -> str:
    """The column header's link: sort by ``column``, descending first, or flip the direction if already."""
    if view.sort is column:
        flipped = SortDirection.ASC if view.direction is SortDirection.DESC else SortDirection.DESC
        return url_for("nurse.queue", **view_args(view, sort=column.value, dir=flipped.value))
    return url_for("nurse.queue", **view_args(view, sort=column.value, dir=SortDirection.DESC.value))


def _queue_context(view: QueueView) -> dict[str, Any]:
    return {
        "view": view,
        "sorts": SORT_LABELS,
        "states": STATE_LABELS,
        "levels": [level.value for level in FlagLevel],
        "sort_link": sort_link,
        "rows_url": url_for("nurse.queue_rows", **view_args(view)),
    }


@bp.get("/")
@require_role(*VIEWERS)
def queue() -> ResponseReturnValue:
    view = queue_view(request.args)
    rows = _store().flags.queue_rows(_actor(), view=view)
    return render_template("nurse/queue.html", rows=rows, **_queue_context(view))


@bp.get("/queue/rows")
@require_role(*VIEWERS)
def queue_rows() -> ResponseReturnValue:
    # a refresh of the page already audited shows no one anything they did not choose to open
    view = queue_view(request.args)
    rows = _store().flags.queue_rows(None, view=view)
    return render_template("nurse/_queue_rows.html", rows=rows, view=view)


@bp.get("/events")
@require_role(*VIEWERS)
def events() -> ResponseReturnValue:
    return live.events_response()


# ---------------------------------------------------------------------------------------------------
# one call


@bp.get("/calls/<id:call_id>")
@require_role(*VIEWERS)
def call(call_id: int) -> ResponseReturnValue:
    return _call_page(call_id, _actor())


@bp.get("/calls/<id:call_id>/live")
@require_role(*VIEWERS)
def call_live(call_id: int) -> ResponseReturnValue:
    # the live script's refresh of a page the nurse opened (and the audit recorded) shows nothing new
    return _call_page(call_id, None)


def _call_page(call_id: int, actor: str | None) -> ResponseReturnValue:
    try:
        doc = _store().calls.call(call_id, actor)
    except NotFound:
        abort(404)
    evidence = doc.evidence or {}
    return render_template(
        "nurse/call.html",
        doc=doc,
        call=doc.call,
        flag=doc.flag,
        evidence=evidence,
        pitch_reference_hz=formatting.PITCH_REFERENCE_HZ if shows_pitch(evidence) else None,
        chart=chart_for(doc),
        threshold=doc.threshold,
        speaker_threshold=SPEAKER_THRESHOLD,
        labels=[(m.value, formatting.label(m.value)) for m in FlagLabel],
    )


def _back(call_id: int | None) -> ResponseReturnValue:
    return redirect(url_for("nurse.call", call_id=call_id) if call_id else url_for("nurse.queue"))


@bp.post("/flags/<id:flag_id>/acknowledge")
@require_role(*ACTORS)
def acknowledge(flag_id: int) -> ResponseReturnValue:
    call_id = request.form.get("call_id", type=int)
    try:
        flag = _store().flags.acknowledge_flag(flag_id, _actor())
    except NotFound:
        abort(404)
    except Conflict as exc:
        flash(f"Not acknowledged: {exc}.", "error")
        return _back(call_id)
    flash("Flag acknowledged.", "success")
    return _back(flag.call_id)


@bp.post("/flags/<id:flag_id>/resolve")
@require_role(*ACTORS)
def resolve(flag_id: int) -> ResponseReturnValue:
    call_id = request.form.get("call_id", type=int)
    label = request.form.get("label", "")
    if label not in {m.value for m in FlagLabel}:
        flash("Choose an outcome before resolving.", "error")
        return _back(call_id)
    try:
        resolved = _store().flags.resolve_flag(flag_id, _actor(), label, request.form.get("note", ""))
    except NotFound:
        abort(404)
    except (Conflict, Invalid) as exc:
        flash(f"Not resolved: {exc}.", "error")
        return _back(call_id)
    flash(f"Flag resolved: {formatting.label(label)}.", "success")
    if label == FlagLabel.NO_PAIN.value and resolved.grow_job is None:
        flash("The baseline could not be updated from this call right now (queue unavailable).", "warning")
    return _back(resolved.call_id)


__all__ = ["SPEAKER_THRESHOLD", "bp", "chart_for", "queue_view", "sort_link", "view_args"]
