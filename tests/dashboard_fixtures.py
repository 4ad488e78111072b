"""Fixtures for the dashboard's sign-in, API and shared queries, on the real app, PostgreSQL and Redis.

- ``dash_app``: ``painline_app`` (tests/app_fixtures.py) with a Redis key namespace of its own for
  sessions and sign-in counters (its keys are deleted afterwards) and a tiny ``probe`` blueprint
  whose pages are guarded by :func:`dashboard.auth.require_role`, so page guards can be tested without the real pages.
- ``dash_users``: one account per role (``nurse1``, ``admin1``, ``auditor1``) with password
  :data:`PASSWORD`, plus a bearer token each: ``dash_users.tokens[role]``.
- ``dash_seed``: a patient with a finalised flagged call (three scored utterances, open flag), a live
  unflagged call, and a model baseline with two contributions beside its evidence twin.
- ``pages_app``: ``dash_app`` with a flag channel of its own (``DashboardConfig.flag_channel``), so the live
  stream under test hears only this test's messages, and a short SSE heartbeat (the dashboard page
  tests and the browser tests).
- helpers: :func:`login`, :func:`csrf_of`, :func:`bearer`.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import timedelta

import numpy as np
import pytest
from flask import Blueprint, Flask
from flask.testing import FlaskClient
from redis import Redis
from werkzeug.test import TestResponse

from analysis.baseline import RunningStats
from analysis.evidence import EVIDENCE_VERSION, MEASURE_KEYS
from dashboard.auth import require_role
from dashboard.config import config_of, configure
from dashboard.users import add_user, create_api_token
from schema.contract import EVIDENCE_BASELINE_EMBEDDER
from schema.db import session_scope
from schema.models import (
    Baseline,
    BaselineContribution,
    Call,
    CallStatus,
    ContributionSource,
    Patient,
    Verdict,
    utcnow,
)
from tests.rows import add_flag_row, add_score_row, add_utterance_row

PASSWORD = "correct horse battery staple"
ROLES = ("nurse", "admin", "auditor")
MODEL_VERSION = "test-model-1"


def probe_blueprint() -> Blueprint:
    bp = Blueprint("probe", __name__)

    @bp.get("/probe/nurse")
    @require_role("nurse")
    def nurse_page() -> str:
        return "nurse page"

    @bp.get("/probe/admin")
    @require_role("admin")
    def admin_page() -> str:
        return "admin page"

    @bp.post("/probe/form")
    @require_role("nurse", "auditor")
    def form() -> str:
        return "form accepted"

    return bp


@contextmanager
def own_key_namespace(app: Flask, prefix: str) -> Iterator[Flask]:
    """``app`` in testing mode with a Redis key namespace of its own, whose keys are deleted on leaving."""
    namespace = f"{prefix}-{secrets.token_hex(6)}"
    configure(app, replace(config_of(app), key_namespace=namespace))
    app.config["TESTING"] = True
    try:
        yield app
    finally:
        redis: Redis = app.extensions["painline.redis"]
        keys = list(redis.scan_iter(match=f"painline:{namespace}:*"))
        if keys:
            redis.delete(*keys)


@pytest.fixture
def dash_app(painline_app: Flask) -> Iterator[Flask]:
    with own_key_namespace(painline_app, "test-dash") as app:
        app.register_blueprint(probe_blueprint())
        yield app


@dataclass
class DashUsers:
    ids: dict[str, int] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)

    @staticmethod
    def name(role: str) -> str:
        return f"{role}1"


@pytest.fixture
def dash_users(dash_app: Flask) -> DashUsers:
    sessions = dash_app.extensions["painline.sessions"]
    users = DashUsers()
    for role in ROLES:
        users.ids[role] = add_user(sessions, DashUsers.name(role), role, PASSWORD)
        users.tokens[role] = create_api_token(sessions, DashUsers.name(role))
    return users


@dataclass
class Seed:
    patient_id: int
    call_id: int
    flag_id: int
    live_call_id: int
    baseline_id: int
    evidence_baseline_id: int
    contribution_ids: list[int]
    utterance_ids: list[int]


def _vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


@pytest.fixture
def dash_seed(dash_app: Flask) -> Seed:
    sessions = dash_app.extensions["painline.sessions"]
    now = utcnow()
    with session_scope(sessions) as s:
        patient = Patient(key="ref:PT-100")
        s.add(patient)
        s.flush()
        call = Call(
            call_sid="CA" + "1" * 32,
            patient_id=patient.id,
            started_at=now - timedelta(minutes=10),
            ended_at=now - timedelta(minutes=2),
            status=CallStatus.FINALISED.value,
            verdict=Verdict.PAIN_LIKELY.value,
            call_score=0.81,
            speech_s=12.5,
            consent=True,
            evidence={
                "model_version": MODEL_VERSION,
                "threshold": 0.6,
                "speaker_mismatches": 0,
                "moved": [{"key": "pitch", "delta": 2.3, "unit": "semitones"}],
            },
        )
        live = Call(
            call_sid="CA" + "2" * 32,
            patient_id=patient.id,
            started_at=now - timedelta(minutes=1),
            status=CallStatus.STREAMING.value,
            stream_sid="MZ" + "2" * 32,  # its Media Stream connected: shown as live (queries.is_live)
        )
        s.add_all([call, live])
        s.flush()
        utterance_ids = []
        for seq, p in enumerate((0.4, 0.9, 0.85)):
            u = add_utterance_row(s, call.id, seq, step_ms=4000, length_ms=3000)
            add_score_row(
                s,
                u.id,
                model_version=MODEL_VERSION,
                probability=p,
                embedding=_vectors(1, 4, seq).tobytes(),
                baseline_applied=True,
                baseline_n=2,
                speaker_similarity=0.9,
            )
            utterance_ids.append(u.id)
        flag = add_flag_row(
            s,
            call_id=call.id,
            patient_id=patient.id,
            severity=0.81,
            raised_at=now - timedelta(minutes=5),
        )
        model_vectors = _vectors(2, 4, 7)
        baseline = Baseline(
            patient_id=patient.id,
            embedder="egemaps",
            model_version=MODEL_VERSION,
            stats=RunningStats.from_array(model_vectors.astype(np.float64)).to_dict(),
            count=2,
        )
        ev_vectors = _vectors(2, len(MEASURE_KEYS), 8) + 10
        evidence = Baseline(
            patient_id=patient.id,
            embedder=EVIDENCE_BASELINE_EMBEDDER,
            model_version=f"evidence-v{EVIDENCE_VERSION}",
            stats=RunningStats.from_array(ev_vectors.astype(np.float64)).to_dict(),
            count=2,
        )
        s.add_all([baseline, evidence])
        s.flush()
        resolved_from = {"utterance_id": utterance_ids[0], "call_id": call.id}
        contributions = [
            BaselineContribution(
                baseline_id=b.id,
                source=source.value,
                embedding=vectors[i].astype("<f4").tobytes(),
                created_at=now,
                **({} if source is ContributionSource.ENROLMENT else resolved_from),
            )
            for b, vectors in ((baseline, model_vectors), (evidence, ev_vectors))
            for i, source in enumerate((ContributionSource.ENROLMENT, ContributionSource.RESOLVED_CALL))
        ]
        s.add_all(contributions)
        s.flush()
        return Seed(
            patient_id=patient.id,
            call_id=call.id,
            flag_id=flag.id,
            live_call_id=live.id,
            baseline_id=baseline.id,
            evidence_baseline_id=evidence.id,
            contribution_ids=[c.id for c in contributions[:2]],
            utterance_ids=utterance_ids,
        )


def csrf_of(client: FlaskClient) -> str:
    """The session's CSRF token (fetching the login page creates one if needed)."""
    with client.session_transaction() as session:
        token = session.get("csrf_token")
    if token:
        return token
    client.get("/login")
    with client.session_transaction() as session:
        return session["csrf_token"]


def login(client: FlaskClient, username: str, password: str = PASSWORD, **extra: str) -> TestResponse:
    client.get("/login")
    data = {"username": username, "password": password, "csrf_token": csrf_of(client), **extra}
    return client.post("/login", data=data)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def pages_app(dash_app: Flask) -> Iterator[Flask]:
    configure(
        dash_app,
        replace(config_of(dash_app), flag_channel=f"painline-test-flags:{secrets.token_hex(6)}", sse_heartbeat_s=0.5),
    )
    yield dash_app
