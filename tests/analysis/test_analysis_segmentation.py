"""The utterance segmenter finds speech-like bursts at the right stream times."""

from __future__ import annotations

import itertools

import pytest

from analysis.segmentation import SegmentedUtterance, UtteranceSegmenter, VadConfig
from telephony.jitter import JitterBuffer
from tests.telephony_fixtures import synthetic_call

FRAME = 160


def segment(audio: bytes, config: VadConfig | None = None) -> list[SegmentedUtterance]:
    seg = UtteranceSegmenter(config or VadConfig())
    out: list[SegmentedUtterance] = []
    for i in range(0, len(audio) - FRAME + 1, FRAME):
        out += seg.push(i // 8, audio[i : i + FRAME])
    return out + seg.flush()


def assert_covers(u: SegmentedUtterance, start_s: float, end_s: float, slack_ms: int = 600) -> None:
    """The utterance contains the burst, plus no more than ``slack_ms`` either side."""
    assert start_ms(start_s) - slack_ms <= u.start_ms <= start_ms(start_s)
    assert start_ms(end_s) <= u.end_ms <= start_ms(end_s) + slack_ms


def start_ms(seconds: float) -> int:
    return round(seconds * 1000)


def test_finds_each_burst_at_its_stream_time() -> None:
    audio = synthetic_call([(1.0, 2.0), (4.5, 1.5), (8.0, 3.0)], total_s=12.0)
    utterances = segment(audio)
    assert [u.seq for u in utterances] == [0, 1, 2]
    for u, (s, d) in zip(utterances, [(1.0, 2.0), (4.5, 1.5), (8.0, 3.0)], strict=True):
        assert_covers(u, s, s + d)
        assert len(u.mulaw) == (u.end_ms - u.start_ms) * 8  # audio matches the span exactly
        assert 0.7 * d <= u.speech_s <= u.duration_s


def test_audio_is_the_original_bytes() -> None:
    audio = synthetic_call([(1.0, 1.5)], total_s=4.0)
    (u,) = segment(audio)
    assert u.mulaw == audio[u.start_ms * 8 : u.end_ms * 8]


def test_silence_and_short_clicks_make_no_utterance() -> None:
    assert segment(synthetic_call([], total_s=5.0)) == []
    assert segment(synthetic_call([(1.0, 0.25)], total_s=3.0), VadConfig(min_speech_ms=500)) == []


def test_long_speech_is_split_at_the_maximum_length_without_losing_audio() -> None:
    audio = synthetic_call([(0.5, 23.0)], total_s=25.0)
    utterances = segment(audio, VadConfig(max_utterance_ms=10_000))
    assert len(utterances) == 3
    assert all(u.end_ms - u.start_ms <= 10_000 for u in utterances)
    for a, b in itertools.pairwise(utterances):
        assert a.end_ms == b.start_ms  # contiguous pieces
    assert utterances[0].start_ms <= 500 and utterances[-1].end_ms >= 23_500


def test_flush_emits_speech_cut_off_by_the_end_of_the_stream() -> None:
    audio = synthetic_call([(1.0, 3.0)], total_s=2.5)  # still talking at hang-up
    seg = UtteranceSegmenter()
    pushed = []
    for i in range(0, len(audio), FRAME):
        pushed += seg.push(i // 8, audio[i : i + FRAME])
    assert pushed == [] and seg.in_utterance
    (u,) = seg.flush()
    assert u.end_ms == 2500 and u.start_ms < 1000


def test_times_follow_frame_timestamps_through_the_jitter_buffer() -> None:
    """Bursts keep their stream time even when chunks arrive shuffled and one is lost."""
    audio = synthetic_call([(2.0, 1.5)], total_s=5.0)
    chunks = [(i * 20, audio[i * FRAME : (i + 1) * FRAME]) for i in range(len(audio) // FRAME)]
    shuffled = []
    for i in range(0, len(chunks), 4):
        shuffled += list(reversed(chunks[i : i + 4]))
    del shuffled[50]
    jitter, seg = JitterBuffer(), UtteranceSegmenter()
    out: list[SegmentedUtterance] = []
    for ts, payload in shuffled:
        for frame in jitter.push(ts, payload):
            out += seg.push(frame.timestamp_ms, frame.data)
    for frame in jitter.flush():
        out += seg.push(frame.timestamp_ms, frame.data)
    out += seg.flush()
    (u,) = out
    assert_covers(u, 2.0, 3.5)


def test_aggressiveness_and_frame_size_are_checked() -> None:
    with pytest.raises(ValueError):
        VadConfig(aggressiveness=4)
    with pytest.raises(ValueError):
        UtteranceSegmenter().push(0, b"\xff" * 100)
