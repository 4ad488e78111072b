"""The robustness rows' damage: noise at the SNR asked, lost frames as the jitter buffer fills them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from analysis.features import ChannelConfig, prepare
from analysis.perturb import FRAME_SAMPLES, Noise, babble, clip_rng, drop_frames, mix_at_snr, white


def _tone(n: int = 8000, amp: float = 0.1) -> np.ndarray:
    t = np.arange(n) / 8000
    return (amp * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


@pytest.mark.parametrize("snr_db", [20.0, 10.0, 0.0])
def test_noise_is_mixed_at_the_snr_asked(snr_db: float) -> None:
    x = _tone()
    y = mix_at_snr(x, white(x.size, clip_rng("a.flac", "white")), snr_db)
    noise = y.astype(np.float64) - x
    measured = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean(noise**2))
    assert measured == pytest.approx(snr_db, abs=0.05)


def test_silence_stays_silent_rather_than_dividing_by_zero() -> None:
    x = np.zeros(800, dtype=np.float32)
    assert np.array_equal(mix_at_snr(x, white(800, clip_rng("s", "white")), 10.0), x)


def test_lost_frames_are_whole_20ms_frames_of_silence_at_about_the_rate_asked() -> None:
    x = np.ones(FRAME_SAMPLES * 2000, dtype=np.float32)
    y = drop_frames(x, 0.05, clip_rng("c.flac", "frame_loss")).reshape(-1, FRAME_SAMPLES)
    per_frame = y.sum(axis=1)
    assert set(np.unique(per_frame)) == {0.0, float(FRAME_SAMPLES)}  # a frame is lost whole or not at all
    assert 0.035 < (per_frame == 0).mean() < 0.065
    # seeded from the clip: the same clip loses the same frames on every run
    again = drop_frames(x, 0.05, clip_rng("c.flac", "frame_loss")).reshape(-1, FRAME_SAMPLES).sum(axis=1)
    assert np.array_equal(per_frame, again)


def test_babble_needs_other_voices_and_loops_them() -> None:
    with pytest.raises(ValueError, match="other speaker"):
        babble([], 100)
    b = babble([_tone(300), _tone(500, 0.5)], 1000)
    assert b.shape == (1000,) and np.isfinite(b).all() and np.abs(b).max() > 0


def test_undamaged_features_keep_their_cache_key_and_damage_changes_it() -> None:
    plain = ChannelConfig(telephone=True, rms_normalise=True, segment=True)
    assert json.loads(plain.key()) == {"telephone": True, "rms_normalise": True, "gain_db": 0.0, "segment": True}
    assert not plain.damaged
    noisy = ChannelConfig(telephone=True, rms_normalise=True, segment=True, noise=Noise.BABBLE, snr_db=10.0)
    assert noisy.damaged and noisy.key() != plain.key()
    assert noisy.card() == plain.card()  # damage is a test condition, never part of a model's card


def test_prepare_damages_a_clip_through_the_phone_band(tmp_path: Path) -> None:
    clip = tmp_path / "clip.flac"
    sf.write(clip, _tone(16000, 0.3), 16000)
    other = tmp_path / "other.flac"
    sf.write(other, _tone(8000, 0.2)[::-1].copy(), 8000)
    clean = prepare(clip, ChannelConfig())
    noisy = prepare(clip, ChannelConfig(noise=Noise.WHITE, snr_db=10.0))
    talked_over = prepare(clip, ChannelConfig(noise=Noise.BABBLE, snr_db=10.0), [other])
    lossy = prepare(clip, ChannelConfig(frame_loss=0.5))
    assert clean.shape == noisy.shape == talked_over.shape == lossy.shape
    residual = noisy.astype(np.float64) - clean
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean(residual**2))
    assert 8.5 < snr < 11.5  # 10 dB, give or take the codec's own quantisation
    assert not np.allclose(talked_over, clean)
    assert (lossy.reshape(-1, FRAME_SAMPLES) == 0).all(axis=1).mean() > 0.3
