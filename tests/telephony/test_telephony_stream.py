"""Stream processing end to end: StreamSession driven directly, then the real WebSocket server.

Real PostgreSQL and a real Redis queue: utterances must land as rows with their audio, and jobs must
be enqueued with ids only as arguments.
"""

from __future__ import annotations

import struct
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
import websocket
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schema.db import session_scope
from schema.models import Call, CallStatus, Utterance, UtteranceAudio, UtteranceStatus
from schema.outbox import requeue_pending, requeue_unfinalised
from telephony import session as session_module
from telephony import tokens
from telephony.messages import CLOSE_INTERNAL_ERROR, CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, ProtocolError
from telephony.session import StreamConfig, StreamSession
from tests.telephony.helpers import STREAM_WSS_URL, LiveServer
from tests.telephony_fixtures import (
    HMAC_KEY,
    TwilioStream,
    media_msg,
    new_sid,
    sign,
    synthetic_call,
)

BURSTS = [(1.0, 2.0), (4.5, 1.5), (7.5, 2.5)]
TOTAL_S = 11.0


def prepare_call(sessions: sessionmaker[Session], *, ttl_s: int = 120) -> TwilioStream:
    """What the voice webhook leaves behind: a call row and an unused token."""
    call_sid = new_sid("CA")
    issued = tokens.issue(call_sid, HMAC_KEY, ttl_s)
    with session_scope(sessions) as session:
        session.add(Call(call_sid=call_sid, consent=True))
        tokens.record(session, issued)
    return TwilioStream(call_sid=call_sid, token=issued.token)


def shuffled_order(n: int) -> list[int]:
    """Reverse every block of 4 chunks: out of order, but inside the 200 ms reorder window."""
    order: list[int] = []
    for i in range(0, n, 4):
        order += list(reversed(range(i, min(i + 4, n))))
    return order


def new_session(sessions: sessionmaker[Session], queue: Queue | None) -> StreamSession:
    return StreamSession(sessions, queue, StreamConfig(hmac_key=HMAC_KEY))


def call_rows(sessions: sessionmaker[Session], call_sid: str) -> tuple[Call, list[Utterance]]:
    with sessions() as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        utterances = session.scalars(
            select(Utterance).where(Utterance.call_id == call.id).order_by(Utterance.seq)
        ).all()
        return call, list(utterances)


def assert_utterances_match_bursts(sessions: sessionmaker[Session], utterances: list[Utterance]) -> None:
    assert [u.seq for u in utterances] == list(range(len(BURSTS)))
    with sessions() as session:
        for u, (start, dur) in zip(utterances, BURSTS, strict=True):
            assert start * 1000 - 600 <= u.start_ms <= start * 1000
            assert (start + dur) * 1000 <= u.end_ms <= (start + dur) * 1000 + 600
            assert u.status == UtteranceStatus.PENDING.value
            audio = session.get(UtteranceAudio, u.id)
            assert audio is not None and len(audio.mulaw) == (u.end_ms - u.start_ms) * 8


def assert_jobs(queue: Queue, utterances: list[Utterance], call_id: int) -> None:
    expected = {f"score-utterance-{u.id}": ("worker.jobs.score_utterance", (u.id,)) for u in utterances}
    expected[f"finalise-call-{call_id}"] = ("worker.jobs.finalise_call", (call_id,))
    assert set(queue.job_ids) == set(expected)
    for job_id, (func, args) in expected.items():
        job = queue.fetch_job(job_id)
        assert job is not None
        assert (job.func_name, job.args, job.kwargs) == (func, args, {})
        assert job.retries_left and job.retries_left > 0
        assert job.failure_ttl is not None and job.failure_ttl <= 7 * 24 * 3600


# ---------------------------------------------------------------------------------------------------
# StreamSession directly


def test_whole_call_becomes_utterances_and_jobs(tel_sessions: sessionmaker[Session], rq_queue: Queue) -> None:
    stream = prepare_call(tel_sessions)
    audio = synthetic_call(BURSTS, TOTAL_S)
    n = len(audio) // 160
    session = new_session(tel_sessions, rq_queue)
    for raw in stream.messages(audio, order=shuffled_order(n), duplicates=(10, 200), drop=(300,)):
        session.receive(raw)
    assert session.ended
    assert session.jitter.stats.duplicates == 2 and session.jitter.stats.gap_ms_filled == 20
    call, utterances = call_rows(tel_sessions, stream.call_sid)
    assert call.status == CallStatus.ENDED.value and call.ended_at is not None
    assert call.stream_sid == stream.stream_sid
    assert_utterances_match_bursts(tel_sessions, utterances)
    assert_jobs(rq_queue, utterances, call.id)


def test_dropped_stream_keeps_the_partial_utterance(tel_sessions: sessionmaker[Session], rq_queue: Queue) -> None:
    stream = prepare_call(tel_sessions)
    audio = synthetic_call([(1.0, 3.0)], 3.0)  # caller still talking when the socket dies
    session = new_session(tel_sessions, rq_queue)
    for raw in stream.messages(audio)[:-1]:  # no stop message
        session.receive(raw)
    assert not session.ended
    session.finish()
    session.finish()  # idempotent
    call, utterances = call_rows(tel_sessions, stream.call_sid)
    assert call.status == CallStatus.ENDED.value
    assert len(utterances) == 1 and utterances[0].end_ms == 3000
    assert f"finalise-call-{call.id}" in rq_queue.job_ids


def test_redis_down_leaves_utterances_pending_for_the_outbox(
    tel_sessions: sessionmaker[Session], down_queue: Queue, rq_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream = prepare_call(tel_sessions)
    session = new_session(tel_sessions, down_queue)
    calls: list[int] = []
    real_enqueue = session_module.enqueue_score_utterance

    def counting_enqueue(*args: object) -> bool:
        calls.append(1)
        return real_enqueue(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(session_module, "enqueue_score_utterance", counting_enqueue)
    for raw in stream.messages(synthetic_call(BURSTS, TOTAL_S)):
        session.receive(raw)
    # 3 utterances + finalisation deferred, but Redis was only tried once: no blocking per utterance
    assert session.counters.utterances_saved == 3 and session.counters.jobs_deferred == 4
    assert len(calls) == 1
    call, utterances = call_rows(tel_sessions, stream.call_sid)
    assert all(u.status == UtteranceStatus.PENDING.value for u in utterances)
    # not old enough yet: nothing happens
    assert requeue_pending(tel_sessions, rq_queue, older_than_s=3600) == 0
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert requeue_pending(tel_sessions, rq_queue, older_than_s=60, now=later) == 3
    assert requeue_pending(tel_sessions, rq_queue, older_than_s=60, now=later) == 0  # idempotent
    assert requeue_unfinalised(tel_sessions, rq_queue, older_than_s=60, now=later) == 1
    assert requeue_unfinalised(tel_sessions, rq_queue, older_than_s=60, now=later) == 0
    assert_jobs(rq_queue, utterances, call.id)
    # a scored utterance is never re-enqueued, even once its job is gone from Redis
    with session_scope(tel_sessions) as s:
        scored = s.get(Utterance, utterances[0].id)
        assert scored is not None
        scored.status = UtteranceStatus.SCORED.value
    for u in utterances[:2]:
        job = rq_queue.fetch_job(f"score-utterance-{u.id}")
        assert job is not None
        job.delete()
    assert requeue_pending(tel_sessions, rq_queue, older_than_s=60, now=later) == 1


def test_token_replay_is_refused(tel_sessions: sessionmaker[Session], rq_queue: Queue) -> None:
    stream = prepare_call(tel_sessions)
    first = new_session(tel_sessions, rq_queue)
    messages = stream.messages(b"\xff" * 1600)
    first.receive(messages[0])
    first.receive(messages[1])
    replay = new_session(tel_sessions, rq_queue)
    replay.receive(messages[0])
    with pytest.raises(ProtocolError) as info:
        replay.receive(messages[1])
    assert info.value.close_code == CLOSE_POLICY_VIOLATION and "already used" in info.value.reason


@pytest.mark.parametrize("case", ["other-call", "expired", "missing", "garbage"])
def test_bad_tokens_are_refused(tel_sessions: sessionmaker[Session], rq_queue: Queue, case: str) -> None:
    stream = prepare_call(tel_sessions)
    if case == "other-call":
        other = prepare_call(tel_sessions)
        stream.token = other.token
    elif case == "missing":
        stream.token = ""
    elif case == "garbage":
        stream.token = "v1.x.y.z"
    skew = timedelta(seconds=121 if case == "expired" else 0)
    session = StreamSession(
        tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY), clock=lambda: datetime.now(UTC) + skew
    )
    messages = stream.messages(b"\xff" * 160)
    session.receive(messages[0])
    with pytest.raises(ProtocolError) as info:
        session.receive(messages[1])
    assert info.value.close_code == CLOSE_POLICY_VIOLATION


def test_protocol_order_is_enforced(tel_sessions: sessionmaker[Session], rq_queue: Queue) -> None:
    stream = prepare_call(tel_sessions)
    session = new_session(tel_sessions, rq_queue)
    with pytest.raises(ProtocolError, match="not started"):
        session.receive(media_msg(stream.stream_sid, 1, 0, b"\xff" * 160, sequence=2))
    messages = stream.messages(b"\xff" * 160)
    session.receive(messages[1])
    with pytest.raises(ProtocolError, match="another stream"):
        session.receive(media_msg(new_sid("MZ"), 1, 0, b"\xff" * 160, sequence=3))
    with pytest.raises(ProtocolError, match="second start"):
        session.receive(messages[1])


def test_database_down_at_start_closes_with_internal_error(
    down_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    token = tokens.issue("CA" + "0" * 32, HMAC_KEY, 60).token
    stream = TwilioStream(call_sid="CA" + "0" * 32, token=token)
    session = new_session(down_sessions, rq_queue)
    with pytest.raises(ProtocolError) as info:
        session.receive(stream.messages(b"")[1])
    assert info.value.close_code == CLOSE_INTERNAL_ERROR


# ---------------------------------------------------------------------------------------------------
# the real socket


def connect(server: LiveServer, signature: str | None = None) -> websocket.WebSocket:
    headers = [] if signature is None else [f"X-Twilio-Signature: {signature}"]
    return websocket.create_connection(f"{server.ws_url}/twilio/stream", header=headers, timeout=20)


def read_close(ws: websocket.WebSocket) -> tuple[int, str]:
    while True:
        opcode, data = ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            return code, data[2:].decode("utf-8", "replace")


@pytest.mark.parametrize("case", ["missing", "wrong-token", "signed-for-host"])
def test_handshake_without_valid_signature_is_refused(live_server: LiveServer, case: str) -> None:
    signature = {
        "missing": None,
        "wrong-token": sign(STREAM_WSS_URL, token="not-the-auth-token"),
        "signed-for-host": sign(live_server.ws_url.replace("ws://", "wss://") + "/twilio/stream"),
    }[case]
    with pytest.raises(websocket.WebSocketBadStatusException) as info:
        connect(live_server, signature)
    assert info.value.status_code == 403


def test_whole_call_through_the_socket(
    live_server: LiveServer, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    stream = prepare_call(tel_sessions)
    audio = synthetic_call(BURSTS, TOTAL_S)
    ws = connect(live_server, sign(STREAM_WSS_URL))
    for raw in stream.messages(audio, order=shuffled_order(len(audio) // 160), duplicates=(5,)):
        ws.send(raw)
    assert read_close(ws) == (1000, "stream stopped")
    ws.close()
    call, utterances = call_rows(tel_sessions, stream.call_sid)
    assert call.status == CallStatus.ENDED.value
    assert_utterances_match_bursts(tel_sessions, utterances)
    assert_jobs(rq_queue, utterances, call.id)


def test_replayed_token_over_the_socket_is_closed_1008(
    live_server: LiveServer, tel_sessions: sessionmaker[Session]
) -> None:
    stream = prepare_call(tel_sessions)
    messages = stream.messages(b"\xff" * 1600)
    first = connect(live_server, sign(STREAM_WSS_URL))
    for raw in messages:
        first.send(raw)
    assert read_close(first)[0] == 1000
    first.close()
    replay = connect(live_server, sign(STREAM_WSS_URL))
    replay.send(messages[0])
    replay.send(messages[1])
    assert read_close(replay) == (CLOSE_POLICY_VIOLATION, "stream token already used")
    replay.close()


def test_malformed_message_closes_only_its_own_stream(
    live_server: LiveServer, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    good, bad = prepare_call(tel_sessions), prepare_call(tel_sessions)
    audio = synthetic_call(BURSTS, TOTAL_S)
    good_ws = connect(live_server, sign(STREAM_WSS_URL))
    bad_ws = connect(live_server, sign(STREAM_WSS_URL))
    good_messages = good.messages(audio)
    half = len(good_messages) // 2
    for raw in good_messages[:half]:
        good_ws.send(raw)
    for raw in bad.messages(audio)[:100]:
        bad_ws.send(raw)
    bad_ws.send('{"event": "media", "streamSid": "' + bad.stream_sid + '", "media": {"payload": "%%%"}}')
    assert read_close(bad_ws)[0] == CLOSE_INVALID_DATA
    bad_ws.close()
    for raw in good_messages[half:]:
        good_ws.send(raw)
    assert read_close(good_ws)[0] == 1000
    good_ws.close()
    _, utterances = call_rows(tel_sessions, good.call_sid)
    assert_utterances_match_bursts(tel_sessions, utterances)
    bad_call, _ = call_rows(tel_sessions, bad.call_sid)
    assert bad_call.status == CallStatus.ENDED.value  # what it had was flushed and finalised


def test_dropped_socket_is_flushed(live_server: LiveServer, tel_sessions: sessionmaker[Session]) -> None:
    stream = prepare_call(tel_sessions)
    ws = connect(live_server, sign(STREAM_WSS_URL))
    for raw in stream.messages(synthetic_call([(1.0, 3.0)], 3.0))[:-1]:
        ws.send(raw)
    assert ws.sock is not None
    ws.sock.close()  # vanish without stop or a close frame
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        call, utterances = call_rows(tel_sessions, stream.call_sid)
        if call.status == CallStatus.ENDED.value:
            break
        time.sleep(0.1)
    assert call.status == CallStatus.ENDED.value
    assert len(utterances) == 1


def test_concurrent_streams_do_not_interfere(
    live_server: LiveServer, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    streams = [prepare_call(tel_sessions) for _ in range(4)]
    audio = synthetic_call(BURSTS, TOTAL_S)
    errors: list[BaseException] = []

    def run(stream: TwilioStream) -> None:
        try:
            ws = connect(live_server, sign(STREAM_WSS_URL))
            for raw in stream.messages(audio):
                ws.send(raw)
            assert read_close(ws)[0] == 1000
            ws.close()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    for stream in streams:
        _, utterances = call_rows(tel_sessions, stream.call_sid)
        assert_utterances_match_bursts(tel_sessions, utterances)
    assert len(rq_queue.job_ids) == 4 * (len(BURSTS) + 1)


def test_oversized_frame_is_refused_with_1009(live_server: LiveServer) -> None:
    ws = connect(live_server, sign(STREAM_WSS_URL))
    ws.send("x" * (70 * 1024))
    assert read_close(ws)[0] == 1009
    ws.close()
