"""Enrolment uploads: judged by their header first, decoded only within limits (issue 13).

Why the header first: compressed audio can expand enormously. 117 KB of FLAC silence can claim
300 s x 8 channels x 48 kHz, and decoding it took a web process from 190 MB to 700 MB before the
duration check that ran *after* decoding refused it; the 32 MiB upload cap allows ~280 times that.
So :func:`inspect` opens each file with libsndfile, which reads the format's header (WAV, FLAC, OGG,
MP3 and the other formats libsndfile knows) and reports frames, channels and sample rate without
decoding samples, and every limit is checked on those numbers. Only after *every* file of the
upload has passed is any of them decoded.

Decisions:

- a header that does not state its length (FLAC written by a streaming encoder reports "unknown",
  which libsndfile turns into its maximum count) is refused: its cost cannot be known in advance.
  Saving the recording again as WAV or FLAC from any editor fixes it;
- formats libsndfile cannot open are refused as unreadable. ``analysis.audio.load_audio`` (used by
  the ``painline baseline enrol`` command, which an operator runs on files they chose) falls back
  to ffmpeg for them; a web upload never does, since ffmpeg would decode first and ask later;
- decoding (:func:`decode_mono`) reads blocks and mixes each to mono at once, stops at the frame
  count the checks were made on even if the stream holds more, and so never holds more than one
  block of the original channels: the peak is the mono signal, at most ``max_seconds * max_rate``
  float32 samples (23 MB at the defaults).

The mono mix is the same as ``load_audio``'s (mean of the channels, float32), so an uploaded file
enrols exactly as the same file given to ``painline baseline enrol`` would.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import IO

import numpy as np
import soundfile as sf

from analysis.channel import mulaw_encode, telephone

UNKNOWN_FRAMES = 2**62
"""Frame counts at or above this are libsndfile's "unknown length" (it reports ``SF_COUNT_MAX``)."""
DECODE_BLOCK_FRAMES = 65_536


class UploadProblem(StrEnum):
    """Why a recording was refused; the page shows the message, tests and logs compare these."""

    UNREADABLE = "unreadable"
    UNKNOWN_LENGTH = "unknown_length"
    TOO_SHORT = "too_short"
    TOO_LONG = "too_long"
    TOO_MANY_CHANNELS = "too_many_channels"
    RATE_TOO_HIGH = "rate_too_high"


@dataclass(frozen=True)
class UploadLimits:
    """What one enrolment upload may hold.

    ``max_seconds``, ``max_channels`` and ``max_rate`` together bound what decoding may cost; the
    byte cap bounds the request itself (``painline.app`` sets Flask's ``MAX_CONTENT_LENGTH`` to it).
    Two channels and 48 kHz cover every phone, browser and dictaphone recording; anything beyond is
    studio material that can be exported at 48 kHz stereo or less.
    """

    min_seconds: float = 1.0
    max_seconds: float = 120.0
    max_channels: int = 2
    max_rate: int = 48_000
    max_clips: int = 10
    max_bytes: int = 32 * 1024 * 1024


@dataclass(frozen=True)
class AudioHeader:
    """What a file's header says about it, before any sample is decoded."""

    frames: int
    channels: int
    rate: int
    format: str

    @property
    def seconds(self) -> float:
        return self.frames / float(self.rate)


class UploadError(ValueError):
    """A recording was refused. The message is safe to show: numbers from the header, never content."""

    def __init__(self, problems: Sequence[UploadProblem], message: str, recording: int | None = None) -> None:
        super().__init__(message)
        self.problems = tuple(problems)
        self.recording = recording


def _kilohertz(rate: int) -> str:
    return f"{rate / 1000:g} kHz"


def read_header(stream: IO[bytes]) -> AudioHeader:
    """Frames, channels, rate and format as the header states them; the stream is left at its start."""
    stream.seek(0)
    try:
        with sf.SoundFile(stream) as audio:
            header = AudioHeader(int(audio.frames), int(audio.channels), int(audio.samplerate), str(audio.format))
    except (sf.SoundFileError, RuntimeError, ValueError, TypeError) as exc:
        raise UploadError([UploadProblem.UNREADABLE], "not a readable audio file") from exc
    finally:
        stream.seek(0)
    if header.rate <= 0 or header.channels <= 0:
        raise UploadError([UploadProblem.UNREADABLE], "not a readable audio file")
    return header


def check(header: AudioHeader, limits: UploadLimits) -> None:
    """Refuse a header past any limit, naming every limit it breaks (so one retry can fix them all)."""
    if header.frames < 0 or header.frames >= UNKNOWN_FRAMES:
        raise UploadError(
            [UploadProblem.UNKNOWN_LENGTH],
            "the file does not state its length in its header; save it again as WAV or FLAC",
        )
    problems: list[UploadProblem] = []
    reasons: list[str] = []
    if header.seconds > limits.max_seconds:
        problems.append(UploadProblem.TOO_LONG)
        reasons.append(f"{header.seconds:.0f} s long, over the {limits.max_seconds:.0f} s limit")
    elif header.seconds < limits.min_seconds:
        problems.append(UploadProblem.TOO_SHORT)
        reasons.append(f"{header.seconds:.1f} s long, shorter than the {limits.min_seconds:.0f} s minimum")
    if header.channels > limits.max_channels:
        problems.append(UploadProblem.TOO_MANY_CHANNELS)
        reasons.append(f"{header.channels} channels, more than {limits.max_channels}")
    if header.rate > limits.max_rate:
        problems.append(UploadProblem.RATE_TOO_HIGH)
        reasons.append(f"sampled at {_kilohertz(header.rate)}, above {_kilohertz(limits.max_rate)}")
    if problems:
        raise UploadError(problems, "; ".join(reasons))


def inspect(stream: IO[bytes], limits: UploadLimits) -> AudioHeader:
    """:func:`read_header` then :func:`check`: the header of an acceptable recording, or UploadError."""
    header = read_header(stream)
    check(header, limits)
    return header


def decode_mono(stream: IO[bytes], header: AudioHeader, *, block_frames: int = DECODE_BLOCK_FRAMES) -> np.ndarray:
    """The recording as mono float32, at most ``header.frames`` samples whatever the stream holds."""
    out = np.empty(header.frames, dtype=np.float32)
    filled = 0
    stream.seek(0)
    try:
        with sf.SoundFile(stream) as audio:
            while filled < header.frames:
                block = audio.read(min(block_frames, header.frames - filled), dtype="float32", always_2d=True)
                if len(block) == 0:
                    break
                out[filled : filled + len(block)] = block.mean(axis=1)
                filled += len(block)
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        raise UploadError([UploadProblem.UNREADABLE], "not a readable audio file") from exc
    finally:
        stream.seek(0)
    return out[:filled]


def telephone_clips(streams: Sequence[IO[bytes]], limits: UploadLimits) -> list[bytes]:
    """Every recording as the 8 kHz mu-law bytes a call would deliver, or UploadError naming the first refused.

    All headers are checked before anything is decoded, so a bomb in the last slot costs nothing.
    """
    headers: list[AudioHeader] = []
    for number, stream in enumerate(streams, start=1):
        try:
            headers.append(inspect(stream, limits))
        except UploadError as exc:
            exc.recording = number
            raise
    clips = []
    for number, (stream, header) in enumerate(zip(streams, headers, strict=True), start=1):
        try:
            samples = decode_mono(stream, header)
        except UploadError as exc:
            exc.recording = number
            raise
        if len(samples) / float(header.rate) < limits.min_seconds:  # the header promised more than there was
            raise UploadError([UploadProblem.TOO_SHORT], f"shorter than {limits.min_seconds:.0f} s", number)
        clips.append(mulaw_encode(telephone(samples, header.rate)))
    return clips


__all__ = [
    "AudioHeader",
    "UploadError",
    "UploadLimits",
    "UploadProblem",
    "check",
    "decode_mono",
    "inspect",
    "read_header",
    "telephone_clips",
]
