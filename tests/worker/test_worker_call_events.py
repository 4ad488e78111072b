"""Issue 13 leftover: the worker announces a score landing and a call's verdict on the call channel.

Real Redis: the tests subscribe to the deployment-style call channel the context publishes on, so what
is checked is the message a dashboard's event stream would relay (ids and the event type only).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from redis.client import PubSub
from sqlalchemy import select

from schema.contract import LiveEvent, call_channel
from schema.models import Call, CallStatus, Score, Utterance
from tests.worker_fixtures import add_utterance, make_call, make_patient, pain
from worker import jobs
from worker.context import WorkerContext
from worker.finalise import FinaliseOutcome
from worker.scoring import ScoreOutcome

IDS_ONLY = {"event", "call_id", "sent_at"}
"""What a call event may carry: no probability, level or anything about the caller (privacy rule)."""


@pytest.fixture
def listening(worker_ctx: WorkerContext, worker_redis: Redis) -> Iterator[PubSub]:
    """The context on a call channel of its own, with a subscriber already listening to it."""
    worker_ctx.call_channel = call_channel(f"test-{secrets.token_hex(6)}")
    pubsub = worker_redis.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(worker_ctx.call_channel)
    while pubsub.get_message(timeout=0.5) is not None:  # the subscribe confirmation
        pass
    try:
        yield pubsub
    finally:
        pubsub.close()


def _received(pubsub: PubSub, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """Every message published within ``timeout_s`` (the publishes happened before this is called)."""
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            out.append(json.loads(message["data"]))
    return out


def _call_with_utterances(ctx: WorkerContext, count: int, seed: int) -> tuple[int, list[int]]:
    with ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        ids = [add_utterance(s, call, i, pain(seed=seed + i)) for i in range(count)]
        return call.id, ids


def test_each_scored_utterance_announces_call_scored_with_ids_only(
    worker_ctx: WorkerContext, listening: PubSub
) -> None:
    call_id, ids = _call_with_utterances(worker_ctx, 2, seed=300)
    assert [jobs.score_utterance(uid) for uid in ids] == [ScoreOutcome.SCORED, ScoreOutcome.SCORED]
    assert jobs.score_utterance(ids[0]) == ScoreOutcome.ALREADY_SCORED  # a retry lands nothing new
    messages = _received(listening)
    assert [m["event"] for m in messages] == [LiveEvent.CALL_SCORED.value] * 2
    for message in messages:
        assert set(message) == IDS_ONLY and message["call_id"] == call_id
    with worker_ctx.sessions() as s:  # announced after the commit: a page re-reading sees both scores
        scored = s.scalars(select(Score.id).join(Utterance).where(Utterance.call_id == call_id)).all()
    assert len(scored) == 2


def test_finalising_announces_call_finalised_once(worker_ctx: WorkerContext, listening: PubSub) -> None:
    call_id, ids = _call_with_utterances(worker_ctx, 2, seed=310)
    for uid in ids:
        jobs.score_utterance(uid)
    _received(listening, timeout_s=0.5)  # the two call.scored
    outcome = jobs.finalise_call(call_id)
    assert outcome in {FinaliseOutcome.PAIN_LIKELY, FinaliseOutcome.NO_PAIN, FinaliseOutcome.INCONCLUSIVE}
    assert jobs.finalise_call(call_id) == FinaliseOutcome.ALREADY_FINALISED  # nothing changed: no event
    assert _received(listening) == [
        {"event": LiveEvent.CALL_FINALISED.value, "call_id": call_id, "sent_at": pytest.approx(time.time(), abs=10)}
    ]
    with worker_ctx.sessions() as s:
        assert s.get_one(Call, call_id).status == CallStatus.FINALISED.value


def test_a_redis_outage_while_announcing_fails_neither_scoring_nor_finalising(
    worker_ctx: WorkerContext, caplog: pytest.LogCaptureFixture
) -> None:
    worker_ctx.call_channel = call_channel(f"test-{secrets.token_hex(6)}")
    worker_ctx.redis = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)  # refused
    call_id, ids = _call_with_utterances(worker_ctx, 2, seed=320)
    caplog.set_level(logging.WARNING, logger="schema.contract")
    assert [jobs.score_utterance(uid) for uid in ids] == [ScoreOutcome.SCORED, ScoreOutcome.SCORED]
    assert jobs.finalise_call(call_id) != FinaliseOutcome.MISSING
    with worker_ctx.sessions() as s:
        assert s.get_one(Call, call_id).status == CallStatus.FINALISED.value
    not_announced = [r.getMessage() for r in caplog.records if "not announced" in r.getMessage()]
    assert not_announced == [
        f"call {call_id}: call.scored not announced (ConnectionError)",
        f"call {call_id}: call.scored not announced (ConnectionError)",
        f"call {call_id}: call.finalised not announced (ConnectionError)",
    ]  # tried after each commit, logged, and the jobs carried on
