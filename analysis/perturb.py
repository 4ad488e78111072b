"""Test-time damage to a call's audio: additive noise, babble and lost packets.

The corpora were recorded in quiet rooms; callers are not. These functions let the bench ask how
much a score depends on that quiet (the robustness rows in docs/detection.md) without new
recordings. Every choice is seeded from the clip, so a rerun damages each clip the same way and
the feature cache stays valid.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from enum import StrEnum

import numpy as np

FRAME_SAMPLES = 160
"""One 20 ms media frame at 8 kHz: the unit Twilio sends and the unit a network loses."""


class Noise(StrEnum):
    NONE = ""
    WHITE = "white"
    BABBLE = "babble"  # other speakers talking at once, as in a waiting room or a ward


def clip_rng(name: str, salt: str) -> np.random.Generator:
    """A generator seeded from the clip's name and what it is used for (repeatable across runs)."""
    digest = hashlib.sha1(f"{salt}:{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def mix_at_snr(x: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    """``x`` plus ``noise`` scaled so the whole clip's power ratio is ``snr_db``, clipped as a phone would."""
    if noise.size < x.size:
        noise = np.resize(noise, x.size)  # loop a short noise source
    noise = noise[: x.size].astype(np.float64)
    signal, level = _rms(x), _rms(noise)
    if signal == 0.0 or level == 0.0:
        return x.astype(np.float32)
    gain = signal / (level * 10 ** (snr_db / 20))
    return np.clip(x + gain * noise, -1.0, 1.0).astype(np.float32)


def white(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(n).astype(np.float32)


def babble(sources: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Several other voices summed, each at the same level, looped to ``n`` samples."""
    if not sources:
        raise ValueError("babble needs at least one other speaker's clip")
    out = np.zeros(n, dtype=np.float64)
    for s in sources:
        level = _rms(s)
        if level > 0:
            out += np.resize(s.astype(np.float64) / level, n)
    return out.astype(np.float32)


def drop_frames(x: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Silence a random ``fraction`` of 20 ms frames, as the jitter buffer fills a lost packet."""
    if fraction <= 0:
        return x
    frames = -(-x.size // FRAME_SAMPLES)
    lost = rng.random(frames) < fraction
    mask = np.repeat(~lost, FRAME_SAMPLES)[: x.size]
    return (x * mask).astype(np.float32)
