"""Scratch services and real utterances for the worker bench.

A private ``redis-server`` on a free port (RQ job ids are deterministic per utterance id, so a shared
Redis would collide with other runs) and a freshly created PostgreSQL database on the local server,
migrated to head and dropped afterwards. Utterances are RAVDESS speech cut by the live VAD, so
their lengths are what a worker really gets.
"""

from __future__ import annotations

import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, as Twilio sends it


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ScratchServices:
    database_url: str
    redis_url: str
    redis: Redis
    queue_name: str = "bench-worker"

    @classmethod
    @contextmanager
    def start(cls) -> Iterator[ScratchServices]:
        from schema import migrate

        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        port = _free_port()
        redis_process = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
        )
        name = f"painline_bench_{secrets.token_hex(4)}"
        admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
            migrate.upgrade(url)
            redis_url = f"redis://127.0.0.1:{port}/0"
            connection = Redis.from_url(redis_url)
            for _ in range(50):
                try:
                    connection.ping()
                    break
                except RedisError:  # not up yet
                    time.sleep(0.1)
            yield cls(database_url=url, redis_url=redis_url, redis=connection)
        finally:
            redis_process.terminate()
            redis_process.wait(10)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()

    def settings(self):  # type: ignore[no-untyped-def]
        from painline.config import Settings

        return Settings(database_url=self.database_url, redis_url=self.redis_url, queue_name=self.queue_name,
                        hmac_key="bench-hmac-key")

    def env(self) -> dict[str, str]:
        import os

        env = dict(os.environ)
        env.update(PAINLINE_DATABASE_URL=self.database_url, PAINLINE_REDIS_URL=self.redis_url,
                   PAINLINE_QUEUE_NAME=self.queue_name, PAINLINE_HMAC_KEY="bench-hmac-key")
        return env

    def queue(self) -> Queue:
        return Queue(self.queue_name, connection=self.redis)


def speech_utterances(ravdess_dir: Path, n: int) -> list[tuple[np.ndarray, bytes]]:
    """``n`` utterances (decoded float32, mu-law bytes) cut by the live VAD from RAVDESS clips.

    Clips are taken round-robin over actors so no one voice dominates.
    """
    from analysis.channel import mulaw_decode
    from analysis.segmentation import UtteranceSegmenter
    from painline.replay import load_call_audio

    actors = sorted(p for p in (ravdess_dir / "audio").iterdir() if p.is_dir())
    if not actors:
        raise FileNotFoundError(f"no RAVDESS audio under {ravdess_dir}")
    per_actor = [sorted(a.glob("*.flac")) for a in actors]
    out: list[tuple[np.ndarray, bytes]] = []
    k = 0
    while len(out) < n:
        files = per_actor[k % len(per_actor)]
        path = files[(k // len(per_actor)) % len(files)]
        k += 1
        mulaw = load_call_audio(path) + b"\xff" * FRAME_BYTES * 50  # a second of silence closes it
        segmenter = UtteranceSegmenter()
        pieces = []
        for i in range(0, len(mulaw) - FRAME_BYTES + 1, FRAME_BYTES):
            pieces += segmenter.push(i // 8, mulaw[i : i + FRAME_BYTES])
        pieces += segmenter.flush()
        out += [(mulaw_decode(p.mulaw), p.mulaw) for p in pieces]
    return out[:n]


def persist_utterances(sessions: Callable[[], Session], clips: list[bytes], per_call: int = 12) -> list[int]:
    """``clips`` as pending utterances, ``per_call`` to a call of one patient, as telephony writes them."""
    ids: list[int] = []
    for i in range(0, len(clips), per_call):
        ids += _persist_call(sessions, clips[i : i + per_call])
    return ids


def _persist_call(sessions: Callable[[], Session], clips: list[bytes]) -> list[int]:
    from schema.models import Call, CallStatus, Patient, Utterance, UtteranceAudio, UtteranceStatus, utcnow

    with sessions() as session, session.begin():
        patient = Patient(key=f"ref:bench-{secrets.token_hex(4)}", created_at=utcnow())
        session.add(patient)
        session.flush()
        call = Call(call_sid="CA" + secrets.token_hex(16), patient_id=patient.id, started_at=utcnow(),
                    status=CallStatus.STREAMING.value, consent=True)
        session.add(call)
        session.flush()
        ids = []
        start = 0
        for seq, mulaw in enumerate(clips):
            length_ms = len(mulaw) // 8
            row = Utterance(call_id=call.id, seq=seq, start_ms=start, end_ms=start + length_ms,
                            speech_s=length_ms / 1000.0, status=UtteranceStatus.PENDING.value, created_at=utcnow())
            start += length_ms + 1000
            session.add(row)
            session.flush()
            session.add(UtteranceAudio(utterance_id=row.id, mulaw=mulaw))
            ids.append(row.id)
    return ids
