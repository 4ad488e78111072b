"""Helpers for the nurse and admin page tests (their fixtures are in ``tests/dashboard/conftest.py``).

:func:`form_csrf` (the token in a rendered form), :func:`audit_actions`, :func:`queue_order` (call ids in
the order the queue shows them), :func:`make_flagged_call`, :class:`QueueSeed` (what the
``queue_seed`` fixture made), and :func:`moved` (evidence's measures that moved, as the call page shows them;
the browser tests use it too).
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Flask
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.db import session_scope
from schema.models import (
    AuditEvent,
    Call,
    CallStatus,
    Patient,
    Verdict,
)
from tests.rows import add_flag_row, add_score_row, add_utterance_row

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ROW = re.compile(r'<tr data-call-id="(\d+)"')


def form_csrf(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "no CSRF field in the page"
    return match.group(1)


def queue_order(html: str) -> list[int]:
    return [int(m) for m in _ROW.findall(html)]


def audit_actions(app: Flask, action: str) -> list[AuditEvent]:
    with session_scope(app.extensions["painline.sessions"]) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id)))


def make_flagged_call(
    s: Session,
    *,
    ref: str,
    severity: float | None,
    started_at: datetime,
    level: str = "high",
    status: str = CallStatus.FINALISED.value,
    probabilities: tuple[float, ...] = (),
    model_version: str = "test-model-1",
) -> int:
    """A patient (``ref:<ref>``), a call and, when ``severity`` is given, its open flag; returns the call id."""
    patient = s.scalars(select(Patient).where(Patient.key == f"ref:{ref}")).one_or_none()
    if patient is None:
        patient = Patient(key=f"ref:{ref}")
        s.add(patient)
        s.flush()
    call = Call(
        call_sid="CA" + secrets.token_hex(16),
        patient_id=patient.id,
        started_at=started_at,
        status=status,
        # a streaming call's Media Stream connected, so it is shown as live (dashboard.store.is_live)
        stream_sid="MZ" + secrets.token_hex(16) if status == CallStatus.STREAMING.value else None,
        verdict=Verdict.PAIN_LIKELY.value if severity is not None else Verdict.PENDING.value,
        call_score=severity,
        speech_s=3.0 * len(probabilities),
    )
    s.add(call)
    s.flush()
    for seq, p in enumerate(probabilities):
        u = add_utterance_row(s, call.id, seq, step_ms=5000, length_ms=3000)
        add_score_row(s, u.id, model_version=model_version, probability=p)
    if severity is not None:
        add_flag_row(
            s,
            call_id=call.id,
            patient_id=patient.id,
            severity=severity,
            level=level,
            raised_at=started_at + timedelta(seconds=30),
        )
    s.flush()
    return call.id


@dataclass
class QueueSeed:
    severe_old: int
    mild_new: int
    mild_old: int
    live: int
    resolved: int


_MOVED: dict[str, dict[str, object]] = {
    "pitch": {
        "measure": "pitch",
        "label": "pitch",
        "unit": "semitones",
        "value": 35.1,
        "baseline": 32.6,
        "delta": 2.5,
        "z": 2.1,
        "text": "pitch +2.5 semitones",
    },
    "loudness": {
        "measure": "loudness",
        "label": "loudness",
        "unit": "dB",
        "value": 71.0,
        "baseline": 65.2,
        "delta": 5.8,
        "z": 1.9,
        "text": "loudness +5.8 dB",
    },
    "hnr": {
        "measure": "hnr",
        "label": "harmonics-to-noise ratio",
        "unit": "dB",
        "value": 6.1,
        "baseline": 8.4,
        "delta": -2.3,
        "z": -1.5,
        "text": "harmonics-to-noise ratio -2.3 dB",
    },
}


def moved(*measures: str) -> list[dict[str, object]]:
    """Evidence ``moved`` entries (fresh copies): pitch +2.5 semitones, loudness +5.8 dB, HNR -2.3 dB."""
    return [dict(_MOVED[m]) for m in measures]
