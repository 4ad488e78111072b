"""Every read and change the dashboard makes, shared by the HTML pages and the JSON API.

A page handler and its API twin call the same :class:`Store` method, so they cannot drift apart:
same rows, same ordering, same audit events, same jobs. Methods return plain dicts (datetimes left
as :class:`~datetime.datetime` for templates; the API serialises them as ISO 8601) and raise
:class:`NotFound`, :class:`Conflict` or :class:`Invalid`, which the callers turn into 404, 409 and 400.

Audit: every method that shows or changes a patient's data takes the acting username and writes an
:class:`~schema.models.AuditEvent` in the same transaction as the read or change (so a view that
failed is not logged as seen, and a change is never committed without its record). Reads take
``actor=None`` only for internal refreshes that show nothing new to a person.

Baseline rebuilds are **enqueued**, not computed here: excluding or re-including a contribution, or
resetting a baseline, flips ``included`` in this transaction, then, after the commit, enqueues
``worker.jobs.rebuild_baseline(baseline_id)`` by name through :func:`schema.contract.enqueue`, with
the deployment's retry policy (``DashboardConfig.jobs``). That enqueue guarantees a rebuild that
starts after the commit: a finished or dead rebuild under the same id is replaced, a waiting one
suffices, and a running one (which may have read the database before this change) gets a follow-up
that runs after it. The worker's :func:`worker.baselines.rebuild` is the one place that re-derives
statistics and mirrors the decision onto the plain-unit evidence baseline; a second copy here would
drift from it. The dashboard never imports ``worker``. Until the job has run, :meth:`Store.baseline`
reports the baseline as ``stale`` (its stored count differs from its included contributions); if the
enqueue failed (Redis down), repeating the change enqueues it again, and ``painline sweep`` re-queues
the rebuild of every stale baseline with no live job. Scoring jobs enqueued after the rebuild run
after it (one FIFO queue), so no later call is scored against excluded data.

Flag changes are published on the deployment's flag channel (``DashboardConfig.flag_channel``, the
one the workers publish on), in the same ids-and-scores shape, so every nurse's live queue updates
when a colleague acknowledges or resolves.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from flask import Flask, current_app
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from analysis.baseline import RunningStats
from analysis.evidence import MEASURES, baseline_measures
from dashboard.config import DashboardConfig, config_of
from schema.audit import AuditDetailError, record
from schema.contract import EVIDENCE_BASELINE_EMBEDDER, JobName, enqueue, grow_job_id, rebuild_job_id
from schema.db import session_scope
from schema.identity import PatientKeyKind, key_kind
from schema.models import (
    AuditEvent,
    Baseline,
    BaselineContribution,
    Call,
    CallStatus,
    Flag,
    FlagLabel,
    FlagLevel,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    utcnow,
)

log = logging.getLogger(__name__)

LIVE_CALL_MAX_AGE = timedelta(hours=4)
"""A call still marked streaming after this long lost its stop event; it is not shown as live."""
QUEUE_LIMIT = 200
SEARCH_LIMIT = 50
AUDIT_PAGE_MAX = 500
NOTE_MAX_CHARS = 2000


class QueueSort(StrEnum):
    """The queue's sortable columns (``?sort=``)."""

    SEVERITY = "severity"  # the triage order: most severe flag first, unflagged live calls last
    RAISED = "raised"
    STARTED = "started"
    PATIENT = "patient"
    PROBABILITY = "probability"


class SortDirection(StrEnum):
    ASC = "asc"
    DESC = "desc"


class QueueState(StrEnum):
    """What a queue row is (``?state=``): an open flag, one a nurse has taken, or a live call with no flag."""

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    UNFLAGGED = "unflagged"


@dataclass(frozen=True)
class QueueView:
    """How the nurse asked to see the queue: sort column and direction, and filters (None: all).

    Parsed from the query string by :func:`dashboard.nurse.queue_view`, so the page, its live
    refresh and a bookmarked link show the same rows in the same order without JavaScript.
    """

    sort: QueueSort = QueueSort.SEVERITY
    direction: SortDirection = SortDirection.DESC
    level: FlagLevel | None = None
    state: QueueState | None = None
    patient: str = ""  # part of a hotline reference, or a caller's id

    @property
    def filtered(self) -> bool:
        return self.level is not None or self.state is not None or bool(self.patient)


def is_live(call: Call, now: datetime, stream_connect_s: float) -> bool:
    """Whether a call is shown as in progress: streaming, recent, and its stream connected (or may still).

    The webhook writes the call as ``streaming`` before Twilio opens the Media Stream; if the stream
    never connects (the caller hung up during the consent notice, Twilio could not reach us) nothing
    ends it but the sweep, hours later. So a call without a ``stream_sid`` counts as live only for
    ``stream_connect_s`` after the webhook. :func:`live_clause` is the same rule in SQL.
    """
    if call.status != CallStatus.STREAMING.value:
        return False
    started = call.started_at if call.started_at.tzinfo else call.started_at.replace(tzinfo=now.tzinfo)
    if started < now - LIVE_CALL_MAX_AGE:
        return False
    return call.stream_sid is not None or started >= now - timedelta(seconds=stream_connect_s)


def live_clause(now: datetime, stream_connect_s: float) -> ColumnElement[bool]:
    """:func:`is_live` as a SQL condition on :class:`Call`."""
    return and_(
        Call.status == CallStatus.STREAMING.value,
        Call.started_at >= now - LIVE_CALL_MAX_AGE,
        or_(Call.stream_sid.is_not(None), Call.started_at >= now - timedelta(seconds=stream_connect_s)),
    )


def _patient_condition(text: str) -> ColumnElement[bool]:
    """Rows whose patient's hotline reference contains ``text``, or whose caller id is ``text`` (``#12`` too)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    conditions: list[ColumnElement[bool]] = [Patient.key.ilike(f"ref:%{escaped}%", escape="\\")]
    digits = text.removeprefix("#").strip()
    if len(digits) <= 10 and digits.isdecimal() and int(digits) < 2**31:
        conditions.append(Call.patient_id == int(digits))
    return or_(*conditions)


def _stamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


_COLUMNS: dict[QueueSort, Callable[[dict[str, Any]], Any]] = {
    QueueSort.SEVERITY: lambda row: row["severity"],
    QueueSort.RAISED: lambda row: _stamp(row["raised_at"]),
    QueueSort.STARTED: lambda row: _stamp(row["started_at"]),
    QueueSort.PATIENT: lambda row: row["patient"].casefold(),
    QueueSort.PROBABILITY: lambda row: row["probability"],
}


def sort_rows(rows: list[dict[str, Any]], view: QueueView) -> list[dict[str, Any]]:
    """Merged flag and live rows in ``view``'s order; rows without a value (a live call has no
    severity) always come last, and equal values keep the triage tie-break: newest flag, then newest call.
    """
    rows = sorted(
        rows, key=lambda r: (-(_stamp(r["raised_at"]) or 0.0), -(_stamp(r["started_at"]) or 0.0), -r["call_id"])
    )
    column = _COLUMNS[view.sort]
    present = [r for r in rows if column(r) is not None]
    missing = [r for r in rows if column(r) is None]
    present.sort(key=column, reverse=view.direction is SortDirection.DESC)  # stable: ties keep the order above
    return present + missing


class NotFound(LookupError):
    """No such object (404)."""


class Conflict(RuntimeError):
    """The object is in a state that does not allow this change (409)."""


class Invalid(ValueError):
    """The request itself is wrong (400)."""


# ---------------------------------------------------------------------------------------------------
# small helpers


def patient_label(key: str | None, patient_id: int | None) -> str:
    """What a person sees for a patient: the hotline's reference, or a neutral id for number-keyed callers.

    ``hmac:`` keys are opaque and mean nothing to a nurse, so they are never shown.
    """
    if patient_id is None or key is None:
        return "unknown caller"
    if key.startswith("ref:"):
        return key[len("ref:") :]
    return f"caller #{patient_id}"


def patient_key_kind(key: str | None) -> PatientKeyKind | None:
    """Which identifier the patient is recognised by on calls, read from the key's prefix only.

    Admins need it to see why a baseline is not used (a patient enrolled by reference is not the one a
    call from their number reaches); the HMAC itself stays out of every page and answer.
    """
    return None if key is None else key_kind(key)


@lru_cache(maxsize=8)
def _card_threshold(card_file: str, mtime_ns: int) -> float | None:
    try:
        card = json.loads(Path(card_file).read_text())
        return float(card["threshold"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def configured_threshold(config: DashboardConfig) -> float | None:
    """The flag threshold the workers use: ``flag_threshold`` if set, else the model card's.

    Read from the card JSON beside the model file (``<stem>.card.json``) rather than through
    ``analysis.model``, which would load joblib into every web process.
    """
    if config.flag_threshold is not None:
        return config.flag_threshold
    model_path = config.model_path
    if model_path is None:
        return None
    card = Path(model_path).with_name(Path(model_path).stem + ".card.json")
    try:
        mtime = card.stat().st_mtime_ns
    except OSError:
        return None
    return _card_threshold(str(card), mtime)


def _flag_doc(flag: Flag | None) -> dict[str, Any] | None:
    if flag is None:
        return None
    return {
        "id": flag.id,
        "call_id": flag.call_id,
        "status": flag.status,
        "level": flag.level,
        "severity": flag.severity,
        "label": flag.label,
        "note": flag.note,
        "raised_at": flag.raised_at,
        "updated_at": flag.updated_at,
        "acknowledged_at": flag.acknowledged_at,
        "acknowledged_by": flag.acknowledged_by,
        "resolved_at": flag.resolved_at,
        "resolved_by": flag.resolved_by,
    }


def _model_baselines(session: Session, patient_ids: Iterable[int]) -> dict[int, Baseline]:
    """Each patient's current model baseline: the most recently updated one that is not the evidence one."""
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    rows = session.scalars(
        select(Baseline)
        .where(Baseline.patient_id.in_(ids), Baseline.embedder != EVIDENCE_BASELINE_EMBEDDER)
        .order_by(Baseline.patient_id, Baseline.updated_at.desc(), Baseline.id.desc())
    ).all()
    current: dict[int, Baseline] = {}
    for row in rows:
        current.setdefault(row.patient_id, row)
    return current


def baseline_status(session: Session, patient_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """Per patient with a non-empty baseline: utterances and calls it is built from (included only).

    Patients missing from the result have no baseline yet ("none yet" on the queue).
    """
    current = _model_baselines(session, patient_ids)
    if not current:
        return {}
    by_baseline = {b.id: pid for pid, b in current.items()}
    rows = session.execute(
        select(
            BaselineContribution.baseline_id,
            func.count(BaselineContribution.id),
            func.count(func.distinct(BaselineContribution.call_id)),
        )
        .where(BaselineContribution.baseline_id.in_(list(by_baseline)), BaselineContribution.included.is_(True))
        .group_by(BaselineContribution.baseline_id)
    ).all()
    out: dict[int, dict[str, Any]] = {}
    for baseline_id, n_utterances, n_calls in rows:
        if n_utterances:
            baseline = current[by_baseline[baseline_id]]
            out[by_baseline[baseline_id]] = {
                "baseline_id": baseline_id,
                "n_utterances": int(n_utterances),
                "n_calls": int(n_calls),
                "updated_at": baseline.updated_at,
                "model_version": baseline.model_version,
            }
    return out


# ---------------------------------------------------------------------------------------------------
# the store


@dataclass
class Store:
    """The dashboard's data access, bound to one app's session factory, queue and settings."""

    sessions: sessionmaker[Session]
    config: DashboardConfig
    queue: Queue | None = None
    redis: Redis | None = None

    @classmethod
    def for_app(cls, app: Flask | None = None) -> Store:
        app = app or current_app
        return cls(
            sessions=app.extensions["painline.sessions"],
            queue=app.extensions.get("painline.queue"),
            redis=app.extensions.get("painline.redis"),
            config=config_of(app),
        )

    # -- triage queue ------------------------------------------------------------------------------

    def queue_rows(
        self, actor: str | None, *, limit: int = QUEUE_LIMIT, view: QueueView | None = None
    ) -> list[dict[str, Any]]:
        """Open and acknowledged flags, then live unflagged calls, in ``view``'s order and filters.

        The default view is the triage order: most severe, then newest flag first, then live calls
        without a flag, newest first. Each row: call and flag ids, patient label, call start, verdict,
        probability, speech heard, flag level/status/raised time, who acknowledged it (its owner),
        whether the call is live (:func:`is_live`), and baseline status.
        """
        view = view or QueueView()
        now = utcnow()
        connect_s = self.config.stream_connect_s
        with session_scope(self.sessions) as session:
            statuses = [FlagStatus.OPEN.value, FlagStatus.ACKNOWLEDGED.value]
            if view.state is QueueState.OPEN:
                statuses = [FlagStatus.OPEN.value]
            elif view.state is QueueState.ACKNOWLEDGED:
                statuses = [FlagStatus.ACKNOWLEDGED.value]
            flagged: list[Any] = []
            if view.state is not QueueState.UNFLAGGED:
                stmt = (
                    select(Flag, Call, Patient)
                    .join(Call, Call.id == Flag.call_id)
                    .outerjoin(Patient, Patient.id == Call.patient_id)
                    .where(Flag.status.in_(statuses))
                )
                if view.level is not None:
                    stmt = stmt.where(Flag.level == view.level.value)
                if view.patient:
                    stmt = stmt.where(_patient_condition(view.patient))
                flagged = list(
                    session.execute(
                        stmt.order_by(Flag.severity.desc(), Flag.raised_at.desc(), Flag.id.desc()).limit(limit)
                    ).all()
                )
            live: list[Any] = []
            if view.level is None and view.state in (None, QueueState.UNFLAGGED):
                live_stmt = (
                    select(Call, Patient)
                    .outerjoin(Patient, Patient.id == Call.patient_id)
                    .outerjoin(Flag, Flag.call_id == Call.id)
                    .where(live_clause(now, connect_s), Flag.id.is_(None))
                )
                if view.patient:
                    live_stmt = live_stmt.where(_patient_condition(view.patient))
                live = list(
                    session.execute(live_stmt.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit)).all()
                )
            patient_ids = [c.patient_id for _, c, _ in flagged if c.patient_id] + [
                c.patient_id for c, _ in live if c.patient_id
            ]
            baselines = baseline_status(session, patient_ids)
            rows = [self._queue_row(call, patient, flag, baselines, now) for flag, call, patient in flagged]
            rows += [self._queue_row(call, patient, None, baselines, now) for call, patient in live]
            rows = sort_rows(rows, view)[:limit]
            if actor is not None:
                record(session, actor, "queue.view", "queue", "-", call_ids=[r["call_id"] for r in rows])
            return rows

    def _queue_row(
        self,
        call: Call,
        patient: Patient | None,
        flag: Flag | None,
        baselines: dict[int, dict[str, Any]],
        now: datetime,
    ) -> dict[str, Any]:
        return {
            "kind": "flag" if flag is not None else "live",
            "call_id": call.id,
            "flag_id": flag.id if flag is not None else None,
            "flag_status": flag.status if flag is not None else None,
            "level": flag.level if flag is not None else None,
            "severity": flag.severity if flag is not None else None,
            "raised_at": flag.raised_at if flag is not None else None,
            "acknowledged_at": flag.acknowledged_at if flag is not None else None,
            "acknowledged_by": flag.acknowledged_by if flag is not None else None,
            "patient_id": call.patient_id,
            "patient": patient_label(patient.key if patient else None, call.patient_id),
            "started_at": call.started_at,
            "call_status": call.status,
            "live": is_live(call, now, self.config.stream_connect_s),
            "verdict": call.verdict,
            "probability": call.call_score,
            "speech_s": call.speech_s,
            "baseline": baselines.get(call.patient_id) if call.patient_id else None,
        }

    # -- one call ----------------------------------------------------------------------------------

    def call(self, call_id: int, actor: str | None) -> dict[str, Any]:
        """A call with its utterance scores, threshold, verdict, evidence, speaker checks and flag."""
        with session_scope(self.sessions) as session:
            call = session.get(Call, call_id)
            if call is None:
                raise NotFound(f"no call {call_id}")
            patient = session.get(Patient, call.patient_id) if call.patient_id else None
            flag = session.scalars(select(Flag).where(Flag.call_id == call_id)).one_or_none()
            evidence = call.evidence or None
            model_version = (evidence or {}).get("model_version")
            score_rows = session.execute(
                select(Utterance, Score)
                .outerjoin(Score, Score.utterance_id == Utterance.id)
                .where(Utterance.call_id == call_id)
                .order_by(Utterance.seq, Score.created_at.desc(), Score.id.desc())
            ).all()
            utterances: dict[int, dict[str, Any]] = {}
            for utterance, score in score_rows:
                doc = utterances.get(utterance.id)
                better = score is not None and (
                    doc is None
                    or doc["model_version"] is None
                    or (model_version is not None and score.model_version == model_version)
                )
                if doc is not None and not better:
                    continue
                utterances[utterance.id] = {
                    "id": utterance.id,
                    "seq": utterance.seq,
                    "start_ms": utterance.start_ms,
                    "end_ms": utterance.end_ms,
                    "speech_s": utterance.speech_s,
                    "status": utterance.status,
                    "probability": score.probability if score else None,
                    "speaker_similarity": score.speaker_similarity if score else None,
                    "baseline_applied": bool(score.baseline_applied) if score else False,
                    "baseline_n": score.baseline_n if score else 0,
                    "model_version": score.model_version if score else None,
                }
            threshold = (evidence or {}).get("threshold")
            if threshold is None:
                threshold = configured_threshold(self.config)
            baselines = baseline_status(session, [call.patient_id] if call.patient_id else [])
            doc = {
                "call": {
                    "id": call.id,
                    "started_at": call.started_at,
                    "ended_at": call.ended_at,
                    "status": call.status,
                    "live": is_live(call, utcnow(), self.config.stream_connect_s),
                    "verdict": call.verdict,
                    "probability": call.call_score,
                    "speech_s": call.speech_s,
                    "consent": call.consent,
                    "stream_status": call.stream_status,
                },
                "patient": (
                    {"id": call.patient_id, "label": patient_label(patient.key if patient else None, call.patient_id)}
                    if call.patient_id
                    else None
                ),
                "flag": _flag_doc(flag),
                "threshold": threshold,
                "utterances": sorted(utterances.values(), key=lambda u: u["seq"]),
                "evidence": evidence,
                "speaker_check": {
                    "checked": sum(1 for u in utterances.values() if u["speaker_similarity"] is not None),
                    "mismatches": (evidence or {}).get("speaker_mismatches"),
                },
                "baseline": baselines.get(call.patient_id) if call.patient_id else None,
            }
            if actor is not None:
                record(session, actor, "call.view", "call", call_id, patient_id=call.patient_id)
            return doc

    # -- flags -------------------------------------------------------------------------------------

    def acknowledge_flag(self, flag_id: int, actor: str) -> dict[str, Any]:
        """Mark a flag as seen by ``actor``; acknowledging twice keeps the first acknowledgement."""
        with session_scope(self.sessions) as session:
            flag = session.scalars(select(Flag).where(Flag.id == flag_id).with_for_update()).one_or_none()
            if flag is None:
                raise NotFound(f"no flag {flag_id}")
            if flag.status == FlagStatus.RESOLVED.value:
                raise Conflict(f"flag {flag_id} is already resolved")
            if flag.status == FlagStatus.OPEN.value:
                now = utcnow()
                flag.status = FlagStatus.ACKNOWLEDGED.value
                flag.acknowledged_at = now
                flag.acknowledged_by = actor
                flag.updated_at = now
                record(session, actor, "flag.acknowledge", "flag", flag_id, call_id=flag.call_id)
            doc = _flag_doc(flag)
        self._publish("flag.acknowledged", doc)
        return doc  # type: ignore[return-value]

    def resolve_flag(self, flag_id: int, actor: str, label: str, note: str | None = None) -> dict[str, Any]:
        """Close a flag with the nurse's label and note; ``no_pain`` enqueues the baseline growth job.

        Only the call id goes to the job; the worker applies the baseline policy (it waits for the
        call to be finalised, and only takes utterances that pass the speaker check). A resolved flag
        cannot be resolved again: a wrong ``no_pain`` is corrected by excluding its contributions.
        Returns the flag plus ``grow_job`` (the enqueued job id, or None).
        """
        if label not in {member.value for member in FlagLabel}:
            raise Invalid(f"label must be one of: {', '.join(m.value for m in FlagLabel)}")
        note = (note or "").strip() or None
        if note is not None and len(note) > NOTE_MAX_CHARS:
            raise Invalid(f"note is longer than {NOTE_MAX_CHARS} characters")
        with session_scope(self.sessions) as session:
            flag = session.scalars(select(Flag).where(Flag.id == flag_id).with_for_update()).one_or_none()
            if flag is None:
                raise NotFound(f"no flag {flag_id}")
            if flag.status == FlagStatus.RESOLVED.value:
                raise Conflict(f"flag {flag_id} is already resolved")
            now = utcnow()
            if flag.acknowledged_at is None:
                flag.acknowledged_at = now
                flag.acknowledged_by = actor
            flag.status = FlagStatus.RESOLVED.value
            flag.label = label
            flag.note = note
            flag.resolved_at = now
            flag.resolved_by = actor
            flag.updated_at = now
            # the note is free text and may hold anything: the audit row records only its length
            record(
                session,
                actor,
                "flag.resolve",
                "flag",
                flag_id,
                call_id=flag.call_id,
                label=label,
                note_chars=len(note or ""),
            )
            call_id = flag.call_id
            doc = _flag_doc(flag)
        assert doc is not None
        grow_job = None
        if label == FlagLabel.NO_PAIN.value:
            job_id = grow_job_id(call_id)
            queued = enqueue(self.queue, JobName.GROW_BASELINE, call_id, job_id=job_id, options=self.config.jobs)
            grow_job = job_id if queued.ok else None
        self._publish("flag.resolved", doc)
        return {**doc, "grow_job": grow_job}

    def _publish(self, event: str, flag: dict[str, Any] | None) -> None:
        if self.redis is None or flag is None:
            return
        message = {
            "event": event,
            "flag_id": flag["id"],
            "call_id": flag["call_id"],
            "level": flag["level"],
            "severity": round(float(flag["severity"]), 4),
            "status": flag["status"],
            "sent_at": int(utcnow().timestamp()),
        }
        try:
            self.redis.publish(self.config.flag_channel, json.dumps(message, sort_keys=True, separators=(",", ":")))
        except (RedisError, OSError) as exc:
            log.warning("flag %s: publish failed (%s)", flag["id"], type(exc).__name__)

    # -- patients and baselines --------------------------------------------------------------------

    def search_patients(self, q: str, actor: str | None, *, limit: int = SEARCH_LIMIT) -> list[dict[str, Any]]:
        """Patients whose hotline reference contains ``q`` (or whose id is ``q``), newest call first.

        Number-keyed patients are found by id only: their key is an HMAC, unsearchable by design.
        The audit row records the query's length and the ids shown, not the query itself.
        """
        q = (q or "").strip()
        with session_scope(self.sessions) as session:
            last_call = (
                select(
                    Call.patient_id,
                    func.max(Call.started_at).label("last_call_at"),
                    func.count(Call.id).label("calls"),
                )
                .group_by(Call.patient_id)
                .subquery()
            )
            stmt = select(Patient, last_call.c.last_call_at, last_call.c.calls).outerjoin(
                last_call, last_call.c.patient_id == Patient.id
            )
            if q:
                escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                conditions: list[ColumnElement[bool]] = [Patient.key.ilike(f"ref:%{escaped}%", escape="\\")]
                # isdecimal: int() refuses digits like "²" that isdigit() accepts; ids are PostgreSQL integers
                if len(q) <= 10 and q.isdecimal() and int(q) < 2**31:
                    conditions.append(Patient.id == int(q))
                stmt = stmt.where(or_(*conditions))
            rows = session.execute(
                stmt.order_by(last_call.c.last_call_at.desc().nulls_last(), Patient.id.desc()).limit(limit)
            ).all()
            baselines = baseline_status(session, [p.id for p, _, _ in rows])
            out = [
                {
                    "id": patient.id,
                    "label": patient_label(patient.key, patient.id),
                    "key_kind": patient_key_kind(patient.key),
                    "created_at": patient.created_at,
                    "last_call_at": last_call_at,
                    "calls": int(calls or 0),
                    "baseline": baselines.get(patient.id),
                }
                for patient, last_call_at, calls in rows
            ]
            if actor is not None:
                record(
                    session,
                    actor,
                    "patient.search",
                    "patient",
                    "-",
                    query_chars=len(q),
                    patient_ids=[p["id"] for p in out],
                )
            return out

    def baseline(self, patient_id: int, actor: str | None) -> dict[str, Any]:
        """A patient's baselines with every contribution, and plain-unit measures against everyone's.

        ``baselines`` lists the model baselines, current (most recently updated) first; each has its
        contributions (newest first), counts and ``stale`` (a rebuild is pending). ``measures`` is the
        evidence baseline's mean and spread per measure (pitch in semitones, loudness in dB, jitter,
        shimmer, HNR, ...) beside the population's: the mean over every patient's own evidence mean,
        so callers heard often do not dominate it.
        """
        with session_scope(self.sessions) as session:
            patient = session.get(Patient, patient_id)
            if patient is None:
                raise NotFound(f"no patient {patient_id}")
            rows = session.scalars(
                select(Baseline)
                .where(Baseline.patient_id == patient_id)
                .order_by(Baseline.updated_at.desc(), Baseline.id.desc())
            ).all()
            model_rows = [b for b in rows if b.embedder != EVIDENCE_BASELINE_EMBEDDER]
            evidence_row = next((b for b in rows if b.embedder == EVIDENCE_BASELINE_EMBEDDER), None)
            contributions = session.execute(
                select(
                    BaselineContribution.id,
                    BaselineContribution.baseline_id,
                    BaselineContribution.utterance_id,
                    BaselineContribution.call_id,
                    BaselineContribution.source,
                    BaselineContribution.included,
                    BaselineContribution.created_at,
                )
                .where(BaselineContribution.baseline_id.in_([b.id for b in model_rows] or [-1]))
                .order_by(BaselineContribution.created_at.desc(), BaselineContribution.id.desc())
            ).all()
            by_baseline: dict[int, list[dict[str, Any]]] = {b.id: [] for b in model_rows}
            for c in contributions:
                by_baseline[c.baseline_id].append(
                    {
                        "id": c.id,
                        "utterance_id": c.utterance_id,
                        "call_id": c.call_id,
                        "source": c.source,
                        "included": bool(c.included),
                        "created_at": c.created_at,
                    }
                )
            baselines = []
            for b in model_rows:
                items = by_baseline[b.id]
                included = [c for c in items if c["included"]]
                baselines.append(
                    {
                        "id": b.id,
                        "embedder": b.embedder,
                        "model_version": b.model_version,
                        "count": b.count,
                        "updated_at": b.updated_at,
                        "n_utterances": len(included),
                        "n_calls": len({c["call_id"] for c in included if c["call_id"] is not None}),
                        "n_excluded": len(items) - len(included),
                        "stale": b.count != len(included),
                        "contributions": items,
                    }
                )
            doc = {
                "patient": {
                    "id": patient.id,
                    "label": patient_label(patient.key, patient.id),
                    "key_kind": patient_key_kind(patient.key),
                    "created_at": patient.created_at,
                },
                "baselines": baselines,
                "measures": self._measures(session, evidence_row),
            }
            if actor is not None:
                record(
                    session, actor, "baseline.view", "patient", patient_id, baseline_ids=[b["id"] for b in baselines]
                )
            return doc

    @staticmethod
    def _measures(session: Session, evidence_row: Baseline | None) -> list[dict[str, Any]]:
        mine_mean: dict[str, float] = {}
        mine_spread: dict[str, float] = {}
        n = 0
        if evidence_row is not None and evidence_row.count > 0:
            try:
                mine_mean, mine_spread = baseline_measures(RunningStats.from_dict(evidence_row.stats))
                n = evidence_row.count
            except (ValueError, KeyError):
                log.warning("baseline %s: evidence statistics unreadable", evidence_row.id)
        population: dict[str, list[float]] = {m.key: [] for m in MEASURES}
        for stats in session.scalars(
            select(Baseline.stats).where(Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER, Baseline.count > 0)
        ):
            try:
                mean, _ = baseline_measures(RunningStats.from_dict(stats))
            except (ValueError, KeyError):
                continue
            for key, value in mean.items():
                population[key].append(value)
        out = []
        for m in MEASURES:
            values = population[m.key]
            pop_mean = sum(values) / len(values) if values else None
            pop_sd = None
            if len(values) > 1 and pop_mean is not None:
                pop_sd = (sum((v - pop_mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
            out.append(
                {
                    "key": m.key,
                    "label": m.label,
                    "unit": m.unit,
                    "patient_mean": mine_mean.get(m.key),
                    "patient_sd": mine_spread.get(m.key),
                    "patient_n": n,
                    "population_mean": pop_mean,
                    "population_sd": pop_sd,
                    "population_patients": len(values),
                }
            )
        return out

    def set_contribution_included(self, contribution_id: int, included: bool, actor: str) -> dict[str, Any]:
        """Exclude or re-include one contribution, audit it, and enqueue its baseline's rebuild.

        Repeating the same decision changes nothing but enqueues the rebuild again (the remedy if
        Redis was down the first time). Returns the contribution, its baseline and ``rebuild_job``.
        """
        with session_scope(self.sessions) as session:
            row = session.execute(
                select(BaselineContribution, Baseline)
                .join(Baseline, Baseline.id == BaselineContribution.baseline_id)
                .where(BaselineContribution.id == contribution_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no contribution {contribution_id}")
            contribution, baseline = row
            if baseline.embedder == EVIDENCE_BASELINE_EMBEDDER:
                raise Invalid("evidence-baseline contributions follow their model twins; change the model baseline's")
            changed = bool(contribution.included) != included
            contribution.included = included
            record(
                session,
                actor,
                "baseline.include" if included else "baseline.exclude",
                "patient",
                baseline.patient_id,
                contribution_id=contribution_id,
                baseline_id=baseline.id,
                changed=changed,
            )
            baseline_id = baseline.id
            patient_id = baseline.patient_id
        job_id = rebuild_job_id(baseline_id)
        queued = enqueue(self.queue, JobName.REBUILD_BASELINE, baseline_id, job_id=job_id, options=self.config.jobs).ok
        return {
            "contribution_id": contribution_id,
            "baseline_id": baseline_id,
            "patient_id": patient_id,
            "included": included,
            "changed": changed,
            "rebuild_job": job_id if queued else None,
        }

    def reset_baseline(self, patient_id: int, actor: str) -> dict[str, Any]:
        """Exclude every contribution of the patient's model baselines, then enqueue their rebuilds.

        Exclusion rather than deletion keeps the decision reversible (an admin may re-include what
        was good) and auditable; the baseline then grows again from enrolment and resolved calls.
        """
        with session_scope(self.sessions) as session:
            if session.get(Patient, patient_id) is None:
                raise NotFound(f"no patient {patient_id}")
            baseline_ids = list(
                session.scalars(
                    select(Baseline.id).where(
                        Baseline.patient_id == patient_id, Baseline.embedder != EVIDENCE_BASELINE_EMBEDDER
                    )
                )
            )
            excluded = 0
            if baseline_ids:
                for contribution in session.scalars(
                    select(BaselineContribution).where(
                        BaselineContribution.baseline_id.in_(baseline_ids), BaselineContribution.included.is_(True)
                    )
                ):
                    contribution.included = False
                    excluded += 1
            record(
                session, actor, "baseline.reset", "patient", patient_id, baseline_ids=baseline_ids, excluded=excluded
            )
        jobs = []
        for baseline_id in baseline_ids:
            job_id = rebuild_job_id(baseline_id)
            if enqueue(self.queue, JobName.REBUILD_BASELINE, baseline_id, job_id=job_id, options=self.config.jobs).ok:
                jobs.append(job_id)
        return {"patient_id": patient_id, "baseline_ids": baseline_ids, "excluded": excluded, "rebuild_jobs": jobs}

    # -- audit log ---------------------------------------------------------------------------------

    def audit_log(
        self,
        actor: str | None,
        *,
        by: str | None = None,
        action: str | None = None,
        object_type: str | None = None,
        object_id: str | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Audit events newest first, filtered by exact actor (``by``), action, object type and id.

        Paged by id: pass ``next_before_id`` back as ``before_id`` for the next page. Reading the
        audit log is itself recorded, with the filters used.
        """
        limit = max(1, min(int(limit), AUDIT_PAGE_MAX))
        with session_scope(self.sessions) as session:
            stmt = select(AuditEvent)
            if by:
                stmt = stmt.where(AuditEvent.actor == by)
            if action:
                stmt = stmt.where(AuditEvent.action == action)
            if object_type:
                stmt = stmt.where(AuditEvent.object_type == object_type)
            if object_id:
                stmt = stmt.where(AuditEvent.object_id == object_id)
            if before_id is not None:
                stmt = stmt.where(AuditEvent.id < before_id)
            events = session.scalars(stmt.order_by(AuditEvent.id.desc()).limit(limit + 1)).all()
            more = len(events) > limit
            events = events[:limit]
            doc = {
                "events": [
                    {
                        "id": e.id,
                        "at": e.at,
                        "actor": e.actor,
                        "action": e.action,
                        "object_type": e.object_type,
                        "object_id": e.object_id,
                        "detail": e.detail,
                    }
                    for e in events
                ],
                "next_before_id": events[-1].id if more and events else None,
            }
            if actor is not None:
                filters = {"actor": by, "action": action, "object_type": object_type, "object_id": object_id}
                used = {k: auditable(v) for k, v in filters.items() if v}
                record(session, actor, "audit.view", "audit", "-", filters=used, shown=len(events))
            return doc


class _NullSink:
    """Stands in for a session so :func:`schema.audit.record` can vet a value without writing it."""

    def add(self, _event: Any) -> None:
        return None


WITHHELD = "(withheld)"


def auditable(value: Any) -> Any:
    """``value`` if the audit trail accepts it, else :data:`WITHHELD` (e.g. a filter shaped like a phone number).

    Lets a read record what was asked for without the audit write failing, and so the read, over
    one number-like search term.
    """
    try:
        record(_NullSink(), "-", "-", "-", "-", value=value)  # type: ignore[arg-type]
    except AuditDetailError:
        return WITHHELD
    return value


def isoformat(value: Any) -> Any:
    """Recursively turn datetimes into ISO 8601 strings, for JSON answers."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: isoformat(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [isoformat(v) for v in value]
    return value


__all__ = [
    "Conflict",
    "Invalid",
    "NotFound",
    "QueueSort",
    "QueueState",
    "QueueView",
    "SortDirection",
    "Store",
    "auditable",
    "baseline_status",
    "configured_threshold",
    "is_live",
    "isoformat",
    "live_clause",
    "patient_key_kind",
    "patient_label",
    "sort_rows",
]
