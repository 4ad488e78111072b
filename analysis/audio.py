"""Loading and resampling audio.

soundfile reads WAV, FLAC and OGG (and MP3 with libsndfile >= 1.1); anything it cannot read goes
through pydub, which shells out to ffmpeg. Everything comes back as mono float32 in [-1, 1].
"""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly


class AudioLoadError(ValueError):
    """The file is missing or in a format neither soundfile nor ffmpeg can read."""


def to_mono(x: np.ndarray) -> np.ndarray:
    """Average channels: soundfile returns (frames, channels) for multi-channel files."""
    return x.mean(axis=1) if x.ndim == 2 else x


def resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    """Band-limited polyphase resampling (anti-aliased, so 16 -> 8 kHz is telephone-faithful)."""
    if sr_in == sr_out:
        return np.asarray(x, dtype=np.float32)
    g = gcd(int(sr_in), int(sr_out))
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def load_audio(path: str | Path, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Read ``path`` as mono float32, resampled to ``sr`` when given. Returns ``(samples, rate)``."""
    path = Path(path)
    if not path.exists():
        raise AudioLoadError(f"no such audio file: {path}")
    try:
        import soundfile as sf

        data, rate = sf.read(str(path), dtype="float32", always_2d=False)
    except Exception as sf_error:  # libsndfile could not parse it: try ffmpeg
        data, rate = _load_with_pydub(path, sf_error)
    x = to_mono(np.asarray(data, dtype=np.float32))
    if sr is not None and sr != rate:
        x, rate = resample(x, rate, sr), sr
    return x, int(rate)


def _load_with_pydub(path: Path, cause: Exception) -> tuple[np.ndarray, int]:
    try:
        from pydub import AudioSegment

        seg = AudioSegment.from_file(str(path))
    except Exception as exc:
        raise AudioLoadError(f"cannot read {path}: soundfile said {cause!s}; ffmpeg said {exc!s}") from exc
    samples = np.array(seg.get_array_of_samples(), dtype=np.float32)
    if seg.channels > 1:
        samples = samples.reshape(-1, seg.channels)
    scale = float(1 << (8 * seg.sample_width - 1))
    return samples / scale, seg.frame_rate


def rms_dbfs(x: np.ndarray) -> float:
    """Root-mean-square level in dB relative to full scale (-inf guarded to -120 dB)."""
    rms = float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if len(x) else 0.0
    return float(20.0 * np.log10(max(rms, 1e-6)))


def rms_normalise(x: np.ndarray, target_dbfs: float = -23.0) -> np.ndarray:
    """Scale to a target RMS level: removes recording level, which is a confound in the corpora."""
    gain = 10.0 ** ((target_dbfs - rms_dbfs(x)) / 20.0)
    scaled: np.ndarray = np.clip(x * gain, -1.0, 1.0)
    return scaled.astype(np.float32)
