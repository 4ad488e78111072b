"""The nurse's pages: the triage queue, its live updates, and one call with its chart and evidence.

Routes (blueprint ``nurse``):

- ``GET /``: open flags and live calls, most severe and newest first (nurse, admin, auditor);
- ``GET /queue/rows``: the queue's ``<tbody>`` alone, which ``static/live.js`` fetches on each event;
- ``GET /events``: Server-Sent Events relayed from the worker's Redis flag channel (:mod:`dashboard.live`);
- ``GET /calls/<id>``: the probability chart, utterances, verdict, evidence and speaker checks;
- ``POST /flags/<id>/acknowledge`` and ``POST /flags/<id>/resolve`` (nurse, admin): change the flag,
  then redirect to the call (post/redirect/get). Resolving with ``no_pain`` enqueues
  ``worker.jobs.grow_baseline_from_call`` by name, job id ``grow-baseline-<call id>``: the worker
  applies the baseline policy; the web process never imports ``worker``.

Reads and changes go through :class:`dashboard.queries.Store`, the same methods the JSON API calls,
so pages and API show the same rows in the same order and write the same audit events
(``queue.view``, ``call.view``, ``flag.acknowledge``, ``flag.resolve``). The queue fragment refreshed
by the live script is not audited, or each flag would write one row per open screen.
CSRF and the auditor's read-only rule are enforced for every POST by :mod:`dashboard.auth`.
"""

from __future__ import annotations

import logging

from flask import Blueprint, abort, flash, g, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from dashboard import formatting, live
from dashboard.auth import ACTORS, VIEWERS, require_role
from dashboard.charts import ChartPoint, probability_chart
from dashboard.queries import Conflict, Invalid, NotFound, Store
from schema.models import FlagLabel

log = logging.getLogger(__name__)

bp = Blueprint(
    "nurse",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/ui",
)
formatting.register(bp)

SPEAKER_THRESHOLD = 0.70
"""``worker.context.DEFAULT_SPEAKER_THRESHOLD``, for display only (a test checks they agree)."""


def _store() -> Store:
    return Store.for_app()


def _actor() -> str:
    return g.current_user.username


def chart_for(doc: dict) -> str:
    """The probability chart of a call document from :meth:`Store.call`."""
    points = [
        ChartPoint(
            seq=u["seq"],
            start_s=u["start_ms"] / 1000.0,
            end_s=u["end_ms"] / 1000.0,
            probability=float(u["probability"]),
            speaker_mismatch=u["speaker_similarity"] is not None and u["speaker_similarity"] < SPEAKER_THRESHOLD,
        )
        for u in doc["utterances"]
        if u["probability"] is not None
    ]
    call = doc["call"]
    duration = (call["ended_at"] - call["started_at"]).total_seconds() if call["ended_at"] else None
    return probability_chart(points, doc["threshold"], duration_s=duration)


def shows_pitch(evidence: dict) -> bool:
    """Whether the evidence shows pitch, whose absolute semitones the page must then say are re 27.5 Hz."""
    shown = list(evidence.get("moved") or []) + list(evidence.get("measures") or [])
    return any((m.get("measure") or m.get("key")) == "pitch" for m in shown if isinstance(m, dict))


# ---------------------------------------------------------------------------------------------------
# the queue


@bp.get("/")
@require_role(*VIEWERS)
def queue() -> ResponseReturnValue:
    rows = _store().queue_rows(_actor())
    return render_template("nurse/queue.html", rows=rows)


@bp.get("/queue/rows")
@require_role(*VIEWERS)
def queue_rows() -> ResponseReturnValue:
    # a refresh of the page already audited shows no one anything they did not choose to open
    rows = _store().queue_rows(None)
    return render_template("nurse/_queue_rows.html", rows=rows)


@bp.get("/events")
@require_role(*VIEWERS)
def events() -> ResponseReturnValue:
    return live.events_response()


# ---------------------------------------------------------------------------------------------------
# one call


@bp.get("/calls/<id:call_id>")
@require_role(*VIEWERS)
def call(call_id: int) -> ResponseReturnValue:
    try:
        doc = _store().call(call_id, _actor())
    except NotFound:
        abort(404)
    evidence = doc["evidence"] or {}
    return render_template(
        "nurse/call.html",
        doc=doc,
        call=doc["call"],
        flag=doc["flag"],
        evidence=evidence,
        pitch_reference_hz=formatting.PITCH_REFERENCE_HZ if shows_pitch(evidence) else None,
        chart=chart_for(doc),
        threshold=doc["threshold"],
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
        doc = _store().acknowledge_flag(flag_id, _actor())
    except NotFound:
        abort(404)
    except Conflict as exc:
        flash(f"Not acknowledged: {exc}.", "error")
        return _back(call_id)
    flash("Flag acknowledged.", "success")
    return _back(doc["call_id"])


@bp.post("/flags/<id:flag_id>/resolve")
@require_role(*ACTORS)
def resolve(flag_id: int) -> ResponseReturnValue:
    call_id = request.form.get("call_id", type=int)
    label = request.form.get("label", "")
    if label not in {m.value for m in FlagLabel}:
        flash("Choose an outcome before resolving.", "error")
        return _back(call_id)
    try:
        doc = _store().resolve_flag(flag_id, _actor(), label, request.form.get("note", ""))
    except NotFound:
        abort(404)
    except (Conflict, Invalid) as exc:
        flash(f"Not resolved: {exc}.", "error")
        return _back(call_id)
    flash(f"Flag resolved: {formatting.label(label)}.", "success")
    if label == FlagLabel.NO_PAIN.value and doc.get("grow_job") is None:
        flash("The baseline could not be updated from this call right now (queue unavailable).", "warning")
    return _back(doc["call_id"])


__all__ = ["SPEAKER_THRESHOLD", "bp", "chart_for"]
