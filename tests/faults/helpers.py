"""Helpers shared by the fault tests: the fault stack, seeding work, holding a row lock, a real server.

:class:`FaultStack` (the ``fault_stack`` fixture, ``tests/faults/conftest.py``) is what every fault test
stands on: a private PostgreSQL with a fresh migrated database, a private Redis, the test model and
the test's tmp dir, and the painline processes a test starts on them (stopped when the test ends).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from flask import Flask
from redis import Redis
from rq import Queue
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool
from twilio.request_validator import RequestValidator

from bench.soak.calls import voice_webhook as signed_voice_webhook
from bench.soak.services import (
    PainlineProcess,
    PrivatePostgres,
    PrivateRedis,
    painline_environment,
    start_worker,
    wait_worker_ready,
)
from painline.app import close_app, configure, create_app, telephony_config
from painline.config import Settings
from painline.devserver import make_dev_server
from painline.replay import (
    CHUNK_MS,
    ReplayResult,
    StreamMessages,
    chunks,
    connect_url,
    new_sid,
    parse_twiml,
    replay_call,
)
from schema.db import make_engine, session_factory, session_scope
from tests.stream_servers import running_stream_server
from tests.worker_fixtures import add_utterance, calm, make_call, make_patient

QUEUE = "painline"  # the private Redis is ours alone: the production queue name is fine


def seed_pending_utterances(database_url: str, count: int, *, ended: bool = True) -> tuple[int, list[int]]:
    """One call (ended, not finalised) with ``count`` pending utterances and their audio."""
    from schema.models import CallStatus

    engine = make_engine(database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            patient = make_patient(session)
            call = make_call(session, patient, CallStatus.ENDED if ended else CallStatus.STREAMING)
            ids = [add_utterance(session, call, seq, calm(130.0 + 7 * seq, seed=seq)) for seq in range(count)]
            return call.id, ids
    finally:
        engine.dispose()


@contextmanager
def call_row_locked(database_url: str, call_id: int) -> Iterator[Connection]:
    """Hold ``SELECT ... FOR UPDATE`` on the call row until the block ends.

    ``score_utterance`` locks the call row in its write transaction, after the Score insert: a job
    blocked here is as deep inside its job as it gets (a Score written but not committed), which is
    where a ``kill -9`` hurts most. It makes "mid-job" a state the test can wait for, with no hook
    in production code.
    """
    engine = create_engine(database_url, poolclass=NullPool)
    conn = engine.connect()
    try:
        conn.execute(text("SELECT id FROM calls WHERE id = :id FOR UPDATE"), {"id": call_id})
        yield conn
    finally:
        try:
            conn.rollback()
            conn.close()
        finally:
            engine.dispose()


def backends_waiting_on_locks(database_url: str) -> int:
    """How many sessions of this database wait on a lock (the blocked job)."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return int(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()"
                    )
                )
                or 0
            )
    finally:
        engine.dispose()


def queue_on(connection: Redis) -> Queue:
    return Queue(QUEUE, connection=connection)


@dataclass
class FaultStack:
    """The private services of one fault test, the test model, and the processes run on them.

    ``connection`` is a Redis client on the private Redis; every process started through
    :meth:`worker` or :meth:`sweeper` is stopped by :meth:`close` (the fixture calls it at the end).
    """

    postgres: PrivatePostgres
    redis: PrivateRedis
    model_path: Path
    tmp_path: Path
    connection: Redis
    processes: list[PainlineProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        """The test's database on the private PostgreSQL."""
        return self.postgres.url

    @property
    def redis_url(self) -> str:
        return self.redis.url

    @property
    def var_dir(self) -> Path:
        return self.tmp_path / "var"

    def queue(self) -> Queue:
        return queue_on(self.connection)

    def environment(self, **extra: str) -> dict[str, str]:
        """The environment of a painline process on this stack."""
        return painline_environment(
            database_url=self.url,
            redis_url=self.redis_url,
            queue_name=QUEUE,
            model_path=self.model_path,
            var_dir=self.var_dir,
            **extra,
        )

    def worker(self, name: str, *, fork: bool = True) -> PainlineProcess:
        """A real ``painline worker`` subprocess, registered and ready, logging to ``<tmp>/<name>.log``
        (forking rq.Worker unless ``fork`` is False: then painline's default class)."""
        process = start_worker(
            self.environment(PAINLINE_LOG_LEVEL="INFO"), self.tmp_path / f"{name}.log", name=name, fork=fork
        )
        self.processes.append(process)
        wait_worker_ready(self.connection, QUEUE, process)
        return process

    def sweeper(self, *options: str) -> PainlineProcess:
        """A real ``painline sweep OPTIONS`` subprocess, logging to ``<tmp>/sweep.log``."""
        process = PainlineProcess(["sweep", *options], self.environment(), self.tmp_path / "sweep.log").start()
        self.processes.append(process)
        return process

    def serve_app(self, *, stream_process: bool = False) -> contextlib.AbstractContextManager[RunningApp]:
        return serve_app(self.url, self.redis_url, self.var_dir, stream_process=stream_process)

    def close(self) -> None:
        try:
            for process in self.processes:
                process.stop()
        finally:
            self.connection.close()


# ---------------------------------------------------------------------------------------------------
# a real server and the Twilio side of a call

AUTH_TOKEN = "fault-test-auth-token-0123456789"
HMAC_KEY = "fault-test-hmac-key"


@dataclass
class RunningApp:
    url: str
    app: Flask
    settings: Settings
    stream_url: str  # where the Media Stream socket is opened: the app, or ``painline stream``'s server


@contextmanager
def serve_app(
    database_url: str, redis_url: str, var_dir: Path, *, stream_process: bool = False
) -> Iterator[RunningApp]:
    """The real painline app (``create_app``) on a free port, in a thread, on the given services.

    With ``stream_process`` the Media Stream is served by :mod:`telephony.stream_server` (what
    ``painline stream`` runs) on a port of its own, beside the app that answers the webhooks.
    """
    settings = Settings(
        var_dir=var_dir,
        database_url=database_url,
        redis_url=redis_url,
        public_url="http://127.0.0.1:1",
        twilio_auth_token=AUTH_TOKEN,
        hmac_key=HMAC_KEY,
        secret_key="fault-test",
        queue_name=QUEUE,
        next_enqueue="nurses",
    )
    app = create_app(settings)
    server = make_dev_server("127.0.0.1", 0, app)
    url = f"http://127.0.0.1:{server.server_port}"
    settings = settings.with_(public_url=url)
    configure(app, settings)
    thread = threading.Thread(target=server.serve_forever, name="fault-test-server", daemon=True)
    thread.start()
    try:
        if stream_process:
            sessions, queue = app.extensions["painline.sessions"], app.extensions["painline.queue"]
            with running_stream_server(sessions, queue, telephony_config(settings)) as stream:
                yield RunningApp(url, app, settings, f"http://127.0.0.1:{stream.port}")
        else:
            yield RunningApp(url, app, settings, url)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
        close_app(app)


def voice_webhook(base_url: str, call_sid: str, *, timeout_s: float = 10.0) -> tuple[int, str]:
    """POST Twilio's signed incoming-call webhook; returns the HTTP status and the TwiML."""
    return signed_voice_webhook(base_url, AUTH_TOKEN, call_sid, timeout_s=timeout_s)


@dataclass
class OpenStream:
    """A Media Stream socket opened exactly as Twilio opens one, for tests that end it their own way."""

    ws: websocket.WebSocket
    messages: StreamMessages
    sent_ms: int = 0

    def send_audio(self, mulaw: bytes) -> None:
        for payload in chunks(mulaw):
            self.ws.send(json.dumps(self.messages.media(payload, self.sent_ms)))
            self.sent_ms += CHUNK_MS

    def drop(self) -> None:
        """Vanish without ``stop`` and without a close frame: the TCP connection just ends."""
        sock = self.ws.sock
        assert sock is not None, "the stream was never opened"
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def open_stream(app: RunningApp) -> OpenStream:
    call_sid = new_sid("CA")
    status, twiml = voice_webhook(app.url, call_sid)
    assert status == 200, twiml
    instruction = parse_twiml(twiml)
    signature = RequestValidator(AUTH_TOKEN).compute_signature(instruction.url, {})
    ws = websocket.create_connection(
        connect_url(instruction.url, app.stream_url), header=[f"X-Twilio-Signature: {signature}"], timeout=10
    )
    messages = StreamMessages(account_sid=new_sid("AC"), call_sid=call_sid)
    ws.send(json.dumps(messages.connected()))
    ws.send(json.dumps(messages.start(instruction.parameters)))
    return OpenStream(ws, messages)


# ---------------------------------------------------------------------------------------------------
# a whole call replayed through a fault


@dataclass
class CallThroughFault:
    """What :func:`replay_through_fault` saw: the final counts and any process that quit."""

    final: Any
    exited: list[str]


def replay_through_fault(
    stack: FaultStack,
    mulaw: bytes,
    *,
    fault: Callable[[], None],
    speed: float,
    max_call_s: float,
    stream_process: bool = False,
) -> CallThroughFault:
    """Replay ``mulaw`` as a live call while ``fault`` runs, with a worker and a 1 s sweep; wait for the end.

    ``fault`` is called 3 s into the call (a couple of utterances in) and must return when the
    fault is over. Afterwards the replay must have ended normally (close 1000, never blocked), and
    every utterance be scored and the call finalised; a few more sweeps run before the counts are
    taken, so a duplicate would show.
    """
    from bench.soak.services import outcome_counts, wait_until

    database_url = stack.url
    processes = [stack.sweeper("--every", "1", "--older-than", "2"), stack.worker("w1")]
    result: dict[str, ReplayResult | BaseException] = {}
    try:
        with stack.serve_app(stream_process=stream_process) as app:

            def call() -> None:
                try:
                    result["replay"] = replay_call(
                        mulaw,
                        base_url=app.url,
                        public_url=app.url,
                        auth_token=AUTH_TOKEN,
                        speed=speed,
                        stream_base_url=app.stream_url,
                    )
                except BaseException as exc:  # reported below
                    result["replay"] = exc

            caller = threading.Thread(target=call, name="caller")
            caller.start()
            time.sleep(3.0)
            fault()
            caller.join(60)
            assert not caller.is_alive()
        replay = result["replay"]
        assert isinstance(replay, ReplayResult), f"the call did not go on: {replay!r}"
        assert replay.close_code == 1000, replay.close_code
        assert replay.elapsed_s < max_call_s, "the call was held up by the fault"
        exited = [p.args[0] for p in processes if not p.alive]
        wait_until(
            lambda: outcome_counts(database_url).pending == 0 and outcome_counts(database_url).calls_finalised,
            120,
            interval_s=0.5,
            message="every utterance scored and the call finalised",
        )
        time.sleep(2.0)  # a few more sweeps: nothing may run twice
        return CallThroughFault(final=outcome_counts(database_url), exited=exited)
    finally:
        for process in processes:
            process.stop()
