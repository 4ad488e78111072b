"""The telephone channel and audio loading: the codec must be G.711 to the bit, because the live
decoder shares it and training must hear exactly what a Twilio stream carries."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from analysis.audio import AudioLoadError, load_audio, rms_dbfs, rms_normalise
from analysis.channel import (
    TELEPHONE_RATE,
    mulaw_decode,
    mulaw_decode_pcm16,
    mulaw_encode,
    mulaw_to_pcm16_bytes,
    telephone,
)

# --------------------------------------------------------------------------- G.711 reference
# Written from ITU-T G.711 (mu-law, Table 2a) as realised by the ITU's own reference software (G.191,
# ulaw_compress): a 16-bit sample keeps its 14 most significant bits; the magnitude of a negative value
# is its one's complement, so the quantiser is mirror-symmetric about zero (the interval [-4, 0) of
# 16-bit values maps like (0, 4]); a bias of 33 puts segment boundaries at powers of two; the code is
# 3 segment bits + 4 step bits, all inverted, with the polarity bit set for non-negative input.

_G711_BIAS14 = 33
_G711_MAX14 = 0x1FFF


def g711_encode_reference(sample: int) -> int:
    """One 16-bit two's-complement sample to its mu-law byte."""
    magnitude = ((~sample) >> 2) if sample < 0 else (sample >> 2)
    biased = min(magnitude + _G711_BIAS14, _G711_MAX14)  # 33 .. 8191
    segment = biased.bit_length() - 6  # 64 -> segment 1, 128 -> 2, ... (33..63 -> segment 0)
    step = (biased >> (segment + 1)) & 0x0F
    code = (~((segment << 4) | step)) & 0x7F
    return code | (0x80 if sample >= 0 else 0x00)


def g711_decode_reference(byte: int) -> int:
    """One mu-law byte to its 16-bit reconstruction value (mid-step, in 16-bit units)."""
    code = ~byte & 0xFF
    negative = bool(code & 0x80)
    segment, step = (code >> 4) & 0x07, code & 0x0F
    # reconstruction in 14-bit units: ((2*step + 33) << segment) - 33, then scaled to 16 bits
    magnitude14 = ((2 * step + _G711_BIAS14) << segment) - _G711_BIAS14
    return -4 * magnitude14 if negative else 4 * magnitude14


ALL_PCM16 = np.arange(-32768, 32768, dtype=np.int64)


def _encode_pcm16(pcm: np.ndarray) -> np.ndarray:
    return np.frombuffer(mulaw_encode(pcm.astype(np.float64) / 32768.0), dtype=np.uint8)


def test_reference_decoder_spot_values() -> None:
    """Anchor the reference itself to well-known G.711 points (so a wrong reference cannot pass)."""
    assert g711_decode_reference(0xFF) == 0 and g711_decode_reference(0x7F) == 0
    assert g711_decode_reference(0x80) == 32124 and g711_decode_reference(0x00) == -32124
    assert g711_encode_reference(0) == 0xFF
    assert g711_encode_reference(32767) == 0x80 and g711_encode_reference(-32768) == 0x00


def test_mulaw_positive_half_matches_g711_reference() -> None:
    pcm = ALL_PCM16[ALL_PCM16 >= 0]
    expected = np.array([g711_encode_reference(int(s)) for s in pcm], dtype=np.uint8)
    got = _encode_pcm16(pcm)
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, f"{mismatch.size} positive samples differ, first {pcm[mismatch[:5]].tolist()}"


def test_mulaw_encode_matches_g711_reference_for_every_16bit_value() -> None:
    expected = np.array([g711_encode_reference(int(s)) for s in ALL_PCM16], dtype=np.uint8)
    got = _encode_pcm16(ALL_PCM16)
    mismatch = np.flatnonzero(got != expected)
    assert mismatch.size == 0, (
        f"{mismatch.size} of 65536 samples differ from G.711; first "
        f"{[(int(ALL_PCM16[i]), hex(got[i]), hex(expected[i])) for i in mismatch[:4]]}"
    )


def test_mulaw_decode_table_matches_reference_for_all_256_bytes() -> None:
    payload = bytes(range(256))
    expected = np.array([g711_decode_reference(b) for b in range(256)], dtype=np.int64)
    np.testing.assert_array_equal(mulaw_decode_pcm16(payload).astype(np.int64), expected)
    np.testing.assert_allclose(mulaw_decode(payload), expected / 32768.0, rtol=0, atol=1e-9)
    assert mulaw_decode(payload).dtype == np.float32


def test_decode_of_encode_is_the_identity_on_codes() -> None:
    """Every byte's reconstruction value encodes back to that byte (except -0, which is +0)."""
    recon = mulaw_decode_pcm16(bytes(range(256))).astype(np.int64)
    again = _encode_pcm16(recon)
    for byte in range(256):
        if byte == 0x7F:  # negative zero decodes to 0, which encodes as positive zero
            assert again[byte] == 0xFF
        else:
            assert again[byte] == byte, hex(byte)


def test_mulaw_encode_clips_out_of_range_floats() -> None:
    got = np.frombuffer(mulaw_encode(np.array([1.5, -1.5, 1.0, -1.0])), dtype=np.uint8)
    assert got.tolist() == [0x80, 0x00, 0x80, 0x00]


# --------------------------------------------------------------------------- telephone()


def _tone(freq: float, sr: int, seconds: float = 1.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _band_energy(x: np.ndarray, sr: int, lo: float, hi: float) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / sr)
    return float(spec[(freqs >= lo) & (freqs <= hi)].sum())


def test_telephone_output_is_8khz_length_and_float32() -> None:
    x = _tone(1000, 16000, seconds=1.5)
    out = telephone(x, 16000)
    assert out.dtype == np.float32
    assert len(out) == int(1.5 * TELEPHONE_RATE)
    out48 = telephone(_tone(1000, 48000, seconds=0.5), 48000)
    assert len(out48) == TELEPHONE_RATE // 2


def test_telephone_keeps_in_band_tone() -> None:
    out = telephone(_tone(1000, 16000), 16000)
    total = _band_energy(out, TELEPHONE_RATE, 0, TELEPHONE_RATE / 2)
    assert _band_energy(out, TELEPHONE_RATE, 950, 1050) / total > 0.99
    assert abs(rms_dbfs(out) - rms_dbfs(_tone(1000, 16000))) < 0.5


def test_telephone_removes_a_6khz_tone_instead_of_aliasing_it() -> None:
    """A 6 kHz tone at 16 kHz is above the telephone band: it must vanish, not fold down to 2 kHz."""
    passed = telephone(_tone(1000, 16000), 16000)
    blocked = telephone(_tone(6000, 16000), 16000)
    reference = _band_energy(passed, TELEPHONE_RATE, 0, 4000)
    alias = _band_energy(blocked, TELEPHONE_RATE, 1900, 2100)
    residual = _band_energy(blocked, TELEPHONE_RATE, 0, 4000)
    assert 10 * np.log10(alias / reference) < -40
    assert 10 * np.log10(residual / reference) < -40
    assert rms_dbfs(blocked) < rms_dbfs(passed) - 40


def test_telephone_is_mulaw_quantised() -> None:
    out = telephone(_tone(440, 16000, amp=0.3), 16000)
    table = set(mulaw_decode(bytes(range(256))).tolist())
    assert set(np.unique(out).tolist()) <= table


# --------------------------------------------------------------------------- loading


@pytest.mark.parametrize(
    ("suffix", "subtype", "atol"),
    [(".wav", "PCM_16", 1e-4), (".flac", "PCM_16", 1e-4), (".ogg", "VORBIS", None)],
)
def test_load_audio_reads_soundfile_formats(tmp_path, suffix: str, subtype: str, atol: float | None) -> None:
    sr = 16000
    x = _tone(440, sr, seconds=1.0, amp=0.4)
    path = tmp_path / f"clip{suffix}"
    sf.write(str(path), x, sr, subtype=subtype)
    y, rate = load_audio(path)
    assert rate == sr and y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - len(x)) <= 64
    n = min(len(x), len(y))
    if atol is not None:
        np.testing.assert_allclose(y[:n], x[:n], atol=atol)
    else:  # lossy: the waveform survives in shape and level
        assert np.corrcoef(x[:n], y[:n])[0, 1] > 0.95
        assert abs(rms_dbfs(y) - rms_dbfs(x)) < 1.0


def test_load_audio_resamples_when_asked(tmp_path) -> None:
    path = tmp_path / "clip.wav"
    sf.write(str(path), _tone(440, 16000), 16000)
    y, rate = load_audio(path, sr=8000)
    assert rate == 8000 and len(y) == 8000


def test_load_audio_averages_channels_to_mono(tmp_path) -> None:
    sr = 8000
    left = _tone(300, sr, amp=0.5)
    right = _tone(700, sr, amp=0.25)
    path = tmp_path / "stereo.wav"
    sf.write(str(path), np.stack([left, right], axis=1), sr, subtype="FLOAT")
    y, rate = load_audio(path)
    assert y.ndim == 1 and rate == sr
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-6)


def test_load_audio_missing_file_raises(tmp_path) -> None:
    with pytest.raises(AudioLoadError, match="no such audio file"):
        load_audio(tmp_path / "nope.wav")


def test_load_audio_garbage_raises(tmp_path) -> None:
    path = tmp_path / "garbage.wav"
    path.write_bytes(b"this is not audio at all" * 10)
    with pytest.raises(AudioLoadError):
        load_audio(path)


# --------------------------------------------------------------------------- level


@pytest.mark.parametrize("target", [-23.0, -30.0, -12.0])
@pytest.mark.parametrize("amp", [0.001, 0.05, 0.3])
def test_rms_normalise_hits_its_target(target: float, amp: float) -> None:
    rng = np.random.default_rng(1)
    x = (amp * rng.standard_normal(8000)).astype(np.float32)
    y = rms_normalise(x, target)
    assert y.dtype == np.float32
    assert abs(rms_dbfs(y) - target) < 0.01
    # pure scaling: the waveform shape is untouched
    assert np.corrcoef(x, y)[0, 1] > 0.999999


def test_rms_normalise_default_is_minus_23_dbfs() -> None:
    y = rms_normalise(_tone(500, 8000, amp=0.01))
    assert abs(rms_dbfs(y) - (-23.0)) < 0.01


def test_fast_frame_decoder_matches_the_table_for_every_code() -> None:
    """The per-frame decoder the VAD uses gives the G.711 table's value for all 256 codes, in order."""
    codes = bytes(range(256))
    expected = mulaw_decode_pcm16(codes).astype("<i2").tobytes()
    assert mulaw_to_pcm16_bytes(codes) == expected
    assert mulaw_to_pcm16_bytes(codes[::-1]) == mulaw_decode_pcm16(codes[::-1]).astype("<i2").tobytes()
