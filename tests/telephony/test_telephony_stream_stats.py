"""Per-stream lag statistics: delay variation against the running minimum, histogram quantiles."""

from __future__ import annotations

import json
import logging
import timeit

import pytest

from telephony.stream_stats import (
    LAG_EDGES_MS,
    LOGGER_NAME,
    LagHistogram,
    StreamStats,
    log_stream_end,
    parse_stats_line,
)


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_first_frame_has_no_lag_and_a_constant_offset_cancels() -> None:
    clock = FakeClock(5000.0)  # the server's clock has nothing to do with stream time
    stats = StreamStats(clock)
    lags = []
    for i in range(50):
        clock.t = 5000.0 + i * 0.020 + 0.003  # every frame handled 3 ms after its due time
        lags.append(stats.frame_handled(i * 20))
    assert lags == pytest.approx([0.0] * 50, abs=1e-6)
    assert stats.frames == 50


def test_lag_is_measured_from_the_best_case_seen_so_far() -> None:
    clock = FakeClock(0.0)
    stats = StreamStats(clock)
    clock.t = 10.050  # first frame 50 ms "late" by the server clock: becomes the reference
    assert stats.frame_handled(0) == pytest.approx(0.0)
    clock.t = 10.020 + 0.050 + 0.030  # 30 ms worse than the first
    assert stats.frame_handled(20) == pytest.approx(30.0)
    clock.t = 10.040 + 0.010  # better than the first: the new minimum, lag 0
    assert stats.frame_handled(40) == pytest.approx(0.0)
    clock.t = 10.060 + 0.010 + 0.100  # 100 ms behind the new best case
    assert stats.frame_handled(60) == pytest.approx(100.0)
    assert stats.histogram.max_ms == pytest.approx(100.0)


def test_histogram_buckets_by_upper_edge() -> None:
    h = LagHistogram()
    for lag in (0.0, 0.5, 0.51, 4.9, 5000.0, 9000.0):
        h.add(lag)
    assert h.counts[0] == 2  # 0 and exactly 0.5 fall in the first bucket
    assert h.counts[1] == 1  # 0.51 <= 1
    assert h.counts[LAG_EDGES_MS.index(5)] == 1
    assert h.counts[LAG_EDGES_MS.index(5000)] == 1
    assert h.counts[-1] == 1  # the open bucket above the last edge
    assert h.total == 6
    assert h.max_ms == 9000.0
    assert h.count_above(1000) == 2


def test_quantiles_interpolate_within_a_bucket_and_never_exceed_the_max() -> None:
    h = LagHistogram()
    assert h.quantile(0.99) == 0.0  # empty
    for _ in range(100):
        h.add(0.2)
    assert 0.0 <= h.quantile(0.5) <= 0.2  # capped by the largest lag seen
    for _ in range(100):
        h.add(12.0)  # bucket (10, 15]
    assert 10.0 <= h.quantile(0.99) <= 12.0
    assert h.quantile(1.0) == pytest.approx(12.0)
    h.add(8000.0)
    assert h.quantile(1.0) == pytest.approx(8000.0)
    with pytest.raises(ValueError):
        h.quantile(1.5)


def test_histograms_merge_and_round_trip() -> None:
    a, b = LagHistogram(), LagHistogram()
    for lag in (1.5, 2.5):
        a.add(lag)
    b.add(700.0)
    merged = LagHistogram.merged([a, LagHistogram.from_dict(json.loads(json.dumps(b.to_dict())))])
    assert merged.total == 3 and merged.max_ms == pytest.approx(700.0)
    with pytest.raises(ValueError):
        a.merge(LagHistogram(edges=(1.0, 2.0)))


def test_stats_line_is_one_json_record_with_ids_only(caplog: pytest.LogCaptureFixture) -> None:
    stats = StreamStats(FakeClock())
    stats.frame_handled(0)
    with caplog.at_level(logging.INFO, logger=LOGGER_NAME):
        log_stream_end(
            42, stats, late=1, duplicates=2, gap_ms_filled=40, utterances_saved=3, utterances_lost=0, jobs_deferred=0
        )
    lines = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert len(lines) == 1
    formatted = "2024-01-01 00:00:00,000 INFO telephony.stream_stats: " + lines[0].getMessage()
    record = parse_stats_line(formatted)
    assert record is not None
    assert record["call_id"] == 42 and record["frames"] == 1 and record["late_dropped"] == 1
    assert record["lag_histogram"]["counts"][0] == 1
    assert not any("sid" in key.lower() or "patient" in key.lower() or "from" in key.lower() for key in record)
    assert parse_stats_line("some other line") is None


def test_per_frame_cost_is_small() -> None:
    """The bookkeeping runs for every frame of every call: keep it to a few microseconds."""
    stats = StreamStats()
    n = 20_000
    seconds = min(timeit.repeat(lambda: stats.frame_handled(0), number=n, repeat=3))
    per_frame_us = seconds / n * 1e6
    assert per_frame_us < 10.0, f"{per_frame_us:.2f} µs per frame"
