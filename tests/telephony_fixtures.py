"""Telephony fixtures and helpers shared by several test folders (loaded through ``pytest_plugins`` in conftest).

- Twilio-side builders: messages in the documented Media Streams format, request signatures.
- ``speechlike`` / ``synthetic_call``: harmonic, amplitude-modulated bursts webrtcvad treats as speech.
- ``tel_engine`` / ``tel_sessions``: PostgreSQL (the shared session database from db_fixtures),
  migrated to head, emptied after each test.
- ``rq_queue``: a real Redis queue with a unique name and a job-key namespace of its own (job ids such
  as ``score-utterance-1`` are global in RQ and other areas' tests use them too); deleted afterwards.

The telephony tests' own fixtures (``tel_settings``, ``telephony_app``, ``live_server``, ``down_sessions``,
``down_queue``) are in ``tests/telephony/conftest.py``.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from twilio.request_validator import RequestValidator

from analysis.channel import mulaw_encode
from schema.db import make_engine, session_factory
from schema.migrate import upgrade
from schema.models import Base
from tests.app_fixtures import cleanup_queue, isolated_job_class

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH_TOKEN = "test-auth-token-0123456789abcdef"
HMAC_KEY = "test-hmac-key-for-telephony"


def new_sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# ---------------------------------------------------------------------------------------------------
# Twilio side


def sign(url: str, params: dict[str, str] | None = None, token: str = AUTH_TOKEN) -> str:
    return RequestValidator(token).compute_signature(url, params or {})


def connected_msg() -> str:
    return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})


def start_msg(
    stream_sid: str,
    call_sid: str,
    account_sid: str,
    parameters: dict[str, str] | None = None,
    *,
    sequence: int = 1,
    encoding: str = "audio/x-mulaw",
    sample_rate: int = 8000,
) -> str:
    return json.dumps(
        {
            "event": "start",
            "sequenceNumber": str(sequence),
            "start": {
                "accountSid": account_sid,
                "streamSid": stream_sid,
                "callSid": call_sid,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": encoding, "sampleRate": sample_rate, "channels": 1},
                "customParameters": parameters or {},
            },
            "streamSid": stream_sid,
        }
    )


def media_msg(
    stream_sid: str, chunk: int, timestamp_ms: int, payload: bytes, *, sequence: int, track: str = "inbound"
) -> str:
    return json.dumps(
        {
            "event": "media",
            "sequenceNumber": str(sequence),
            "media": {
                "track": track,
                "chunk": str(chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": stream_sid,
        }
    )


def stop_msg(stream_sid: str, call_sid: str, account_sid: str, *, sequence: int) -> str:
    return json.dumps(
        {
            "event": "stop",
            "sequenceNumber": str(sequence),
            "stop": {"accountSid": account_sid, "callSid": call_sid},
            "streamSid": stream_sid,
        }
    )


@dataclass
class TwilioStream:
    """One simulated Twilio stream: ids plus message builders keeping sequence numbers right."""

    call_sid: str
    token: str
    stream_sid: str = ""
    account_sid: str = ""

    def __post_init__(self) -> None:
        self.stream_sid = self.stream_sid or new_sid("MZ")
        self.account_sid = self.account_sid or new_sid("AC")

    def messages(
        self,
        audio: bytes,
        *,
        chunk_bytes: int = 160,
        order: list[int] | None = None,
        duplicates: tuple[int, ...] = (),
        drop: tuple[int, ...] = (),
    ) -> list[str]:
        """connected, start, media chunks (optionally reordered/duplicated/dropped), stop."""
        chunks = [audio[i : i + chunk_bytes] for i in range(0, len(audio), chunk_bytes)]
        indices = order if order is not None else list(range(len(chunks)))
        out = [connected_msg(), start_msg(self.stream_sid, self.call_sid, self.account_sid, {"token": self.token})]
        seq = 2
        for i in indices:
            if i in drop:
                continue
            for _ in range(2 if i in duplicates else 1):
                out.append(media_msg(self.stream_sid, i + 1, i * chunk_bytes // 8, chunks[i], sequence=seq))
                seq += 1
        out.append(stop_msg(self.stream_sid, self.call_sid, self.account_sid, sequence=seq))
        return out


# ---------------------------------------------------------------------------------------------------
# audio


def speechlike(duration_s: float, sr: int = 8000, f0: float = 140.0) -> np.ndarray:
    """A voiced-speech stand-in: harmonics of a wobbling f0, amplitude-modulated at a syllable rate."""
    t = np.arange(int(duration_s * sr)) / sr
    freq = f0 * (1 + 0.05 * np.sin(2 * np.pi * 3 * t))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    x = np.zeros_like(t)
    for k in range(1, int(3600 // f0) + 1):
        x += np.sin(k * phase) / k * (1.0 if k * f0 < 1000 else 0.5)
    x *= 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t - np.pi / 2)
    return 0.5 * x / np.max(np.abs(x))


def synthetic_call(bursts: list[tuple[float, float]], total_s: float, sr: int = 8000) -> bytes:
    """Mu-law audio of ``total_s`` seconds: faint noise, with speech-like bursts at (start_s, dur_s)."""
    rng = np.random.default_rng(1)
    y = rng.normal(0.0, 0.002, int(total_s * sr))
    for start, dur in bursts:
        burst = speechlike(dur, sr)
        i = int(start * sr)
        n = min(len(burst), len(y) - i)  # a burst may run past the end: the caller was cut off
        y[i : i + n] += burst[:n]
    return mulaw_encode(np.clip(y, -1.0, 1.0))


# ---------------------------------------------------------------------------------------------------
# settings, database, queue, app


@pytest.fixture(scope="session")
def _tel_pg_migrated(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture
def tel_engine(_tel_pg_migrated: str) -> Iterator[Engine]:
    engine = make_engine(_tel_pg_migrated)
    try:
        yield engine
    finally:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
        engine.dispose()


@pytest.fixture
def tel_sessions(tel_engine: Engine) -> sessionmaker[Session]:
    return session_factory(tel_engine)


def redis_url() -> str:
    return os.environ.get("PAINLINE_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL


@pytest.fixture
def rq_queue() -> Iterator[Queue]:
    name = f"painline-test-telephony-{secrets.token_hex(6)}"
    connection = Redis.from_url(redis_url())
    queue = Queue(name, connection=connection, job_class=isolated_job_class(name))
    try:
        yield queue
    finally:
        cleanup_queue(connection, name)
        connection.close()
