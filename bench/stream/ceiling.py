"""The ceiling: what the bare per-frame work costs, and how many calls per core it would allow.

The server cannot do better than the work every media frame needs: parse the JSON message and
validate it, base64-decode the payload (both in :func:`telephony.messages.parse_message`), place it in
the jitter buffer and run the VAD segmenter on what comes out (:mod:`telephony.jitter`,
:mod:`analysis.segmentation`) -- the same functions the socket handler calls, in a tight loop over real call
audio with no socket, thread, database or queue. ``calls_per_core = 1 / (50 frames/s x cost)``;
the benchmark's efficiency is the calls the server sustained divided by the calls this allows on
the cores the machine has.

Utterances the segmenter closes are counted but not persisted: persistence is part of the measured
server cost, not of this floor.
"""

from __future__ import annotations

import os
import time
from typing import Any

from analysis.segmentation import UtteranceSegmenter, VadConfig
from bench.stream.calls import encode_call
from telephony.jitter import JitterBuffer
from telephony.messages import parse_message

FRAMES_PER_S = 50


def _one_pass(messages: list[str]) -> tuple[float, int]:
    jitter = JitterBuffer()
    segmenter = UtteranceSegmenter(VadConfig())
    utterances = 0
    cpu = time.process_time
    began = cpu()
    for raw in messages:
        media = parse_message(raw)
        for frame in jitter.push(media.timestamp_ms, media.payload):  # type: ignore[union-attr]
            utterances += len(segmenter.push(frame.timestamp_ms, frame.data))
    return cpu() - began, utterances


def measure(calls: int = 4, duration_s: float = 60.0, repeats: int = 3) -> dict[str, Any]:
    """Per-frame CPU of the bare work over ``calls`` different callers; the best of ``repeats`` passes."""
    encoded = [encode_call(i, duration_s) for i in range(calls)]
    frames = sum(len(c.media) for c in encoded)
    best = float("inf")
    utterances = 0
    for _ in range(repeats):
        total = 0.0
        utterances = 0
        for call in encoded:
            seconds, n = _one_pass(call.media)
            total += seconds
            utterances += n
        best = min(best, total)
    per_frame_s = best / frames
    per_core = 1.0 / (FRAMES_PER_S * per_frame_s)
    cores = os.cpu_count() or 1
    return {
        "frames": frames,
        "utterances_cut": utterances,
        "per_frame_cpu_us": round(per_frame_s * 1e6, 2),
        "calls_per_core": round(per_core, 1),
        "cores": cores,
        "ceiling_calls": round(per_core * cores, 1),
        "work": "parse_message(json) incl. base64 + JitterBuffer.push + UtteranceSegmenter.push (webrtcvad)",
    }
