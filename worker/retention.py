"""Retention: delete call audio nobody scored and per-utterance data past its time, and audit each sweep.

Two limits (``PAINLINE_AUDIO_RETENTION_HOURS``, ``PAINLINE_SCORE_RETENTION_DAYS``):

- **Audio** (:class:`~schema.models.UtteranceAudio`). Scoring deletes an utterance's audio in the
  same transaction that stores its score (``worker.jobs.score_utterance``), so audio only outlives
  that when scoring never succeeded: the job failed for good, or no worker ran. After
  ``audio_hours`` that audio is deleted and a still-pending utterance is marked ``skipped``, so the
  outbox sweep stops re-enqueuing it and ``finalise_call`` stops waiting for it. Default 24 h: long
  enough to ride out a worker outage, short enough that raw voice recordings never pile up.
- **Per-utterance rows** (:class:`~schema.models.Utterance` and its :class:`~schema.models.Score`,
  embedding and voice measures included). After ``score_days`` they are deleted. What is kept: the
  :class:`~schema.models.Call` row (verdict, call score, evidence summary), its
  :class:`~schema.models.Flag` with the nurse's label, who acknowledged and resolved it and when,
  and every :class:`~schema.models.AuditEvent`: the record of what the service told nurses and what
  they did about it outlives the raw material. Baselines keep their contributions (each holds its
  own copy of the embedding; its ``utterance_id`` becomes NULL), because a patient's baseline is
  managed by admins, not by age. Default 365 days.

Each sweep deletes in batches (short transactions: live calls keep writing meanwhile) and writes one
:class:`~schema.models.AuditEvent` (action ``retention.sweep``) with the counts and the limits, never
an id or a caller detail, even when nothing was due: the audit trail then shows that retention ran.
Running it twice is harmless; the second run finds nothing.

Scheduling: ``painline retention --every 3600`` (a long-running loop for a process manager or a
docker-compose service), or ``painline retention`` once from cron.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import CursorResult, Delete, Update, delete, select, update
from sqlalchemy.orm import Session

from schema.audit import record
from schema.db import session_scope
from schema.models import Score, Utterance, UtteranceAudio, UtteranceStatus, utcnow

log = logging.getLogger(__name__)

DEFAULT_AUDIO_HOURS = 24.0
DEFAULT_SCORE_DAYS = 365.0
BATCH = 500


@dataclass(frozen=True)
class RetentionResult:
    """What one sweep deleted (counts only)."""

    audio_deleted: int
    utterances_skipped: int
    utterances_deleted: int
    scores_deleted: int


def _rowcount(session: Session, statement: Delete | Update) -> int:
    """Run one bulk DELETE or UPDATE and return how many rows it matched."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult)  # what a DML statement without RETURNING gives
    return result.rowcount


def sweep_retention(
    sessions: Callable[[], Session],
    *,
    audio_hours: float = DEFAULT_AUDIO_HOURS,
    score_days: float = DEFAULT_SCORE_DAYS,
    actor: str = "retention",
    now: datetime | None = None,
    batch_size: int = BATCH,
) -> RetentionResult:
    """One retention pass (see the module docstring); returns the counts it also audits."""
    if audio_hours <= 0 or score_days <= 0:
        raise ValueError("retention limits must be positive")
    now = now or utcnow()
    audio_cutoff = now - timedelta(hours=audio_hours)
    score_cutoff = now - timedelta(days=score_days)

    audio_deleted = skipped = 0
    while True:
        with session_scope(sessions) as session:
            ids = session.scalars(
                select(UtteranceAudio.utterance_id)
                .join(Utterance, Utterance.id == UtteranceAudio.utterance_id)
                .where(Utterance.created_at < audio_cutoff)
                .order_by(UtteranceAudio.utterance_id)
                .limit(batch_size)
            ).all()
            if not ids:
                break
            audio_deleted += _rowcount(session, delete(UtteranceAudio).where(UtteranceAudio.utterance_id.in_(ids)))
            skipped += _rowcount(
                session,
                update(Utterance)
                .where(Utterance.id.in_(ids), Utterance.status == UtteranceStatus.PENDING.value)
                .values(status=UtteranceStatus.SKIPPED.value),
            )

    utterances_deleted = scores_deleted = 0
    while True:
        with session_scope(sessions) as session:
            ids = session.scalars(
                select(Utterance.id).where(Utterance.created_at < score_cutoff).order_by(Utterance.id).limit(batch_size)
            ).all()
            if not ids:
                break
            # explicit deletes (rather than only ON DELETE CASCADE) so the audit row can say how many
            scores_deleted += _rowcount(session, delete(Score).where(Score.utterance_id.in_(ids)))
            session.execute(delete(UtteranceAudio).where(UtteranceAudio.utterance_id.in_(ids)))
            utterances_deleted += _rowcount(session, delete(Utterance).where(Utterance.id.in_(ids)))

    result = RetentionResult(audio_deleted, skipped, utterances_deleted, scores_deleted)
    with session_scope(sessions) as session:
        record(
            session,
            actor,
            "retention.sweep",
            "retention",
            "-",
            audio_deleted=result.audio_deleted,
            utterances_skipped=result.utterances_skipped,
            utterances_deleted=result.utterances_deleted,
            scores_deleted=result.scores_deleted,
            audio_hours=audio_hours,
            score_days=score_days,
        )
    return result


__all__ = ["DEFAULT_AUDIO_HOURS", "DEFAULT_SCORE_DAYS", "RetentionResult", "sweep_retention"]
