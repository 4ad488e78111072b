"""Enrolment uploads are judged by their header before a sample is decoded (issue 13: decompression bomb).

A 117 KB FLAC of silence can claim 300 s x 8 channels x 48 kHz: decoding it costs ~0.5 GB. These
tests build exactly such a file and check that :func:`dashboard.uploads.inspect` refuses it from the
header alone (decoder never called, tracemalloc peak tiny), that files whose header does not state
their length are refused too, that decoding stays bounded even when a header lies, and that a normal
recording still comes out as the telephone audio enrolment expects.
"""

from __future__ import annotations

import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from dashboard import uploads
from dashboard.uploads import UploadError, UploadLimits, UploadProblem

BOMB_SECONDS, BOMB_CHANNELS, BOMB_RATE = 300, 8, 48_000


def flac_bomb() -> bytes:
    """300 s x 8 channels x 48 kHz of silence: about 117 KB compressed, ~0.9 GB as float64 samples."""
    buffer = io.BytesIO()
    block = np.zeros((BOMB_RATE * 10, BOMB_CHANNELS), dtype=np.int16)
    with sf.SoundFile(
        buffer, "w", samplerate=BOMB_RATE, channels=BOMB_CHANNELS, format="FLAC", subtype="PCM_16"
    ) as out:
        for _ in range(BOMB_SECONDS // 10):
            out.write(block)
    return buffer.getvalue()


def tone(seconds: float, rate: int = 16_000, channels: int = 1, fmt: str = "WAV") -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.2 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
    if channels > 1:
        samples = np.repeat(samples[:, None], channels, axis=1)
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype="PCM_16" if fmt in ("WAV", "FLAC") else None)
    return buffer.getvalue()


def without_total_samples(flac: bytes) -> bytes:
    """The same FLAC with STREAMINFO's total-samples field zeroed ("unknown", as a streaming encoder writes)."""
    data = bytearray(flac)
    packed = int.from_bytes(data[18:26], "big")  # rate(20) channels(3) bits(5) total samples(36)
    data[18:26] = (packed & ~((1 << 36) - 1)).to_bytes(8, "big")
    return bytes(data)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    data = flac_bomb()
    assert len(data) < 200_000  # the point: tiny on the wire, huge once decoded
    return data


def test_the_bomb_is_refused_from_its_header_without_decoding(bomb: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("samples were decoded")

    monkeypatch.setattr(sf.SoundFile, "read", no_decoding)
    monkeypatch.setattr(sf.SoundFile, "blocks", no_decoding)
    tracemalloc.start()
    try:
        with pytest.raises(UploadError) as refused:
            uploads.inspect(io.BytesIO(bomb), UploadLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * 1024 * 1024, peak
    problems = refused.value.problems
    assert problems == (UploadProblem.TOO_LONG, UploadProblem.TOO_MANY_CHANNELS)
    message = str(refused.value)
    assert "300 s" in message and "120 s" in message and "8 channels" in message


def test_the_bomb_is_refused_by_the_upload_pipeline_before_any_decode(
    bomb: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    called: list[object] = []
    monkeypatch.setattr(uploads, "decode_mono", lambda *a, **k: called.append(a))
    tracemalloc.start()
    try:
        with pytest.raises(UploadError):
            uploads.telephone_clips([io.BytesIO(tone(2.0)), io.BytesIO(bomb)], UploadLimits())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert called == []  # every file is inspected before any is decoded
    assert peak < 4 * 1024 * 1024, peak


@pytest.mark.parametrize(
    ("limits", "problem"),
    [
        (UploadLimits(max_rate=16_000), UploadProblem.RATE_TOO_HIGH),
        (UploadLimits(max_channels=1), UploadProblem.TOO_MANY_CHANNELS),
        (UploadLimits(max_seconds=1.0), UploadProblem.TOO_LONG),
        (UploadLimits(min_seconds=3.0), UploadProblem.TOO_SHORT),
    ],
)
def test_each_limit_is_checked_from_the_header(limits: UploadLimits, problem: UploadProblem) -> None:
    with pytest.raises(UploadError) as refused:
        uploads.inspect(io.BytesIO(tone(2.0, rate=44_100, channels=2)), limits)
    assert refused.value.problems == (problem,)


def test_a_header_without_a_length_is_refused() -> None:
    unknown = without_total_samples(tone(2.0, fmt="FLAC"))
    with pytest.raises(UploadError) as refused:
        uploads.inspect(io.BytesIO(unknown), UploadLimits())
    assert refused.value.problems == (UploadProblem.UNKNOWN_LENGTH,)
    assert "does not state its length" in str(refused.value)


def test_what_is_not_audio_is_refused_as_unreadable() -> None:
    with pytest.raises(UploadError) as refused:
        uploads.inspect(io.BytesIO(b"not audio at all" * 100), UploadLimits())
    assert refused.value.problems == (UploadProblem.UNREADABLE,)
    assert str(refused.value) == "not a readable audio file"


def test_decoding_never_reads_past_the_length_the_header_was_judged_on() -> None:
    """If a header understates its length, the decoder stops where the check assumed it would."""
    data = io.BytesIO(tone(3.0))
    header = uploads.inspect(data, UploadLimits())
    short = uploads.AudioHeader(frames=16_000, channels=header.channels, rate=header.rate, format=header.format)
    samples = uploads.decode_mono(data, short)
    assert samples.shape == (16_000,) and samples.dtype == np.float32


@pytest.mark.parametrize("fmt", ["WAV", "FLAC", "OGG"])
def test_a_normal_recording_becomes_telephone_mulaw(fmt: str) -> None:
    [clip] = uploads.telephone_clips([io.BytesIO(tone(2.0, rate=44_100, channels=2, fmt=fmt))], UploadLimits())
    assert len(clip) == 16_000  # 2 s at 8 kHz, one mu-law byte a sample


def test_mixing_to_mono_matches_the_cli_loader(tmp_path: Path) -> None:
    """``painline baseline enrol`` reads files with ``analysis.audio.load_audio``: the same samples."""
    from analysis.audio import load_audio

    rng = np.random.default_rng(3)
    stereo = (0.1 * rng.normal(size=(40_000, 2))).astype(np.float32)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo, 16_000, subtype="PCM_16")
    expected, rate = load_audio(path)
    with path.open("rb") as f:
        header = uploads.inspect(f, UploadLimits())
        got = uploads.decode_mono(f, header, block_frames=4096)
    assert rate == header.rate
    np.testing.assert_allclose(got, expected, atol=1e-6)
