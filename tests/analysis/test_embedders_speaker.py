"""The resemblyzer speaker embedder: shape, normalisation, determinism, and a real same-speaker check."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import embedders as base
from analysis.channel import TELEPHONE_RATE, telephone
from analysis.embedders.speaker import SpeakerEmbedder, SpeakerSpreadEmbedder, cosine_similarity

REPO = Path(__file__).resolve().parents[2]


def _voice(seconds: float, f0: float, sr: int = TELEPHONE_RATE, seed: int = 0) -> np.ndarray:
    """A crude voiced sound: harmonics of a wobbling pitch plus a little breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    pitch = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * 3.0 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    x = sum(np.sin(k * phase) / k for k in range(1, 12) if k * f0 < sr / 2)
    x = x * (0.6 + 0.4 * np.sin(2 * np.pi * 1.5 * t) ** 2) + 0.02 * rng.standard_normal(len(t))
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


@pytest.fixture(scope="module")
def embedder() -> SpeakerEmbedder:
    pytest.importorskip("resemblyzer")
    return SpeakerEmbedder()


def test_import_does_not_pull_in_torch() -> None:
    heavy = "('torch', 'resemblyzer', 'librosa')"
    code = f"import sys, analysis.embedders.speaker; sys.exit(any(m in sys.modules for m in {heavy}))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_registered_under_its_name() -> None:
    assert "speaker" in base.available()
    assert isinstance(base.get_embedder("speaker"), SpeakerEmbedder)


def test_shape_dim_and_unit_norm(embedder: SpeakerEmbedder) -> None:
    clips = [_voice(0.5, 110), _voice(3.0, 210, seed=1), _voice(10.0, 150, seed=2)]
    out = embedder.embed(clips)
    assert embedder.dim == 256
    assert out.shape == (3, 256)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.describe() == {"name": "speaker", "dim": 256, "sample_rate": 16000}


def test_deterministic_and_batch_equals_one_by_one(embedder: SpeakerEmbedder) -> None:
    clips = [_voice(1.0, 120), _voice(2.5, 220, seed=3), _voice(4.0, 180, seed=4)]
    batch = embedder.embed(clips)
    np.testing.assert_array_equal(batch, embedder.embed(clips))
    single = np.vstack([embedder.embed([c]) for c in clips])
    np.testing.assert_allclose(batch, single, atol=1e-6)
    # different inputs must not collapse onto one vector
    assert cosine_similarity(batch[0], batch[1]) < 0.999


def test_telephone_audio_lands_near_the_wideband_original(embedder: SpeakerEmbedder) -> None:
    wide = _voice(3.0, 140, sr=16000, seed=5)
    narrow = telephone(wide, 16000)
    default_rate = embedder.embed([narrow])
    np.testing.assert_array_equal(default_rate, embedder.embed([narrow], sr=TELEPHONE_RATE))
    # passing the clip's true rate changes the result, so the rate is really used
    assert not np.allclose(default_rate, embedder.embed([narrow], sr=16000))
    assert cosine_similarity(default_rate[0], embedder.embed([wide], sr=16000)[0]) > 0.8


def test_silence_and_tiny_clips_stay_finite(embedder: SpeakerEmbedder) -> None:
    out = embedder.embed([np.zeros(TELEPHONE_RATE, dtype=np.float32), _voice(0.1, 200)])
    assert np.all(np.isfinite(out))
    assert all(np.isclose(n, 1.0, atol=1e-5) or n == 0.0 for n in np.linalg.norm(out, axis=1))


def test_torch_thread_setting_is_restored(embedder: SpeakerEmbedder) -> None:
    import torch

    before = torch.get_num_threads()
    embedder.embed([_voice(1.0, 130)])
    assert torch.get_num_threads() == before


def test_empty_batch_gives_empty_matrix(embedder: SpeakerEmbedder) -> None:
    assert embedder.embed([]).shape == (0, 256)


def test_cosine_similarity_properties() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal(256), rng.standard_normal(256)
    assert cosine_similarity(a, a) == pytest.approx(1.0)
    assert cosine_similarity(a, b) == pytest.approx(cosine_similarity(b, a))
    assert cosine_similarity(a, -a) == pytest.approx(-1.0)
    assert cosine_similarity(a, 3.0 * a) == pytest.approx(1.0)
    assert abs(cosine_similarity(a, b)) < 0.5  # random 256-d vectors are near-orthogonal
    assert cosine_similarity(a, np.zeros(256)) == 0.0
    with pytest.raises(ValueError, match="shapes"):
        cosine_similarity(a, np.ones(128))


def test_missing_backend_raises_embedder_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "resemblyzer", None)  # makes `import resemblyzer` fail
    with pytest.raises(base.EmbedderUnavailable, match="resemblyzer"):
        SpeakerEmbedder().embed([_voice(1.0, 120)])


def _ravdess() -> Path:
    root = Path(os.environ.get("PAINLINE_DATA_DIR", REPO.parent / "shared" / "data"))
    return root / "ravdess"


@pytest.mark.corpus
def test_same_actor_is_closer_than_other_actors(embedder: SpeakerEmbedder) -> None:
    folder = _ravdess()
    if not folder.is_dir():
        pytest.skip(f"RAVDESS not found at {folder}")
    from analysis.audio import load_audio

    names = {
        "a01_s1": "A01/03-01-01-01-01-01-01.flac",
        "a01_s2": "A01/03-01-01-01-02-01-01.flac",  # same actor, other sentence
        "a02": "A02/03-01-01-01-01-01-02.flac",  # female
        "a03": "A03/03-01-01-01-01-01-03.flac",  # male, like A01: the harder case
    }
    clips = {k: telephone(*load_audio(folder / "audio" / v)) for k, v in names.items()}
    e = dict(zip(clips, embedder.embed(list(clips.values())), strict=True))
    same = cosine_similarity(e["a01_s1"], e["a01_s2"])
    for other in ("a02", "a03"):
        assert same > cosine_similarity(e["a01_s1"], e[other])
        assert same > cosine_similarity(e["a01_s2"], e[other])


def test_pooled_similarity_weighs_each_utterance_the_same() -> None:
    from analysis.embedders.speaker import cosine_similarity, pooled_similarity

    reference = np.array([1.0, 0.0, 0.0])
    loud_match, quiet_other = np.array([10.0, 0.0, 0.0]), np.array([0.0, 0.1, 0.0])
    # normalised before averaging: the long (large-norm) vector does not drown the other
    assert pooled_similarity([loud_match, quiet_other], reference) == pytest.approx(
        cosine_similarity(np.array([1.0, 1.0, 0.0]), reference)
    )
    assert pooled_similarity([loud_match], reference) == pytest.approx(1.0)
    assert pooled_similarity([], reference) == 0.0
    assert pooled_similarity([np.zeros(3)], reference) == 0.0


def test_spread_keeps_the_d_vector_and_adds_how_the_partials_move(embedder: SpeakerEmbedder) -> None:
    pytest.importorskip("resemblyzer")
    spread = base.get_embedder("speaker-spread")
    assert isinstance(spread, SpeakerSpreadEmbedder)
    steady, sliding = _voice(4.0, 150, seed=5), _voice(4.0, 150, seed=5)
    t = np.arange(len(sliding)) / TELEPHONE_RATE
    sliding = (sliding * (0.1 + 0.9 * t / t[-1])).astype(np.float32)  # its level climbs through the clip
    sliding = np.concatenate([sliding[: len(sliding) // 2], _voice(2.0, 260, seed=6)])  # then another voice
    out = spread.embed([steady, sliding, _voice(0.5, 110)])
    assert out.shape == (3, 512) and spread.describe()["name"] == "speaker-spread"
    # the mean of the partials points where the plain d-vector does
    assert cosine_similarity(out[0, :256], embedder.embed([steady])[0]) > 0.99
    # a clip whose voice changes spreads more than a steady one; one shorter than a partial not at all
    assert out[1, 256:].sum() > out[0, 256:].sum()
    assert not out[2, 256:].any()
