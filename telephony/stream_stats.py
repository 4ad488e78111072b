"""Per-stream delivery statistics: frames received and how late each frame was handled.

Capacity questions ("how many calls can one process hold?") need evidence from the server itself:
a load generator can only see what it sent. Each :class:`~telephony.session.StreamSession` keeps a
:class:`StreamStats` and logs it as one JSON line on the ``telephony.stream_stats`` logger when the
stream ends, so a benchmark (or an operator grepping production logs) can tell whether the server
kept up.

Handling lag without a shared clock. Twilio stamps every media frame with milliseconds since the
stream started; the server only has its own monotonic clock. For each frame,
``delay = (monotonic time its handling finished) - timestamp`` is the one-way delay plus an unknown
constant offset; subtracting the smallest ``delay`` seen so far on the stream cancels the offset and
leaves the *delay variation*: how far behind its best case this frame was handled. The first frames
therefore read 0, and a server that falls behind shows a growing lag. Jitter buffering does not add
to it (the lag is taken when the frame has been pushed through, whether or not it was released).

Per frame this costs one clock read, a subtraction and a bisect into a fixed list of bucket edges,
so it can stay on in production. Quantiles are read back from the histogram (linear within a
bucket), which is plenty for p50/p99 at these resolutions.
"""

from __future__ import annotations

import json
import logging
import time
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

LOGGER_NAME = "telephony.stream_stats"
log = logging.getLogger(LOGGER_NAME)

LAG_EDGES_MS: tuple[float, ...] = (
    0.5,
    1,
    2,
    3,
    5,
    7.5,
    10,
    15,
    20,
    30,
    50,
    75,
    100,
    150,
    200,
    300,
    500,
    750,
    1000,
    2000,
    5000,
)
"""Upper edges (ms) of the lag buckets; a last, open bucket holds everything above 5 s."""

STATS_EVENT = "stream_stats"


@dataclass
class LagHistogram:
    """Counts of lags per fixed bucket (``counts[i]`` holds lags <= ``edges[i]``, above ``edges[i-1]``)."""

    edges: tuple[float, ...] = LAG_EDGES_MS
    counts: list[int] = field(default_factory=list)
    max_ms: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.edges) + 1)
        elif len(self.counts) != len(self.edges) + 1:
            raise ValueError("counts must have one more entry than edges")

    @property
    def total(self) -> int:
        return sum(self.counts)

    def add(self, lag_ms: float) -> None:
        self.counts[bisect_left(self.edges, lag_ms)] += 1
        if lag_ms > self.max_ms:
            self.max_ms = lag_ms

    def merge(self, other: LagHistogram) -> None:
        if tuple(other.edges) != tuple(self.edges):
            raise ValueError("cannot merge histograms with different bucket edges")
        for i, n in enumerate(other.counts):
            self.counts[i] += n
        self.max_ms = max(self.max_ms, other.max_ms)

    def count_above(self, edge_ms: float) -> int:
        """Lags strictly in buckets above ``edge_ms`` (which must be one of the edges)."""
        return sum(self.counts[self.edges.index(edge_ms) + 1 :])

    def quantile(self, q: float) -> float:
        """The ``q`` quantile (0..1), interpolated linearly inside its bucket; 0 when empty.

        The open last bucket is taken to end at the largest lag seen, and no quantile exceeds it.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("q must be in 0..1")
        total = self.total
        if total == 0:
            return 0.0
        rank = q * total
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                low = 0.0 if i == 0 else self.edges[i - 1]
                high = self.edges[i] if i < len(self.edges) else max(self.max_ms, low)
                value = low + (high - low) * max(rank - seen, 0.0) / n
                return min(value, self.max_ms)
            seen += n
        return self.max_ms

    def to_dict(self) -> dict[str, Any]:
        return {"edges_ms": list(self.edges), "counts": list(self.counts), "max_ms": round(self.max_ms, 3)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LagHistogram:
        return cls(
            edges=tuple(float(e) for e in data["edges_ms"]),
            counts=[int(c) for c in data["counts"]],
            max_ms=float(data.get("max_ms", 0.0)),
        )

    @classmethod
    def merged(cls, histograms: Iterable[LagHistogram], edges: Sequence[float] = LAG_EDGES_MS) -> LagHistogram:
        out = cls(edges=tuple(edges))
        for h in histograms:
            out.merge(h)
        return out


class StreamStats:
    """Frames received and the handling-lag histogram of one stream (see the module docstring)."""

    __slots__ = ("_clock", "_min_delay_s", "frames", "histogram")

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._min_delay_s = float("inf")
        self.frames = 0
        self.histogram = LagHistogram()

    def frame_handled(self, timestamp_ms: int) -> float:
        """Record one inbound frame whose handling just finished; returns its lag in ms."""
        self.frames += 1
        delay = self._clock() - timestamp_ms * 0.001
        if delay < self._min_delay_s:
            self._min_delay_s = delay
        lag_ms = (delay - self._min_delay_s) * 1000.0
        self.histogram.add(lag_ms)
        return lag_ms

    def summary(self) -> dict[str, Any]:
        h = self.histogram
        return {
            "frames": self.frames,
            "lag_p50_ms": round(h.quantile(0.50), 3),
            "lag_p99_ms": round(h.quantile(0.99), 3),
            "lag_max_ms": round(h.max_ms, 3),
            "lag_histogram": h.to_dict(),
        }


def log_stream_end(
    call_id: int,
    stats: StreamStats,
    *,
    late: int,
    duplicates: int,
    gap_ms_filled: int,
    utterances_saved: int,
    utterances_lost: int,
    jobs_deferred: int,
) -> dict[str, Any]:
    """Log the stream's one stats line (JSON, ids only: never a number, call SID or patient reference)."""
    record: dict[str, Any] = {
        "event": STATS_EVENT,
        "call_id": call_id,
        **stats.summary(),
        "late_dropped": late,
        "duplicates": duplicates,
        "gap_ms_filled": gap_ms_filled,
        "utterances_saved": utterances_saved,
        "utterances_lost": utterances_lost,
        "jobs_deferred": jobs_deferred,
    }
    log.info("%s", json.dumps(record, separators=(",", ":")))
    return record


def parse_stats_line(line: str) -> dict[str, Any] | None:
    """The JSON record of a stats line in any log format that keeps the message intact; else None."""
    at = line.find('{"event":"' + STATS_EVENT + '"')
    if at < 0:
        return None
    try:
        record = json.loads(line[at:].strip())
    except ValueError:
        return None
    return record if isinstance(record, dict) else None
