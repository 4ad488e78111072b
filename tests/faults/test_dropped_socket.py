"""A Media Stream socket that vanishes without ``stop`` (the caller's network, a Twilio edge restart).

Over the real app and a real socket: the call streams three utterances, the last one cut off in the
middle of a word, then the TCP connection just ends (no ``stop``, no close frame). The utterances so
far, the cut-off one included, must be kept; the call must be marked ended and, through a real
``painline worker``, every utterance scored exactly once and the call finalised. No sweep runs here:
the socket handler's own clean-up has to do it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from redis import Redis

from bench.soak.services import PrivatePostgres, PrivateRedis, outcome_counts, wait_until
from tests.faults.helpers import open_stream, serve_app, worker
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import synthetic_call

BURSTS = [(0.5, 1.5), (3.0, 1.5), (5.5, 2.0)]
CUT_AT_S = 6.5  # one second into the third utterance


@pytest.mark.slow
def test_socket_dropped_without_stop_keeps_and_finalises(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    pain_model_path: Path,
    tmp_path: Path,
    reliability: ReliabilityRecorder,
) -> None:
    url = private_postgres.url
    connection = Redis.from_url(private_redis.url)
    process = worker(url, private_redis.url, pain_model_path, tmp_path, connection, "w1")
    try:
        with serve_app(url, private_redis.url, tmp_path / "var") as app:
            stream = open_stream(app.url)
            stream.send_audio(synthetic_call(BURSTS, CUT_AT_S))
            stream.drop()
            wait_until(lambda: outcome_counts(url).calls_finalised == 1, 60, interval_s=0.25,
                       message="call finalised after the drop")
        final = outcome_counts(url)
    finally:
        process.stop()
        connection.close()

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "socket-dropped-without-stop",
        "fault",
        "the stream's TCP connection ended mid-utterance with no stop message and no close frame; checked the "
        "utterances so far (the cut-off one included) kept and scored exactly once, call ended and finalised",
        survived,
        lost=len(BURSTS) - final.scored,
        detected=final.detected,
        scored=final.scored,
        expected=len(BURSTS),
    )
    assert final.detected == len(BURSTS), final
    assert final.exactly_once, final
    assert final.calls_finalised == 1
