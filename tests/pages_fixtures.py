"""Fixtures for the nurse and admin pages, built on the dashboard fixtures (tests/dashboard_fixtures.py).

- ``pages_app``: ``dash_app`` with a flag channel of its own (``DashboardConfig.flag_channel``), so the live
  stream under test hears only this test's messages, and a short SSE heartbeat.
- ``client_as``: a factory giving a Flask test client signed in through ``/login`` as a role.
- ``queue_seed``: flags at chosen severities and times plus a live call, to check the queue order.
- helpers: :func:`form_csrf` (the token in a rendered form), :func:`audit_actions`,
  :func:`queue_order` (call ids in the order the queue shows them), :func:`make_flagged_call`.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from dashboard.config import config_of, configure
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
    utcnow,
)
from tests.dashboard_fixtures import DashUsers, login

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_ROW = re.compile(r'<tr data-call-id="(\d+)"')


@pytest.fixture
def pages_app(dash_app: Flask) -> Iterator[Flask]:
    configure(
        dash_app,
        replace(config_of(dash_app), flag_channel=f"painline-test-flags:{secrets.token_hex(6)}", sse_heartbeat_s=0.5),
    )
    yield dash_app


@pytest.fixture
def client_as(pages_app: Flask, dash_users: DashUsers) -> Callable[[str], FlaskClient]:
    """``client_as("nurse")``: a new test client signed in as that role's user."""

    def make(role: str) -> FlaskClient:
        client = pages_app.test_client()
        response = login(client, DashUsers.name(role))
        assert response.status_code == 302, response.get_data(as_text=True)
        return client

    return make


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
        # a streaming call's Media Stream connected, so it is shown as live (queries.is_live)
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


@pytest.fixture
def queue_seed(pages_app: Flask) -> QueueSeed:
    sessions: sessionmaker[Session] = pages_app.extensions["painline.sessions"]
    now = utcnow()
    with session_scope(sessions) as s:
        severe_old = make_flagged_call(s, ref="Q-1", severity=0.95, started_at=now - timedelta(minutes=30))
        mild_new = make_flagged_call(s, ref="Q-2", severity=0.70, level="low", started_at=now - timedelta(minutes=2))
        mild_old = make_flagged_call(s, ref="Q-3", severity=0.70, level="low", started_at=now - timedelta(minutes=20))
        live = make_flagged_call(
            s, ref="Q-4", severity=None, started_at=now - timedelta(minutes=1), status=CallStatus.STREAMING.value
        )
        resolved = make_flagged_call(s, ref="Q-5", severity=0.99, started_at=now - timedelta(minutes=5))
        flag = s.scalars(select(Flag).where(Flag.call_id == resolved)).one()
        flag.status = FlagStatus.RESOLVED.value
        flag.label = "unsure"
    return QueueSeed(severe_old, mild_new, mild_old, live, resolved)
