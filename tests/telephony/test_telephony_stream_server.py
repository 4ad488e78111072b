"""What only ``painline stream``'s event-loop server does: the socket tests shared with the Flask route
run against both (``live_server`` is parametrised); these cover the loop's own duties.

Real PostgreSQL and Redis. A database wait on one call must not hold up another (the loop hands
database steps to its thread pool); idle streams are closed by the sweep; shutdown drains, then
closes what is still open, keeping each call's audio; plain routes answer on the same port.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http import HTTPStatus

import pytest
import requests
import websocket
from rq import Queue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from painline.app import telephony_config
from painline.config import Settings
from schema.models import CallStatus
from telephony.config import TelephonyConfig
from telephony.messages import CLOSE_POLICY_VIOLATION
from telephony.stream_server import PlainResponse, StreamServer, StreamServerOptions
from tests.stream_servers import running_stream_server
from tests.telephony.helpers import STREAM_WSS_URL
from tests.telephony.test_telephony_stream import BURSTS, TOTAL_S, call_rows, prepare_call, read_close
from tests.telephony_fixtures import sign, synthetic_call


@pytest.fixture
def config(tel_settings: Settings) -> TelephonyConfig:
    return telephony_config(tel_settings)


def connect(server: StreamServer, path: str = "/twilio/stream") -> websocket.WebSocket:
    return websocket.create_connection(
        f"ws://127.0.0.1:{server.port}{path}", header=[f"X-Twilio-Signature: {sign(STREAM_WSS_URL)}"], timeout=20
    )


def wait_for(condition: object, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.05)
    return False


def test_plain_routes_answer_and_other_paths_are_404(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, config: TelephonyConfig
) -> None:
    calls: list[str] = []

    def ping() -> PlainResponse:
        calls.append(threading.current_thread().name)
        return PlainResponse(HTTPStatus.SERVICE_UNAVAILABLE, "application/json", b'{"status": "unavailable"}')

    options = StreamServerOptions(port=0, drain_s=0.0, routes={"/healthz": ping})
    with running_stream_server(tel_sessions, rq_queue, config, options) as server:
        answer = requests.get(f"http://127.0.0.1:{server.port}/healthz", timeout=10)
        missing = requests.get(f"http://127.0.0.1:{server.port}/twilio/voice", timeout=10)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            connect(server, "/elsewhere")
    assert (answer.status_code, answer.headers["Content-Type"], answer.json()) == (
        503,
        "application/json",
        {"status": "unavailable"},
    )
    assert calls and calls[0].startswith("painline-stream-io")  # it may block: never on the loop
    assert missing.status_code == 404
    assert refused.value.status_code == 404


def test_idle_stream_is_closed_1008_and_its_call_finished(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, config: TelephonyConfig
) -> None:
    stream = prepare_call(tel_sessions)
    options = StreamServerOptions(port=0, drain_s=0.0, idle_timeout_s=0.6)
    with running_stream_server(tel_sessions, rq_queue, config, options) as server:
        ws = connect(server)
        for raw in stream.messages(synthetic_call([(0.5, 1.5)], 3.0))[:-1]:  # all but stop, then silence
            ws.send(raw)
        started = time.monotonic()
        assert read_close(ws) == (CLOSE_POLICY_VIOLATION, "stream idle")
        waited = time.monotonic() - started
        ws.close()
        assert wait_for(lambda: call_rows(tel_sessions, stream.call_sid)[0].status == CallStatus.ENDED.value)
    _, utterances = call_rows(tel_sessions, stream.call_sid)
    assert len(utterances) == 1  # the speech before the silence was kept
    assert 0.4 <= waited <= 3.0


@pytest.fixture
def pg_lock_engine(tel_engine: Engine) -> Iterator[Engine]:
    engine = create_engine(tel_engine.url, poolclass=NullPool)
    yield engine
    engine.dispose()


def test_a_call_waiting_on_the_database_does_not_hold_up_another(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, config: TelephonyConfig, pg_lock_engine: Engine
) -> None:
    """Call A's utterance insert waits on a row lock (as on a slow database); call B streams meanwhile."""
    blocked, free = prepare_call(tel_sessions), prepare_call(tel_sessions)
    audio = synthetic_call(BURSTS, TOTAL_S)
    with running_stream_server(tel_sessions, rq_queue, config) as server:
        a = connect(server)
        a_messages = blocked.messages(audio)
        a.send(a_messages[0])
        a.send(a_messages[1])  # start: the call row is now known
        assert wait_for(lambda: call_rows(tel_sessions, blocked.call_sid)[0].status == CallStatus.STREAMING.value)
        call_id = call_rows(tel_sessions, blocked.call_sid)[0].id
        with pg_lock_engine.connect() as lock:
            lock.execute(text("SELECT id FROM calls WHERE id = :id FOR UPDATE"), {"id": call_id})
            for raw in a_messages[2:227]:  # 4.5 s: A's first utterance ends and waits on the lock
                a.send(raw)
            b = connect(server)
            started = time.monotonic()
            for raw in free.messages(audio):
                b.send(raw)
            assert read_close(b)[0] == 1000
            b_took = time.monotonic() - started
            b.close()
            assert len(call_rows(tel_sessions, free.call_sid)[1]) == len(BURSTS)
            assert call_rows(tel_sessions, blocked.call_sid)[1] == []  # A is still waiting
            lock.rollback()
        for raw in a_messages[227:]:
            a.send(raw)
        assert read_close(a)[0] == 1000
        a.close()
    assert len(call_rows(tel_sessions, blocked.call_sid)[1]) == len(BURSTS)
    assert b_took < 5.0


def test_shutdown_closes_open_calls_1001_and_keeps_their_audio(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, config: TelephonyConfig
) -> None:
    stream = prepare_call(tel_sessions)
    with running_stream_server(tel_sessions, rq_queue, config) as server:
        ws = connect(server)
        for raw in stream.messages(synthetic_call([(0.5, 1.5)], 2.5))[:-1]:  # still talking
            ws.send(raw)
        assert wait_for(lambda: server.open_streams == 1)
        time.sleep(0.3)  # let the loop take the last frames off the socket
    assert read_close(ws)[0] == 1001
    ws.close()
    call, utterances = call_rows(tel_sessions, stream.call_sid)
    assert call.status == CallStatus.ENDED.value
    assert len(utterances) == 1
