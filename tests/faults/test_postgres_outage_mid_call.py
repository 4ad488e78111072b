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

import threading
import time
from pathlib import Path

import pytest
from redis import Redis

from bench.soak.services import (
    PainlineProcess,
    PrivatePostgres,
    PrivateRedis,
    outcome_counts,
    painline_environment,
    wait_until,
)
from painline.replay import ReplayResult, replay_call
from tests.faults.helpers import AUTH_TOKEN, QUEUE, serve_app, worker
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import synthetic_call

BURSTS = [(0.5 + 3.0 * k, 1.6) for k in range(8)]  # eight utterances, one every 3 s
CALL_S = 25.0
SPEED = 2.5  # the call takes 10 s on the wire
OUTAGE_S = 4.0  # at least one utterance ends inside it


@pytest.mark.slow
def test_postgres_outage_mid_call_loses_no_utterance(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    pain_model_path: Path,
    tmp_path: Path,
    reliability: ReliabilityRecorder,
) -> None:
    url = private_postgres.url
    connection = Redis.from_url(private_redis.url)
    env = painline_environment(database_url=url, redis_url=private_redis.url, queue_name=QUEUE,
                               model_path=pain_model_path, var_dir=tmp_path / "var")
    sweeper = PainlineProcess(["sweep", "--every", "1", "--older-than", "2"], env, tmp_path / "sweep.log").start()
    processes = [sweeper, worker(url, private_redis.url, pain_model_path, tmp_path, connection, "w1")]
    result: dict[str, ReplayResult | BaseException] = {}
    try:
        with serve_app(url, private_redis.url, tmp_path / "var") as app:
            mulaw = synthetic_call(BURSTS, CALL_S)

            def call() -> None:
                try:
                    result["replay"] = replay_call(mulaw, base_url=app.url, public_url=app.url,
                                                   auth_token=AUTH_TOKEN, speed=SPEED)
                except BaseException as exc:  # reported below
                    result["replay"] = exc

            caller = threading.Thread(target=call, name="caller")
            caller.start()
            time.sleep(3.0)  # the call has started and a utterance or two are saved
            private_postgres.stop("fast")
            time.sleep(OUTAGE_S)
            private_postgres.start()
            caller.join(60)
            assert not caller.is_alive()
        replay = result["replay"]
        assert isinstance(replay, ReplayResult), f"the call did not go on: {replay!r}"
        assert replay.close_code == 1000, replay.close_code

        wait_until(lambda: outcome_counts(url).scored >= len(BURSTS) and outcome_counts(url).calls_finalised,
                   120, interval_s=0.5, message="every utterance scored and the call finalised")
        time.sleep(2.0)  # a few more sweeps: nothing may run twice
        final = outcome_counts(url)
    finally:
        for process in processes:
            process.stop()
        connection.close()

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "postgres-outage-mid-call",
        "fault",
        f"PostgreSQL stopped (fast shutdown, connections cut) for {OUTAGE_S:.0f} s in the middle of a call replayed "
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
