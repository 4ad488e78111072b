"""The triage queue and the flags on it: what nurses see first, and their acknowledge and resolve.

Flag changes are published on the deployment's flag channel (``DashboardConfig.flag_channel``, the
one the workers publish on), in the same ids-and-scores shape, so every nurse's live queue updates
when a colleague acknowledges or resolves. Resolving with ``no_pain`` enqueues
``worker.jobs.grow_baseline_from_call`` by name; the worker applies the baseline policy.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from enum import StrEnum

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, or_, select

from dashboard.store.base import (
    Backends,
    Conflict,
    Invalid,
    NotFound,
    is_live,
    like_pattern,
    live_clause,
    patient_label,
    row_id_of,
)
from dashboard.store.patients import BaselineStatus, baseline_status
from schema.audit import record
from schema.contract import JobName, enqueue, grow_job_id
from schema.db import session_scope
from schema.models import Call, Flag, FlagLabel, FlagLevel, FlagStatus, Patient, utcnow

log = logging.getLogger(__name__)

QUEUE_LIMIT = 200
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


# ---------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class QueueRow:
    """One queue row: an open or acknowledged flag (``kind`` "flag"), or a live unflagged call ("live")."""

    kind: str
    call_id: int
    flag_id: int | None
    flag_status: str | None
    level: str | None
    severity: float | None
    raised_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    patient_id: int | None
    patient: str  # the hotline's reference, or "caller #<id>"
    started_at: datetime
    call_status: str
    live: bool
    verdict: str
    probability: float | None
    speech_s: float
    baseline: BaselineStatus | None


@dataclass(frozen=True)
class FlagRecord:
    """A flag as nurses and the API see it (schema ``Flag``)."""

    id: int
    call_id: int
    status: str
    level: str
    severity: float
    label: str | None
    note: str | None
    raised_at: datetime
    updated_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None

    @classmethod
    def of(cls, flag: Flag) -> FlagRecord:
        return cls(
            id=flag.id,
            call_id=flag.call_id,
            status=flag.status,
            level=flag.level,
            severity=flag.severity,
            label=flag.label,
            note=flag.note,
            raised_at=flag.raised_at,
            updated_at=flag.updated_at,
            acknowledged_at=flag.acknowledged_at,
            acknowledged_by=flag.acknowledged_by,
            resolved_at=flag.resolved_at,
            resolved_by=flag.resolved_by,
        )


@dataclass(frozen=True)
class ResolvedFlag(FlagRecord):
    """A resolved flag and the baseline-growth job its ``no_pain`` label enqueued (None: none, or queue down)."""

    grow_job: str | None = None


# ---------------------------------------------------------------------------------------------------
# sorting


def _patient_condition(text: str) -> ColumnElement[bool]:
    """Rows whose patient's hotline reference contains ``text``, or whose caller id is ``text`` (``#12`` too)."""
    conditions: list[ColumnElement[bool]] = [Patient.key.ilike(f"ref:%{like_pattern(text)}%", escape="\\")]
    if (patient_id := row_id_of(text.removeprefix("#").strip())) is not None:
        conditions.append(Call.patient_id == patient_id)
    return or_(*conditions)


def _stamp(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


_COLUMNS: dict[QueueSort, Callable[[QueueRow], float | str | None]] = {
    QueueSort.SEVERITY: lambda row: row.severity,
    QueueSort.RAISED: lambda row: _stamp(row.raised_at),
    QueueSort.STARTED: lambda row: _stamp(row.started_at),
    QueueSort.PATIENT: lambda row: row.patient.casefold(),
    QueueSort.PROBABILITY: lambda row: row.probability,
}


def sort_rows(rows: list[QueueRow], view: QueueView) -> list[QueueRow]:
    """Merged flag and live rows in ``view``'s order; rows without a value (a live call has no
    severity) always come last, and equal values keep the triage tie-break: newest flag, then newest call.
    """
    rows = sorted(rows, key=lambda r: (-(_stamp(r.raised_at) or 0.0), -(_stamp(r.started_at) or 0.0), -r.call_id))
    column = _COLUMNS[view.sort]
    present = [r for r in rows if column(r) is not None]
    missing = [r for r in rows if column(r) is None]
    present.sort(key=column, reverse=view.direction is SortDirection.DESC)  # type: ignore[arg-type]
    return present + missing


# ---------------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class FlagsQueueStore:
    backends: Backends

    def queue_rows(
        self, actor: str | None, *, limit: int = QUEUE_LIMIT, view: QueueView | None = None
    ) -> list[QueueRow]:
        """Open and acknowledged flags, then live unflagged calls, in ``view``'s order and filters.

        The default view is the triage order: most severe, then newest flag first, then live calls
        without a flag, newest first. Each row says whether the call is live (:func:`is_live`) and
        who acknowledged its flag (its owner).
        """
        view = view or QueueView()
        now = utcnow()
        connect_s = self.backends.config.stream_connect_s
        with session_scope(self.backends.sessions) as session:
            statuses = [FlagStatus.OPEN.value, FlagStatus.ACKNOWLEDGED.value]
            if view.state is QueueState.OPEN:
                statuses = [FlagStatus.OPEN.value]
            elif view.state is QueueState.ACKNOWLEDGED:
                statuses = [FlagStatus.ACKNOWLEDGED.value]
            flagged: list[tuple[Flag, Call, Patient | None]] = []
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
                flagged = [
                    (flag, call, patient)
                    for flag, call, patient in session.execute(
                        stmt.order_by(Flag.severity.desc(), Flag.raised_at.desc(), Flag.id.desc()).limit(limit)
                    )
                ]
            live: list[tuple[Call, Patient | None]] = []
            if view.level is None and view.state in (None, QueueState.UNFLAGGED):
                live_stmt = (
                    select(Call, Patient)
                    .outerjoin(Patient, Patient.id == Call.patient_id)
                    .outerjoin(Flag, Flag.call_id == Call.id)
                    .where(live_clause(now, connect_s), Flag.id.is_(None))
                )
                if view.patient:
                    live_stmt = live_stmt.where(_patient_condition(view.patient))
                live = [
                    (call, patient)
                    for call, patient in session.execute(
                        live_stmt.order_by(Call.started_at.desc(), Call.id.desc()).limit(limit)
                    )
                ]
            patient_ids = [c.patient_id for _, c, _ in flagged if c.patient_id] + [
                c.patient_id for c, _ in live if c.patient_id
            ]
            baselines = baseline_status(session, patient_ids)
            rows = [self._queue_row(call, patient, flag, baselines, now) for flag, call, patient in flagged]
            rows += [self._queue_row(call, patient, None, baselines, now) for call, patient in live]
            rows = sort_rows(rows, view)[:limit]
            if actor is not None:
                record(session, actor, "queue.view", "queue", "-", call_ids=[r.call_id for r in rows])
            return rows

    def _queue_row(
        self,
        call: Call,
        patient: Patient | None,
        flag: Flag | None,
        baselines: dict[int, BaselineStatus],
        now: datetime,
    ) -> QueueRow:
        return QueueRow(
            kind="flag" if flag is not None else "live",
            call_id=call.id,
            flag_id=flag.id if flag is not None else None,
            flag_status=flag.status if flag is not None else None,
            level=flag.level if flag is not None else None,
            severity=flag.severity if flag is not None else None,
            raised_at=flag.raised_at if flag is not None else None,
            acknowledged_at=flag.acknowledged_at if flag is not None else None,
            acknowledged_by=flag.acknowledged_by if flag is not None else None,
            patient_id=call.patient_id,
            patient=patient_label(patient.key if patient else None, call.patient_id),
            started_at=call.started_at,
            call_status=call.status,
            live=is_live(call, now, self.backends.config.stream_connect_s),
            verdict=call.verdict,
            probability=call.call_score,
            speech_s=call.speech_s,
            baseline=baselines.get(call.patient_id) if call.patient_id else None,
        )

    def acknowledge_flag(self, flag_id: int, actor: str) -> FlagRecord:
        """Mark a flag as seen by ``actor``; acknowledging twice keeps the first acknowledgement."""
        with session_scope(self.backends.sessions) as session:
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
            doc = FlagRecord.of(flag)
        self._publish("flag.acknowledged", doc)
        return doc

    def resolve_flag(self, flag_id: int, actor: str, label: str, note: str | None = None) -> ResolvedFlag:
        """Close a flag with the nurse's label and note; ``no_pain`` enqueues the baseline growth job.

        Only the call id goes to the job; the worker applies the baseline policy (it waits for the
        call to be finalised, and only takes utterances that pass the speaker check). A resolved flag
        cannot be resolved again: a wrong ``no_pain`` is corrected by excluding its contributions.
        """
        if label not in {member.value for member in FlagLabel}:
            raise Invalid(f"label must be one of: {', '.join(m.value for m in FlagLabel)}")
        note = (note or "").strip() or None
        if note is not None and len(note) > NOTE_MAX_CHARS:
            raise Invalid(f"note is longer than {NOTE_MAX_CHARS} characters")
        with session_scope(self.backends.sessions) as session:
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
            doc = FlagRecord.of(flag)
        grow_job = None
        if label == FlagLabel.NO_PAIN.value:
            job_id = grow_job_id(doc.call_id)
            options = self.backends.config.jobs
            queued = enqueue(self.backends.queue, JobName.GROW_BASELINE, doc.call_id, job_id=job_id, options=options)
            grow_job = job_id if queued.ok else None
        self._publish("flag.resolved", doc)
        return ResolvedFlag(**asdict(doc), grow_job=grow_job)

    def _publish(self, event: str, flag: FlagRecord) -> None:
        redis = self.backends.redis
        if redis is None:
            return
        message = {
            "event": event,
            "flag_id": flag.id,
            "call_id": flag.call_id,
            "level": flag.level,
            "severity": round(float(flag.severity), 4),
            "status": flag.status,
            "sent_at": int(utcnow().timestamp()),
        }
        try:
            redis.publish(self.backends.config.flag_channel, json.dumps(message, sort_keys=True, separators=(",", ":")))
        except (RedisError, OSError) as exc:
            log.warning("flag %s: publish failed (%s)", flag.id, type(exc).__name__)


__all__ = [
    "NOTE_MAX_CHARS",
    "QUEUE_LIMIT",
    "FlagRecord",
    "FlagsQueueStore",
    "QueueRow",
    "QueueSort",
    "QueueState",
    "QueueView",
    "ResolvedFlag",
    "SortDirection",
    "sort_rows",
]
