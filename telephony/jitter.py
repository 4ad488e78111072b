"""Reorder Twilio media chunks by their timestamps and cut them into contiguous fixed-length frames.

Audio over a WebSocket arrives as gaps then bursts, occasionally out of order or repeated. The
analysis needs stream time to be exact (utterance boundaries are stored in milliseconds since the
stream started), so chunks are placed by ``media.timestamp``, never by arrival. A short reorder
window lets late chunks slot in; once the newest audio is more than a window ahead of a hole, the
hole is filled with mu-law silence so downstream time never stalls or drifts.

Chunk sizes are taken from each payload (Twilio sends 20 ms but nothing here relies on it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

MULAW_SILENCE = 0xFF  # mu-law code for zero amplitude


class TimestampJump(ValueError):
    """A chunk claims a position implausibly far ahead: filling that gap would be a resource sink."""


@dataclass(frozen=True)
class Frame:
    """``timestamp_ms`` is stream time of the first sample; ``data`` is exactly one frame of mu-law."""

    timestamp_ms: int
    data: bytes


@dataclass
class JitterStats:
    frames_in: int = 0
    frames_out: int = 0
    duplicates: int = 0
    late: int = 0
    gap_ms_filled: int = 0
    empty: int = 0


class JitterBuffer:
    """Turns ``push(timestamp_ms, payload)`` calls into a contiguous stream of :class:`Frame`.

    Contiguous audio is released at once; a hole waits until audio newer than ``window_ms`` past
    the hole has arrived, then becomes silence. Chunks that repeat a timestamp already seen are
    duplicates; chunks that start before what was already released are late. Both are dropped.
    """

    def __init__(
        self,
        *,
        sample_rate: int = 8000,
        frame_ms: int = 20,
        window_ms: int = 200,
        max_gap_ms: int = 60_000,
    ) -> None:
        if sample_rate % 1000:
            raise ValueError("sample_rate must be a whole number of samples per millisecond")
        self._per_ms = sample_rate // 1000
        self._frame_ms = frame_ms
        self._frame_len = frame_ms * self._per_ms
        self._window = window_ms * self._per_ms
        self._max_gap = max_gap_ms * self._per_ms
        self._pending: dict[int, bytes] = {}  # sample offset -> mu-law bytes, not yet released
        self._cursor = 0  # sample offset of the next byte to release
        self._newest_end = 0  # one past the last sample of any chunk received
        self._out = bytearray()  # released samples not yet making a whole frame
        self._out_start = 0  # sample offset of _out[0]
        self._recent: deque[int] = deque(maxlen=256)  # released chunk offsets, to tell repeats from late
        self._recent_set: set[int] = set()
        self.stats = JitterStats()

    @property
    def frame_bytes(self) -> int:
        return self._frame_len

    def push(self, timestamp_ms: int, payload: bytes) -> list[Frame]:
        """Add one chunk; return the frames that became final because of it (often none or one)."""
        self.stats.frames_in += 1
        if not payload:
            self.stats.empty += 1
            return []
        offset = timestamp_ms * self._per_ms
        if offset in self._pending or offset in self._recent_set:
            self.stats.duplicates += 1
            return []
        if offset < self._cursor:
            self.stats.late += 1
            return []
        if offset - max(self._cursor, self._newest_end) > self._max_gap:
            raise TimestampJump("media timestamp jumps too far ahead")
        self._pending[offset] = bytes(payload)
        self._newest_end = max(self._newest_end, offset + len(payload))
        self._release(horizon=self._newest_end - self._window)
        return self._take_frames()

    def flush(self) -> list[Frame]:
        """Stream ended: fill every remaining hole, pad the last partial frame with silence."""
        self._release(horizon=None)
        frames = self._take_frames()
        if self._out:
            pad = self._frame_len - len(self._out)
            frames.append(Frame(self._ms(self._out_start), bytes(self._out) + bytes([MULAW_SILENCE]) * pad))
            self.stats.frames_out += 1
            self._out_start += self._frame_len
            self._cursor = self._out_start
            self._out.clear()
        return frames

    def _release(self, horizon: int | None) -> None:
        """Move pending audio to the output while it is contiguous or its gap is older than horizon."""
        while self._pending:
            chunk = self._pending.pop(self._cursor, None)
            if chunk is not None:
                self._emit_chunk(self._cursor, chunk)
                continue
            nearest = min(self._pending)
            if nearest < self._cursor:
                # overlaps audio already released (a chunk longer than its successor's spacing)
                chunk = self._pending.pop(nearest)
                overlap = self._cursor - nearest
                if overlap < len(chunk):
                    self._emit_chunk(self._cursor, chunk[overlap:], remember=nearest)
                else:
                    self.stats.late += 1
                continue
            if horizon is not None and nearest > horizon:
                break
            gap = nearest - self._cursor
            self._out.extend(bytes([MULAW_SILENCE]) * gap)
            self.stats.gap_ms_filled += gap // self._per_ms
            self._cursor = nearest

    def _emit_chunk(self, offset: int, chunk: bytes, remember: int | None = None) -> None:
        self._out.extend(chunk)
        self._cursor = offset + len(chunk)
        key = offset if remember is None else remember
        if len(self._recent) == self._recent.maxlen:
            self._recent_set.discard(self._recent[0])
        self._recent.append(key)
        self._recent_set.add(key)

    def _take_frames(self) -> list[Frame]:
        frames: list[Frame] = []
        while len(self._out) >= self._frame_len:
            frames.append(Frame(self._ms(self._out_start), bytes(self._out[: self._frame_len])))
            del self._out[: self._frame_len]
            self._out_start += self._frame_len
        self.stats.frames_out += len(frames)
        return frames

    def _ms(self, sample_offset: int) -> int:
        return sample_offset // self._per_ms
