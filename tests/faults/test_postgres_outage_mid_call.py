"""PostgreSQL stopped in the middle of a call: the utterances that end meanwhile wait in memory.

Real everything, as in the Redis restart test: the painline app, a call replayed over a real socket,
a real worker and ``painline sweep --every 1``, on a private PostgreSQL cluster that the test stops
(fast shutdown: every client connection is cut) for a few seconds mid-call and starts again.

What must hold: the call goes on unblocked, the utterances that ended during the outage are saved
once the database is back (``StreamSession`` keeps them in memory and retries), and every
utterance is scored exactly once and the call finalised. Before this backlog existed those
utterances were dropped (the 1,000-call soak counted 35).
"""

from __future__ import annotations

import time

import pytest

from tests.faults.helpers import FaultStack, replay_through_fault
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import synthetic_call

BURSTS = [(0.5 + 3.0 * k, 1.6) for k in range(8)]  # eight utterances, one every 3 s
CALL_S = 25.0
SPEED = 2.5  # the call takes 10 s on the wire
OUTAGE_S = 4.0  # at least one utterance ends inside it


@pytest.mark.slow
@pytest.mark.parametrize("stream_process", [False, True], ids=["flask-route", "stream-process"])
def test_postgres_outage_mid_call_loses_no_utterance(
    fault_stack: FaultStack,
    reliability: ReliabilityRecorder,
    stream_process: bool,
) -> None:
    def stop_postgres() -> None:
        fault_stack.postgres.stop("fast")
        time.sleep(OUTAGE_S)
        fault_stack.postgres.start()

    final = replay_through_fault(
        fault_stack,
        synthetic_call(BURSTS, CALL_S),
        fault=stop_postgres,
        speed=SPEED,
        max_call_s=CALL_S / SPEED + OUTAGE_S + 5,
        stream_process=stream_process,
    ).final

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "postgres-outage-mid-call" + ("-stream-process" if stream_process else ""),
        "fault",
        ("[painline stream] " if stream_process else "")
        + f"PostgreSQL stopped (fast shutdown, connections cut) for {OUTAGE_S:.0f} s in the middle of a call replayed "
        "over the real socket; checked the call went on, the utterances that ended during the outage were saved "
        "afterwards from memory, every utterance scored exactly once, call finalised",
        survived,
        lost=len(BURSTS) - final.detected,
        detected=final.detected,
        scored=final.scored,
        expected=len(BURSTS),
        duplicate_scores=final.duplicate_scores,
    )
    assert final.detected == len(BURSTS), final
    assert final.exactly_once, final
    assert final.calls_finalised == 1
