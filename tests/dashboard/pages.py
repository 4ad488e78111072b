"""Helpers for the nurse and admin page tests (their fixtures are in ``tests/dashboard/conftest.py``).

:func:`form_csrf` (the token in a rendered form), :func:`audit_actions`, :func:`queue_order` (call ids in
the order the queue shows them), :func:`make_flagged_call`, and :class:`QueueSeed` (what the
``queue_seed`` fixture made).
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
    Flag,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    UtteranceStatus,
    Verdict,
)

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
        u = Utterance(
            call_id=call.id,
            seq=seq,
            start_ms=seq * 5000,
            end_ms=seq * 5000 + 3000,
            speech_s=3.0,
            status=UtteranceStatus.SCORED.value,
        )
        s.add(u)
        s.flush()
        s.add(Score(utterance_id=u.id, model_version=model_version, probability=p, embedding=b"\0" * 16))
    if severity is not None:
        s.add(
            Flag(
                call_id=call.id,
                patient_id=patient.id,
                severity=severity,
                level=level,
                status=FlagStatus.OPEN.value,
                raised_at=started_at + timedelta(seconds=30),
            )
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
