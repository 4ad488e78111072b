"""Redis stopped and started again in the middle of a call.

Real everything: the painline app serving the webhook and the Media Stream socket, a call replayed
over a real socket by ``painline.replay``, a real ``painline worker`` and a real ``painline sweep
--every 1`` process, all on a private Redis that the test stops (SIGTERM, nothing saved: every
queued job is gone when it comes back) and starts again mid-call.

What must hold: the call goes on (the socket is never blocked or closed by the outage, the replay
ends normally), every utterance the VAD cut is saved, and after the outage the worker and the
periodic sweep score every one of them exactly once and finalise the call. The sweep process and the
worker both have to ride out the outage themselves: nobody restarts them.
"""

from __future__ import annotations

import time

import pytest

from bench.soak.services import Outcome, outcome_counts
from tests.faults.helpers import FaultStack, replay_through_fault
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import synthetic_call

BURSTS = [(0.5 + 3.0 * k, 1.6) for k in range(8)]  # eight utterances, one every 3 s
CALL_S = 25.0
SPEED = 2.5  # the call takes 10 s on the wire


@pytest.mark.slow
@pytest.mark.parametrize("stream_process", [False, True], ids=["flask-route", "stream-process"])
def test_redis_restart_mid_call_loses_no_utterance(
    fault_stack: FaultStack,
    reliability: ReliabilityRecorder,
    stream_process: bool,
) -> None:
    url = fault_stack.url
    seen: dict[str, Outcome] = {}

    def restart_redis() -> None:
        seen["before"] = outcome_counts(url)
        fault_stack.redis.stop()
        time.sleep(3.0)  # two more utterances while Redis is down
        seen["during"] = outcome_counts(url)
        fault_stack.redis.start()

    # rq 3's worker quits when Redis refuses a connection at the wrong moment ("found an unhandled
    # exception, quitting"); painline.workers.run_worker waits for Redis and starts a fresh RQ
    # worker on the loaded model, so every process must still be up with nobody restarting it
    run = replay_through_fault(
        fault_stack,
        synthetic_call(BURSTS, CALL_S),
        fault=restart_redis,
        speed=SPEED,
        max_call_s=CALL_S / SPEED + 5,
        stream_process=stream_process,
    )
    final, before, during, exited = run.final, seen["before"], seen["during"], run.exited

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "redis-restart-mid-call" + ("-stream-process" if stream_process else ""),
        "fault",
        ("[painline stream] " if stream_process else "")
        + "Redis stopped (SIGTERM, no persistence: queued jobs lost) for 3 s in the middle of a call replayed over "
        "the real socket, `painline sweep --every 1` and a worker running; checked the call went on, no "
        "process quit, every utterance saved, scored exactly once, call finalised",
        survived and not exited,
        lost=len(BURSTS) - final.scored,
        detected=final.detected,
        scored=final.scored,
        expected=len(BURSTS),
        saved_before_outage=before.detected,
        saved_during_outage=during.detected - before.detected,
        duplicate_scores=final.duplicate_scores,
        processes_exited=exited,
    )
    assert not exited, f"processes quit with Redis: {exited}"
    assert during.detected > before.detected, "no utterance was saved while Redis was down"
    assert final.detected == len(BURSTS), final
    assert final.exactly_once, final
    assert final.calls_finalised == 1
