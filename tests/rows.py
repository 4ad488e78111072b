"""Row builders shared by the database-backed tests: one utterance, its score, a flag.

Each adds the row to the session, flushes (so its id is set) and returns it; what a test cares about
is a parameter, the rest takes the values the tests have always used.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from schema.models import Flag, FlagStatus, Score, Utterance, UtteranceStatus


def add_utterance_row(
    s: Session,
    call_id: int,
    seq: int,
    *,
    step_ms: int,
    length_ms: int,
    status: str = UtteranceStatus.SCORED.value,
    created_at: datetime | None = None,
) -> Utterance:
    """Utterance ``seq`` of a call, starting ``seq * step_ms`` in and ``length_ms`` long (all of it speech)."""
    extra: dict[str, Any] = {} if created_at is None else {"created_at": created_at}
    u = Utterance(
        call_id=call_id,
        seq=seq,
        start_ms=seq * step_ms,
        end_ms=seq * step_ms + length_ms,
        speech_s=length_ms / 1000.0,
        status=status,
        **extra,
    )
    s.add(u)
    s.flush()
    return u


def add_score_row(
    s: Session,
    utterance_id: int,
    *,
    model_version: str,
    probability: float,
    embedding: bytes = b"\0" * 16,
    **extra: Any,
) -> Score:
    """A score of an utterance; ``extra`` sets any other column (baseline use, features, created_at ...)."""
    score = Score(
        utterance_id=utterance_id, model_version=model_version, probability=probability, embedding=embedding, **extra
    )
    s.add(score)
    s.flush()
    return score


def add_flag_row(
    s: Session,
    *,
    call_id: int,
    patient_id: int | None,
    severity: float,
    raised_at: datetime,
    level: str = "high",
    status: str = FlagStatus.OPEN.value,
    **extra: Any,
) -> Flag:
    """A flag on a call (open unless ``status`` says otherwise); ``extra`` sets its resolution columns."""
    flag = Flag(
        call_id=call_id,
        patient_id=patient_id,
        severity=severity,
        level=level,
        status=status,
        raised_at=raised_at,
        **extra,
    )
    s.add(flag)
    s.flush()
    return flag
