"""A Media Stream socket that vanishes without ``stop`` (the caller's network, a Twilio edge restart).

Over the real app and a real socket: the call streams three utterances, the last one cut off in the
middle of a word, then the TCP connection just ends (no ``stop``, no close frame). The utterances so
far, the cut-off one included, must be kept; the call must be marked ended and, through a real
``painline worker``, every utterance scored exactly once and the call finalised. No sweep runs here:
the socket handler's own clean-up has to do it.
"""

from __future__ import annotations

import pytest

from bench.soak.services import outcome_counts, wait_until
from tests.faults.helpers import FaultStack, open_stream
from tests.reliability import ReliabilityRecorder
from tests.telephony_fixtures import synthetic_call

BURSTS = [(0.5, 1.5), (3.0, 1.5), (5.5, 2.0)]
CUT_AT_S = 6.5  # one second into the third utterance


@pytest.mark.slow
@pytest.mark.parametrize("stream_process", [False, True], ids=["flask-route", "stream-process"])
def test_socket_dropped_without_stop_keeps_and_finalises(
    fault_stack: FaultStack,
    reliability: ReliabilityRecorder,
    stream_process: bool,
) -> None:
    url = fault_stack.url
    fault_stack.worker("w1")
    with fault_stack.serve_app(stream_process=stream_process) as app:
        stream = open_stream(app)
        stream.send_audio(synthetic_call(BURSTS, CUT_AT_S))
        stream.drop()
        wait_until(
            lambda: outcome_counts(url).calls_finalised == 1,
            60,
            interval_s=0.25,
            message="call finalised after the drop",
        )
    final = outcome_counts(url)

    survived = final.exactly_once and final.detected == len(BURSTS) and final.calls_finalised == 1
    reliability.record_outcome(
        "socket-dropped-without-stop" + ("-stream-process" if stream_process else ""),
        "fault",
        ("[painline stream] " if stream_process else "")
        + "the stream's TCP connection ended mid-utterance with no stop message and no close frame; checked the "
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
