"""What an operator watches of the streams: calls active, frames received and lost, handling lag.

Read at scrape time, not counted per frame. Every :class:`~telephony.session.StreamSession` already
keeps its frame count, jitter-buffer counters and lag histogram (:mod:`telephony.stream_stats`); a
Prometheus counter or histogram updated for each 20 ms frame would add a lock and a bisect per frame
to the hottest loop in the process. :data:`STREAMS` instead holds the open sessions and the totals of
finished ones, and turns both into metric families when Prometheus asks (``/metrics``, wired by the
composition root). A scrape reads live counters without a lock: a frame counted during the read
shows up in the next scrape.

Frames lost, by cause: ``late`` (arrived after the jitter buffer had played past them) and ``gap``
(never arrived; the buffer filled their time with silence, counted in 20 ms frames). Utterances the
database never took are ``utterances_lost``.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from telephony.stream_stats import LagHistogram

if TYPE_CHECKING:
    from telephony.session import StreamSession

FRAME_MS = 20


@dataclass
class _Totals:
    frames: int = 0
    late: int = 0
    gap_frames: int = 0
    utterances_saved: int = 0
    utterances_lost: int = 0
    streams: int = 0
    lag: LagHistogram = field(default_factory=LagHistogram)

    def add(self, session: StreamSession) -> None:
        jitter = session.jitter.stats
        self.frames += session.stats.frames
        self.late += jitter.late
        self.gap_frames += jitter.gap_ms_filled // FRAME_MS
        self.utterances_saved += session.counters.utterances_saved
        self.utterances_lost += session.counters.utterances_lost
        self.lag.merge(session.stats.histogram)


class StreamMetrics(Collector):
    """The process's streams as Prometheus metric families (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: weakref.WeakSet[StreamSession] = weakref.WeakSet()
        self._done = _Totals()

    def opened(self, session: StreamSession) -> None:
        with self._lock:
            self._open.add(session)

    def closed(self, session: StreamSession) -> None:
        """The session ended: fold its counts into the totals (once)."""
        with self._lock:
            if session in self._open:
                self._open.discard(session)
                self._done.add(session)
                self._done.streams += 1

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        with self._lock:
            live = list(self._open)
            now = replace(self._done, lag=LagHistogram())
            now.lag.merge(self._done.lag)  # a copy: the sessions still open are added to it below
        streaming = 0
        for session in live:
            now.add(session)
            streaming += session.call_id is not None
        yield GaugeMetricFamily("painline_calls_active", "Media Streams open in this process, started", streaming)
        yield CounterMetricFamily("painline_streams_ended", "Media Streams ended in this process", now.streams)
        yield CounterMetricFamily("painline_frames_received", "Inbound 20 ms media frames handled", now.frames)
        lost = CounterMetricFamily("painline_frames_lost", "Inbound frames lost, by cause", labels=["cause"])
        lost.add_metric(["late"], now.late)
        lost.add_metric(["gap"], now.gap_frames)
        yield lost
        utterances = CounterMetricFamily(
            "painline_stream_utterances", "Utterances the streams cut, by fate", labels=["fate"]
        )
        utterances.add_metric(["saved"], now.utterances_saved)
        utterances.add_metric(["lost"], now.utterances_lost)
        yield utterances
        yield _lag_family(now.lag)


def _lag_family(lag: LagHistogram) -> HistogramMetricFamily:
    """The lag histogram in seconds, cumulative as Prometheus wants it (its sum is estimated)."""
    buckets: list[tuple[str, float]] = []
    running = 0
    estimated_sum_ms = 0.0
    low = 0.0
    for edge, count in zip(lag.edges, lag.counts, strict=False):
        running += count
        estimated_sum_ms += count * (low + edge) / 2  # bucket midpoints: the exact lags are not kept
        buckets.append((repr(edge / 1000.0), running))
        low = edge
    overflow = lag.counts[-1]
    running += overflow
    estimated_sum_ms += overflow * max(lag.max_ms, low)
    buckets.append(("+Inf", running))
    return HistogramMetricFamily(
        "painline_frame_lag_seconds",
        "Per-frame handling lag behind the stream's best case (telephony.stream_stats)",
        buckets=buckets,
        sum_value=estimated_sum_ms / 1000.0,
    )


STREAMS = StreamMetrics()
"""This process's streams; :class:`~telephony.session.StreamSession` reports to it, painline registers it."""


__all__ = ["STREAMS", "StreamMetrics"]
