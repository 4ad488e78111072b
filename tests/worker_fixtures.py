"""Worker fixtures and helpers shared by several test folders (loaded through ``pytest_plugins`` in conftest).

- ``voice``: synthetic 8 kHz voiced speech with a chosen pitch, level, syllable rate and jitter.
- ``pain_model`` / ``pain_model_path``: a small but real :class:`analysis.model.PainModel`, trained on
  eGeMAPS of synthetic speakers whose "pain" clips are higher, louder, faster and rougher.
- ``egemaps``: the eGeMAPS embedder, built once.
- ``worker_redis``: a real Redis connection; ``worker_queue``: an RQ queue with a unique name and a
  job-key namespace of its own (job ids such as ``score-utterance-1`` are global in RQ and other
  areas' tests use them too); deleted afterwards.
- helpers: ``make_patient``, ``make_call``, ``add_utterance``, ``run_burst``.

``speaker_embedder`` and ``worker_ctx``, which only the worker tests use, are in ``tests/worker/conftest.py``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from rq import Queue
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats, TwoLevelNormaliser
from analysis.channel import TELEPHONE_RATE, mulaw_encode
from analysis.embedders import Embedder, get_embedder
from analysis.model import PainModel
from painline.workers import PainlineSimpleWorker
from schema.models import Call, CallStatus, Patient, Utterance, UtteranceAudio, UtteranceStatus, utcnow
from tests.app_fixtures import cleanup_queue, isolated_job_class

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
MODEL_VERSION = "test-egemaps-1"
CALM = {"semitones": 0.0, "gain": 1.0, "rate": 3.0, "jitter": 0.002}
PAIN = {"semitones": 5.0, "gain": 2.5, "rate": 5.5, "jitter": 0.03}


def redis_url() -> str:
    return os.environ.get("PAINLINE_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL


def voice(
    f0: float = 140.0,
    *,
    semitones: float = 0.0,
    gain: float = 1.0,
    rate: float = 3.0,
    jitter: float = 0.002,
    seconds: float = 2.5,
    seed: int = 0,
) -> np.ndarray:
    """Voiced, syllable-modulated speech-like audio at 8 kHz, float32 in [-1, 1].

    A harmonic series (falling spectral tilt) whose pitch is ``f0`` raised by ``semitones``, with
    cycle-to-cycle pitch perturbation ``jitter`` (relative), amplitude bursts at ``rate`` per second
    and a little breath noise.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * TELEPHONE_RATE)
    t = np.arange(n) / TELEPHONE_RATE
    base = f0 * 2.0 ** (semitones / 12.0)
    # piecewise-constant relative perturbation per ~pitch period: what jitter measures
    period = max(int(TELEPHONE_RATE / base), 1)
    steps = rng.normal(0.0, jitter, n // period + 1)
    inst = base * (1.0 + np.repeat(steps, period)[:n]) * (1.0 + 0.03 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(inst) / TELEPHONE_RATE
    x = sum((0.6**k) * np.sin(k * phase) for k in range(1, 12) if k * base < TELEPHONE_RATE / 2)
    envelope = np.clip(np.sin(np.pi * rate * t) ** 2 * 1.2 - 0.1, 0.0, 1.0)
    x = x * envelope + rng.normal(0.0, 0.003, n)
    x = 0.08 * gain * x / max(np.abs(x).max(), 1e-9)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def calm(f0: float = 140.0, seed: int = 0, seconds: float = 2.5) -> np.ndarray:
    return voice(f0, seed=seed, seconds=seconds, **CALM)


def pain(f0: float = 140.0, seed: int = 0, seconds: float = 2.5) -> np.ndarray:
    return voice(f0, seed=seed, seconds=seconds, **PAIN)


def _pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))


@pytest.fixture(scope="session")
def egemaps() -> Embedder:
    embedder = get_embedder("egemaps")
    embedder.embed([calm()])  # builds openSMILE once
    return embedder


@pytest.fixture(scope="session")
def pain_model(egemaps: Embedder) -> PainModel:
    """8 synthetic speakers x (3 calm + 2 pain) clips, eGeMAPS, two logistic regressions."""
    clips, labels, groups = [], [], []
    for speaker, f0 in enumerate(np.linspace(100.0, 220.0, 8)):
        for k in range(3):
            clips.append(calm(f0, seed=100 * speaker + k))
            labels.append(0)
            groups.append(speaker)
        for k in range(2):
            clips.append(pain(f0, seed=100 * speaker + 10 + k))
            labels.append(1)
            groups.append(speaker)
    X = egemaps.embed(clips).astype(np.float64)
    y, g = np.asarray(labels), np.asarray(groups)
    normaliser = TwoLevelNormaliser().fit(X, g)
    population_clf = _pipeline().fit(normaliser.standardise(X), y)
    relative = np.vstack(
        [
            normaliser.relative(X[g == s], normaliser.caller_offset(RunningStats.from_array(X[(g == s) & (y == 0)])))
            for s in np.unique(g)
        ]
    )
    y_rel = np.concatenate([y[g == s] for s in np.unique(g)])
    caller_clf = _pipeline().fit(relative, y_rel)
    card = {
        "embedder": {"name": "egemaps", "dim": int(X.shape[1]), "sample_rate": TELEPHONE_RATE},
        "model_version": MODEL_VERSION,
        "threshold": {"value": 0.5},
        "channel": {"rms_normalise": False},
    }
    return PainModel(
        card=card,
        normaliser=normaliser,
        population_clf=population_clf,
        caller_clf=caller_clf,
        feature_mask=np.ones(X.shape[1], dtype=bool),
        blend=[(1, 0.5)],
    )


@pytest.fixture(scope="session")
def pain_model_path(pain_model: PainModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pain_model.save(tmp_path_factory.mktemp("model") / "test.joblib")


@pytest.fixture
def worker_redis() -> Iterator[Redis]:
    connection = Redis.from_url(redis_url())
    try:
        yield connection
    finally:
        connection.close()


@pytest.fixture
def worker_queue(worker_redis: Redis) -> Iterator[Queue]:
    name = f"painline-test-worker-{secrets.token_hex(6)}"
    queue = Queue(name, connection=worker_redis, job_class=isolated_job_class(name))
    try:
        yield queue
    finally:
        cleanup_queue(worker_redis, name)


def run_burst(queue: Queue) -> bool:
    """Run every job on ``queue`` in this process (painline's in-process RQ worker), then return."""
    worker = PainlineSimpleWorker([queue], connection=queue.connection, job_class=queue.job_class)
    return worker.work(burst=True, logging_level="WARNING")


def make_patient(session: Session, key: str | None = None) -> Patient:
    patient = Patient(key=key or f"ref:{secrets.token_hex(4)}", created_at=utcnow())
    session.add(patient)
    session.flush()
    return patient


def make_call(session: Session, patient: Patient | None, status: CallStatus = CallStatus.ENDED) -> Call:
    now = utcnow()
    call = Call(
        call_sid="CA" + secrets.token_hex(16),
        patient_id=patient.id if patient is not None else None,
        started_at=now,
        ended_at=now if status != CallStatus.STREAMING else None,
        status=status.value,
        consent=True,
    )
    session.add(call)
    session.flush()
    return call


def add_utterance(session: Session, call: Call, seq: int, clip: np.ndarray, speech_s: float | None = None) -> int:
    """An utterance with its mu-law audio, exactly as the telephony side persists it."""
    length_ms = int(1000 * len(clip) / TELEPHONE_RATE)
    utterance = Utterance(
        call_id=call.id,
        seq=seq,
        start_ms=seq * 5000,
        end_ms=seq * 5000 + length_ms,
        speech_s=length_ms / 1000.0 if speech_s is None else speech_s,
        status=UtteranceStatus.PENDING.value,
        created_at=utcnow(),
    )
    session.add(utterance)
    session.flush()
    session.add(UtteranceAudio(utterance_id=utterance.id, mulaw=mulaw_encode(clip)))
    session.flush()
    return utterance.id
