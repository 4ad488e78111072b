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


@pytest.mark.slow
def test_redis_restart_mid_call_loses_no_utterance(
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
            time.sleep(3.0)  # two utterances in: saved, enqueued, probably scored
            before = outcome_counts(url)
            private_redis.stop()
            time.sleep(3.0)  # two more utterances while Redis is down
            during = outcome_counts(url)
            private_redis.start()
            caller.join(60)
            assert not caller.is_alive()
        # rq 3's worker quits when Redis refuses a connection at the wrong moment ("found an unhandled
        # exception, quitting"); painline.workers.run_worker waits for Redis and starts a fresh RQ
        # worker on the loaded model, so the process must still be up with nobody restarting it
        exited = [p.args[0] for p in processes if not p.alive]
        assert not exited, f"processes quit with Redis: {exited}"
        replay = result["replay"]
        assert isinstance(replay, ReplayResult), f"the call did not go on: {replay!r}"
        assert replay.close_code == 1000, replay.close_code
        assert replay.elapsed_s < CALL_S / SPEED + 5  # never blocked on the outage

        wait_until(lambda: outcome_counts(url).scored >= len(BURSTS) and outcome_counts(url).calls_finalised,
                   90, interval_s=0.5, message="every utterance scored and the call finalised")
        time.sleep(2.0)  # a few more sweeps: nothing may run twice
        final = outcome_counts(url)
        assert sweeper.alive, "the sweeper died with Redis"
    finally:
        for process in processes:
            process.stop()
        connection.close()

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "redis-restart-mid-call",
        "fault",
        "Redis stopped (SIGTERM, no persistence: queued jobs lost) for 3 s in the middle of a call replayed over "
        "the real socket, `painline sweep --every 1` and a worker running (restarted if it quit); checked the "
        "call went on, every utterance saved, scored exactly once, call finalised",
        survived,
        lost=len(BURSTS) - final.scored,
        detected=final.detected,
        scored=final.scored,
        expected=len(BURSTS),
        saved_before_outage=before.detected,
        saved_during_outage=during.detected - before.detected,
        duplicate_scores=final.duplicate_scores,
        processes_exited_and_restarted=exited,
    )
    assert during.detected > before.detected, "no utterance was saved while Redis was down"
    assert final.detected == len(BURSTS), final
    assert final.exactly_once, final
    assert final.calls_finalised == 1
