"""Each bad-stream class driven through StreamSession directly, on real PostgreSQL and Redis.

The parser decides what a single frame means; the session decides what a frame means *here*: media
before start, a second start, a stop for another stream, anything after stop, floods and jumps.
Each must raise ProtocolError with its specific close code, and a stream closed that way must still
be finished cleanly (its call marked ended, nothing half-written).
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from schema.db import session_scope
from schema.models import Call, CallStatus, Utterance
from telephony import session as session_module
from telephony import tokens
from telephony.messages import CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG, ProtocolError
from telephony.session import StreamConfig, StreamSession
from tests.badinput.scenarios import FRAME, SCENARIOS, TOLERATED, Frame, Scenario
from tests.badinput.strategies import CALL as STRATEGY_CALL
from tests.badinput.strategies import STREAM as STRATEGY_STREAM
from tests.badinput.strategies import encode, mutated_message
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import HMAC_KEY, TwilioStream, media_msg, new_sid, synthetic_call


def prepare_call(sessions: sessionmaker[Session]) -> TwilioStream:
    """What the voice webhook leaves behind: a call row and an unused token."""
    call_sid = new_sid("CA")
    issued = tokens.issue(call_sid, HMAC_KEY, 120)
    with session_scope(sessions) as session:
        session.add(Call(call_sid=call_sid, consent=True))
        tokens.record(session, issued)
    return TwilioStream(call_sid=call_sid, token=issued.token)


def call_status(sessions: sessionmaker[Session], call_sid: str) -> str:
    with sessions() as session:
        return session.scalars(select(Call.status).where(Call.call_sid == call_sid)).one()


def feed_until_refused(session: StreamSession, frames: Sequence[Frame]) -> tuple[int, ProtocolError | None]:
    """Feed frames until one is refused; returns how many were accepted and the error (None if none)."""
    for i, raw in enumerate(frames):
        try:
            session.receive(raw)
        except ProtocolError as exc:
            return i, exc
    return len(frames), None


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_bad_stream_is_refused_with_its_code(
    scenario: Scenario, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    stream = prepare_call(tel_sessions)
    frames = scenario.build(stream)
    session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
    accepted, error = feed_until_refused(session, frames)
    assert error is not None, f"{scenario.name}: all {len(frames)} frames accepted"
    assert (error.close_code, scenario.reason in error.reason) == (scenario.code, True), error.reason
    if "flood" not in scenario.name:
        assert accepted == len(frames) - 1  # refused exactly at the bad frame, not before
    session.finish()  # what the socket handler does next
    expected = CallStatus.ENDED.value if scenario.started else CallStatus.STREAMING.value
    assert call_status(tel_sessions, stream.call_sid) == expected


@pytest.mark.parametrize("scenario", [s for s in TOLERATED if s.name != "messages-after-stop"], ids=lambda s: s.name)
def test_tolerated_oddities_stream_to_the_end(
    scenario: Scenario, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    stream = prepare_call(tel_sessions)
    session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
    for raw in scenario.build(stream):
        session.receive(raw)
    assert session.ended
    assert call_status(tel_sessions, stream.call_sid) == CallStatus.ENDED.value


def test_every_message_after_stop_is_refused(tel_sessions: sessionmaker[Session], rq_queue: Queue) -> None:
    stream = prepare_call(tel_sessions)
    frames = next(s for s in TOLERATED if s.name == "messages-after-stop").build(stream)
    stop_at = next(i for i, raw in enumerate(frames) if '"stop"' in str(raw))
    session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
    for raw in frames[: stop_at + 1]:
        session.receive(raw)
    for raw in frames[stop_at + 1 :]:
        with pytest.raises(ProtocolError, match="after stop") as info:
            session.receive(raw)
        assert info.value.close_code == CLOSE_POLICY_VIOLATION


def test_real_time_both_tracks_and_fast_audio_are_not_floods(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A both_tracks stream sends an ignored outbound frame per inbound one, 50 a second: allowed.

    The burst allowance is shrunk to 10 so the rate decides. The same call's inbound audio sent with
    no clock advance at all (as replays and benchmarks send it) must not count against the allowance.
    """
    now = [1000.0]
    monkeypatch.setattr(session_module.time, "monotonic", lambda: now[0])
    config = StreamConfig(hmac_key=HMAC_KEY, flood_burst_messages=10, flood_messages_per_s=150)
    audio = synthetic_call([(0.5, 1.0)], 2.0)
    for both_tracks in (True, False):
        stream = prepare_call(tel_sessions)
        session = StreamSession(tel_sessions, rq_queue, config)
        frames = stream.messages(audio)
        for raw in frames[:2]:
            session.receive(raw)
        for raw in frames[2:-1]:
            session.receive(raw)
            if both_tracks:
                session.receive(raw.replace('"inbound"', '"outbound"'))
                now[0] += 0.02  # real time
        session.receive(frames[-1])
        assert session.ended and session.counters.utterances_saved == 1


def test_flood_allowance_refills_at_the_configured_rate(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicates at 100 per second pass a 150-per-second allowance; at 300 per second they do not."""
    now = [1000.0]
    monkeypatch.setattr(session_module.time, "monotonic", lambda: now[0])
    stream = prepare_call(tel_sessions)
    session = StreamSession(
        tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY, flood_burst_messages=10, flood_messages_per_s=150)
    )
    opening = stream.messages(FRAME * 2)[:3]
    for raw in opening:
        session.receive(raw)
    duplicate = opening[2]
    for _ in range(500):  # 5 s at 100/s
        now[0] += 0.01
        session.receive(duplicate)
    with pytest.raises(ProtocolError, match="message flood"):
        for _ in range(5000):  # now 300/s
            now[0] += 1 / 300
            session.receive(duplicate)
    assert session.jitter.stats.duplicates > 500


def test_session_classes_recorded(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, reliability: ReliabilityRecorder
) -> None:
    """One reliability row per bad-stream class, from a fresh run of each through StreamSession."""
    for scenario in SCENARIOS:
        stream = prepare_call(tel_sessions)
        session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
        _, error = feed_until_refused(session, scenario.build(stream))
        session.finish()
        ok = error is not None and error.close_code == scenario.code and scenario.reason in error.reason
        reliability.record_outcome(
            f"bad-input-session-{scenario.name}",
            "bad input",
            f"StreamSession fed {scenario.detail}: expect ProtocolError {scenario.code}"
            f" ({scenario.reason or 'too big'}) and a cleanly finished stream",
            survived=ok,
            close_code=None if error is None else error.close_code,
        )
        assert ok, (scenario.name, error)
    with tel_sessions() as s:  # no stream above carried speech, so nothing was saved as an utterance
        assert s.scalars(select(Utterance)).all() == []


def test_media_before_start_then_real_stream_still_refused(
    tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    """Once refused, a session stays refused: the socket closes; a retry needs a new socket and start."""
    stream = prepare_call(tel_sessions)
    session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
    with pytest.raises(ProtocolError, match="not started"):
        session.receive(media_msg(stream.stream_sid, 1, 0, FRAME, sequence=1))
    session.finish()
    with pytest.raises(ProtocolError, match="after stop"):
        session.receive(stream.messages(FRAME)[1])


@settings(
    max_examples=80,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    frames=st.lists(
        mutated_message(("media", "mark", "dtmf", "stop", "connected", "start")).map(
            lambda m: encode(m, as_bytes=False)
        ),
        min_size=1,
        max_size=12,
    )
)
def test_mutated_messages_after_a_real_start_end_cleanly(
    tel_sessions: sessionmaker[Session], rq_queue: Queue, frames: list[str]
) -> None:
    """Any mix of wrong-but-plausible messages after a real start: documented close codes only, and
    the stream still finishes (call ended, nothing raised) however it was cut off."""
    stream = prepare_call(tel_sessions)
    session = StreamSession(tel_sessions, rq_queue, StreamConfig(hmac_key=HMAC_KEY))
    opening = stream.messages(FRAME)
    session.receive(opening[0])
    session.receive(opening[1])
    for raw in frames:
        # the strategies' documented messages name their own stream and call: point them at this one
        raw = raw.replace(STRATEGY_STREAM, stream.stream_sid).replace(STRATEGY_CALL, stream.call_sid)
        try:
            session.receive(raw)
        except ProtocolError as exc:
            assert exc.close_code in (CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG)
            break
    session.finish()
    assert call_status(tel_sessions, stream.call_sid) == CallStatus.ENDED.value
