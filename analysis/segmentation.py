"""Cut a stream of 20 ms mu-law frames into utterances with WebRTC's voice activity detector.

The scorer needs stretches of the caller's voice, not silence or hold music gaps, and a bounded
amount of audio per job. The segmenter opens an utterance when enough recent frames are voiced
(so a click does not start one), closes it after a hangover of unvoiced frames (so a pause between
words does not split it), keeps a little padding either side (so onsets and decays are not clipped),
drops utterances with too little speech, and splits long monologues at a maximum length.

Times are stream time taken from the frames' own timestamps, so they stay right even when the
jitter buffer filled holes.

It lives in ``analysis`` rather than ``telephony`` because a call is not the only place audio is cut:
enrolment clips (:func:`cut_clip`) and the bench's live-path protocol must be measured in exactly
the pieces a call would produce, or the caller's baseline describes a different measurement from the
one it is compared with.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import webrtcvad

from analysis.channel import TELEPHONE_RATE, mulaw_decode, mulaw_encode, mulaw_to_pcm16_bytes


@dataclass(frozen=True)
class VadConfig:
    """Tuning for :class:`UtteranceSegmenter`; defaults suit 8 kHz telephone speech."""

    aggressiveness: int = 2  # webrtcvad 0 (least) .. 3 (most eager to call audio non-speech)
    frame_ms: int = 20
    start_window: int = 10  # look at the last M frames ...
    start_voiced: int = 6  # ... and open an utterance when N of them are voiced
    hangover_ms: int = 400  # unvoiced time that closes an utterance
    pad_before_ms: int = 200  # audio kept before the triggering window
    pad_after_ms: int = 200  # audio kept after the last voiced frame
    min_speech_ms: int = 500  # utterances with less voiced time are dropped
    max_utterance_ms: int = 10_000  # longer speech is split into pieces of this length

    def __post_init__(self) -> None:
        if not 0 <= self.aggressiveness <= 3:
            raise ValueError("aggressiveness must be 0..3")
        if self.frame_ms not in (10, 20, 30):
            raise ValueError("webrtcvad accepts 10, 20 or 30 ms frames")
        if not 0 < self.start_voiced <= self.start_window:
            raise ValueError("start_voiced must be in 1..start_window")
        if self.max_utterance_ms < self.frame_ms * self.start_window:
            raise ValueError("max_utterance_ms is shorter than the start window")


@dataclass(frozen=True)
class SegmentedUtterance:
    """One utterance: ``seq`` counts emitted utterances from 0 within a stream."""

    seq: int
    start_ms: int
    end_ms: int
    speech_s: float
    mulaw: bytes

    @property
    def duration_s(self) -> float:
        return (self.end_ms - self.start_ms) / 1000.0

    @property
    def samples(self) -> np.ndarray:
        """The utterance as the worker decodes it: float32 at 8 kHz."""
        return mulaw_decode(self.mulaw)


@dataclass
class _Frame:
    timestamp_ms: int
    data: bytes
    voiced: bool


class UtteranceSegmenter:
    """Feed frames in stream order with :meth:`push`; call :meth:`flush` when the stream ends."""

    def __init__(self, config: VadConfig | None = None, *, sample_rate: int = 8000) -> None:
        self.config = config or VadConfig()
        self._rate = sample_rate
        self._frame_bytes = sample_rate * self.config.frame_ms // 1000
        self._vad = webrtcvad.Vad(self.config.aggressiveness)
        c = self.config
        self._pad_before = _frames(c.pad_before_ms, c.frame_ms)
        self._pad_after = _frames(c.pad_after_ms, c.frame_ms)
        self._hangover = max(1, _frames(c.hangover_ms, c.frame_ms))
        self._max_frames = max(c.start_window, c.max_utterance_ms // c.frame_ms)
        self._preroll: deque[_Frame] = deque(maxlen=c.start_window + self._pad_before)
        self._current: list[_Frame] | None = None
        self._unvoiced_run = 0
        self._seq = 0
        self.dropped_short = 0

    @property
    def in_utterance(self) -> bool:
        return self._current is not None

    def push(self, timestamp_ms: int, mulaw: bytes) -> list[SegmentedUtterance]:
        """Add one frame; return any utterances it completed (normally none)."""
        if len(mulaw) != self._frame_bytes:
            raise ValueError(f"expected {self._frame_bytes}-byte frames, got {len(mulaw)}")
        pcm = mulaw_to_pcm16_bytes(mulaw)
        frame = _Frame(timestamp_ms, bytes(mulaw), self._vad.is_speech(pcm, self._rate))
        if self._current is None:
            return self._idle(frame)
        return self._triggered(frame, self._current)

    def flush(self) -> list[SegmentedUtterance]:
        """Stream ended: emit the open utterance if it holds enough speech."""
        if self._current is None:
            return []
        frames, self._current = self._current, None
        self._preroll.clear()
        return self._finish(self._trim_tail(frames))

    def _idle(self, frame: _Frame) -> list[SegmentedUtterance]:
        self._preroll.append(frame)
        window = list(self._preroll)[-self.config.start_window :]
        if sum(f.voiced for f in window) >= self.config.start_voiced:
            self._current = list(self._preroll)
            self._preroll.clear()
            self._unvoiced_run = 0
        return []

    def _triggered(self, frame: _Frame, current: list[_Frame]) -> list[SegmentedUtterance]:
        current.append(frame)
        self._unvoiced_run = 0 if frame.voiced else self._unvoiced_run + 1
        if self._unvoiced_run >= self._hangover:
            frames, self._current = current, None
            kept = self._trim_tail(frames)
            # what follows the padding is silence that may precede the next utterance
            for rest in frames[len(kept) :]:
                self._preroll.append(rest)
            return self._finish(kept)
        if len(current) >= self._max_frames:
            # split a long utterance; the next piece starts right where this one ends
            self._current = []
            return self._finish(current)
        return []

    def _trim_tail(self, frames: list[_Frame]) -> list[_Frame]:
        last_voiced = max((i for i, f in enumerate(frames) if f.voiced), default=-1)
        return frames[: last_voiced + 1 + self._pad_after]

    def _finish(self, frames: list[_Frame]) -> list[SegmentedUtterance]:
        voiced = sum(f.voiced for f in frames)
        speech_ms = voiced * self.config.frame_ms
        if not frames or speech_ms < self.config.min_speech_ms:
            if frames:
                self.dropped_short += 1
            return []
        utterance = SegmentedUtterance(
            seq=self._seq,
            start_ms=frames[0].timestamp_ms,
            end_ms=frames[-1].timestamp_ms + self.config.frame_ms,
            speech_s=speech_ms / 1000.0,
            mulaw=b"".join(f.data for f in frames),
        )
        self._seq += 1
        return [utterance]


def _frames(ms: int, frame_ms: int) -> int:
    return (ms + frame_ms - 1) // frame_ms


CALL_GAP_S = 0.7
"""Silence around a clip in :func:`cut_clip`: the pause between two clips of a bench call."""


def cut_clip(
    samples_8k: np.ndarray, config: VadConfig | None = None, *, margin_s: float = CALL_GAP_S
) -> list[SegmentedUtterance]:
    """The utterances a call would cut from ``samples_8k`` (8 kHz float audio) spoken between pauses.

    The clip, framed by ``margin_s`` of silence either side as it would be in a call, goes through
    the mu-law codec in 20 ms frames exactly as Twilio delivers them; a trailing partial frame is
    padded with silence. Times are relative to the start of the margin. An empty list means the
    clip holds too little speech for any utterance.
    """
    config = config or VadConfig()
    margin = np.zeros(round(margin_s * TELEPHONE_RATE), dtype=np.float32)
    mulaw = mulaw_encode(np.concatenate([margin, np.asarray(samples_8k, dtype=np.float32), margin]))
    frame_bytes = TELEPHONE_RATE * config.frame_ms // 1000
    if len(mulaw) % frame_bytes:
        mulaw += mulaw_encode(np.zeros(frame_bytes - len(mulaw) % frame_bytes, dtype=np.float32))
    segmenter = UtteranceSegmenter(config)
    pieces: list[SegmentedUtterance] = []
    for i in range(0, len(mulaw), frame_bytes):
        pieces += segmenter.push(i // frame_bytes * config.frame_ms, mulaw[i : i + frame_bytes])
    return pieces + segmenter.flush()
