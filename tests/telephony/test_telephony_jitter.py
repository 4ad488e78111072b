"""The jitter buffer places audio by timestamp: reordering, duplicates, losses and lateness."""

from __future__ import annotations

import pytest

from telephony.jitter import MULAW_SILENCE, JitterBuffer, TimestampJump


def chunk(i: int, size: int = 160) -> bytes:
    """Distinct content per chunk index, never the silence byte."""
    return bytes([i % 200]) * size


def run(buffer: JitterBuffer, pushes: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    frames = []
    for ts, payload in pushes:
        frames += [(f.timestamp_ms, f.data) for f in buffer.push(ts, payload)]
    frames += [(f.timestamp_ms, f.data) for f in buffer.flush()]
    return frames


def test_in_order_audio_passes_straight_through() -> None:
    buffer = JitterBuffer()
    out = buffer.push(0, chunk(0))
    assert [(f.timestamp_ms, f.data) for f in out] == [(0, chunk(0))]  # no reorder delay when contiguous
    passed = run(buffer, [(20 * i, chunk(i)) for i in range(1, 50)])
    assert [ts for ts, _ in passed] == [20 * i for i in range(1, 50)]
    assert buffer.stats.frames_in == 50 and buffer.stats.gap_ms_filled == 0


def test_out_of_order_chunks_are_put_back_in_place() -> None:
    order = [0, 2, 1, 3, 6, 4, 5, 7, 9, 8]
    buffer = JitterBuffer(window_ms=200)
    out = run(buffer, [(20 * i, chunk(i)) for i in order])
    assert out == [(20 * i, chunk(i)) for i in range(10)]
    assert buffer.stats.late == 0 and buffer.stats.duplicates == 0 and buffer.stats.gap_ms_filled == 0


def test_duplicates_are_dropped_and_counted() -> None:
    buffer = JitterBuffer()
    pushes = [(0, chunk(0)), (20, chunk(1)), (20, chunk(1)), (40, chunk(2)), (0, chunk(0)), (60, chunk(3))]
    out = run(buffer, pushes)
    assert out == [(20 * i, chunk(i)) for i in range(4)]
    assert buffer.stats.duplicates == 2


def test_missing_chunk_becomes_silence_once_the_window_passes() -> None:
    buffer = JitterBuffer(window_ms=100)
    frames = []
    for i in [0, 1, 3, 4, 5, 6, 7, 8]:  # chunk 2 (40 ms) never arrives
        frames += buffer.push(20 * i, chunk(i))
        if i == 3:
            assert [f.timestamp_ms for f in frames] == [0, 20]  # waiting for the hole
    assert [f.timestamp_ms for f in frames][:4] == [0, 20, 40, 60]
    assert frames[2].data == bytes([MULAW_SILENCE]) * 160
    assert frames[3].data == chunk(3)
    assert buffer.stats.gap_ms_filled == 20


def test_chunk_arriving_after_its_slot_was_filled_is_late() -> None:
    buffer = JitterBuffer(window_ms=60)
    run_frames = []
    for i in [0, 2, 3, 4, 5, 6]:
        run_frames += buffer.push(20 * i, chunk(i))
    assert any(f.timestamp_ms == 20 for f in run_frames)  # hole already filled
    assert buffer.push(20, chunk(1)) == []
    assert buffer.stats.late == 1


def test_flush_fills_holes_and_pads_the_tail() -> None:
    buffer = JitterBuffer(window_ms=1000)
    frames = buffer.push(0, chunk(0))
    frames += buffer.push(60, chunk(3, size=80))  # 10 ms, after a 40 ms hole
    frames += buffer.flush()
    out = [(f.timestamp_ms, f.data) for f in frames]
    assert [ts for ts, _ in out] == [0, 20, 40, 60]
    assert out[3][1] == chunk(3, size=80) + bytes([MULAW_SILENCE]) * 80
    assert buffer.stats.gap_ms_filled == 40


def test_chunk_sizes_come_from_the_payload() -> None:
    buffer = JitterBuffer()
    out = run(buffer, [(0, chunk(0, 320)), (40, chunk(1, 80)), (50, chunk(2, 80)), (60, chunk(3, 160))])
    assert [ts for ts, _ in out] == [0, 20, 40, 60]
    assert out[2][1] == chunk(1, 80) + chunk(2, 80)


def test_leading_offset_is_stream_time() -> None:
    buffer = JitterBuffer(window_ms=20)
    out = run(buffer, [(5, chunk(0)), (25, chunk(1))])
    assert out[0][0] == 0 and out[0][1][:40] == bytes([MULAW_SILENCE]) * 40


def test_absurd_timestamp_jump_is_refused() -> None:
    buffer = JitterBuffer(max_gap_ms=1000)
    buffer.push(0, chunk(0))
    with pytest.raises(TimestampJump):
        buffer.push(10**9, chunk(1))


def test_frames_are_never_reordered_or_overlapping_under_heavy_shuffling() -> None:
    import random

    rng = random.Random(7)
    order = list(range(300))
    for i in range(0, 300, 5):  # shuffle within 100 ms blocks: inside the 200 ms window
        block = order[i : i + 5]
        rng.shuffle(block)
        order[i : i + 5] = block
    buffer = JitterBuffer()
    out = run(buffer, [(20 * i, chunk(i)) for i in order])
    assert out == [(20 * i, chunk(i)) for i in range(300)]
