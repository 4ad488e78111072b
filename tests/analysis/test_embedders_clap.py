"""The CLAP embedder, run through its real loading path on a tiny random checkpoint saved to disk.

The hub is unreachable in CI, so a miniature ``ClapConfig`` model (and a feature extractor with a
2 s window, so windowing of long clips is exercised cheaply) is written with ``save_pretrained``
and loaded by folder, exactly as a site would load a downloaded LAION checkpoint.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import embedders as base
from analysis.channel import TELEPHONE_RATE
from analysis.embedders.clap import CLAP_RATE, ClapEmbedder

REPO = Path(__file__).resolve().parents[2]
PROJECTION_DIM = 24
WINDOW_S = 2


def _tiny_checkpoint(folder: Path, *, fusion: bool = False, extractor_rate: int = CLAP_RATE) -> Path:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    audio = {
        "spec_size": 64,
        "num_mel_bins": 16,
        "window_size": 4,
        "patch_size": 4,
        "patch_stride": (4, 4),
        "patch_embeds_hidden_size": 8,
        "hidden_size": 16,  # patch_embeds_hidden_size * 2 ** (len(depths) - 1)
        "depths": [1, 1],
        "num_attention_heads": [1, 2],
        "enable_fusion": fusion,
        "fusion_type": "aff_2d" if fusion else None,
    }
    text = {
        "vocab_size": 99,
        "hidden_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "max_position_embeddings": 40,
    }
    torch.manual_seed(0)
    config = transformers.ClapConfig(audio_config=audio, text_config=text, projection_dim=PROJECTION_DIM)
    transformers.ClapModel(config).save_pretrained(folder)
    transformers.ClapFeatureExtractor(
        feature_size=16,
        sampling_rate=extractor_rate,
        max_length_s=WINDOW_S,
        frequency_max=min(14_000, extractor_rate // 2),
        truncation="fusion" if fusion else "rand_trunc",
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_checkpoint(tmp_path_factory.mktemp("tiny_clap"))


@pytest.fixture(scope="module")
def embedder(checkpoint: Path) -> ClapEmbedder:
    return ClapEmbedder(model=checkpoint, batch_size=3)


def _clips(seconds: list[float], sr: int = TELEPHONE_RATE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * sr)) / sr
        tone = np.sin(2 * np.pi * (150 + 60 * i) * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
        out.append((0.2 * tone + 0.03 * rng.standard_normal(len(t))).astype(np.float32))
    return out


def test_import_does_not_pull_in_torch_or_transformers() -> None:
    heavy = "('torch', 'transformers')"
    code = f"import sys, analysis.embedders.clap; sys.exit(any(m in sys.modules for m in {heavy}))"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_registered_under_its_name(checkpoint: Path) -> None:
    assert isinstance(base.get_embedder("clap", model=checkpoint), ClapEmbedder)


def test_dim_comes_from_the_checkpoint_and_rows_are_unit_norm(embedder: ClapEmbedder) -> None:
    out = embedder.embed(_clips([0.5, 2.0, 7.3]))
    assert embedder.dim == PROJECTION_DIM
    assert out.shape == (3, PROJECTION_DIM)
    assert out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.describe()["sample_rate"] == CLAP_RATE


def test_long_clips_are_deterministic(embedder: ClapEmbedder) -> None:
    # 5 s is longer than the 2 s window: the extractor alone would crop it at a random offset
    clips = _clips([5.0, 9.0], seed=1)
    np.testing.assert_array_equal(embedder.embed(clips), embedder.embed(clips))


def test_batch_equals_one_by_one(embedder: ClapEmbedder) -> None:
    clips = _clips([0.6, 1.5, 4.2, 3.0, 2.0], seed=2)  # 5 clips, 9 windows, batch_size 3
    batch = embedder.embed(clips)
    single = np.vstack([embedder.embed([c]) for c in clips])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert float(batch[0] @ batch[2]) < 0.9999  # distinct clips give distinct vectors


def test_long_clip_is_the_mean_of_its_windows(embedder: ClapEmbedder) -> None:
    window = WINDOW_S * CLAP_RATE
    (clip,) = _clips([2 * WINDOW_S], sr=CLAP_RATE, seed=3)
    halves = embedder.embed([clip[:window], clip[window:]], sr=CLAP_RATE)
    whole = embedder.embed([clip], sr=CLAP_RATE)[0]
    expected = halves.mean(axis=0)
    np.testing.assert_allclose(whole, expected / np.linalg.norm(expected), atol=1e-5)


def test_telephone_rate_input_is_resampled_to_48k(embedder: ClapEmbedder) -> None:
    (narrow,) = _clips([1.0], seed=4)
    at_8k = embedder.embed([narrow])
    np.testing.assert_array_equal(at_8k, embedder.embed([narrow], sr=TELEPHONE_RATE))
    # claiming the 8 kHz samples were 48 kHz audio (6x faster, 1/6 the length) gives another vector
    assert not np.allclose(at_8k, embedder.embed([narrow], sr=CLAP_RATE), atol=1e-4)


def test_fusion_checkpoints_are_deterministic_too(tmp_path: Path) -> None:
    embedder = ClapEmbedder(model=_tiny_checkpoint(tmp_path / "fused", fusion=True))
    clips = _clips([0.7, 1.2, 3.5], seed=5)
    out = embedder.embed(clips)
    assert out.shape == (3, PROJECTION_DIM)
    np.testing.assert_array_equal(out, embedder.embed(clips))
    np.testing.assert_allclose(out, np.vstack([embedder.embed([c]) for c in clips]), atol=1e-5)


def test_missing_folder_is_unavailable(tmp_path: Path) -> None:
    embedder = ClapEmbedder(model=tmp_path / "nowhere")
    with pytest.raises(base.EmbedderUnavailable, match=r"no CLAP model at .*nowhere"):
        embedder.embed(_clips([1.0]))


def test_folder_without_a_checkpoint_is_unavailable(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    with pytest.raises(base.EmbedderUnavailable, match="could not load CLAP model"):
        _ = ClapEmbedder(model=tmp_path).dim


def test_extractor_at_another_rate_is_refused(tmp_path: Path) -> None:
    folder = _tiny_checkpoint(tmp_path / "wrong_rate", extractor_rate=16000)
    with pytest.raises(base.EmbedderUnavailable, match="16000 Hz"):
        _ = ClapEmbedder(model=folder).dim


def test_missing_backend_is_unavailable(monkeypatch: pytest.MonkeyPatch, checkpoint: Path) -> None:
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(base.EmbedderUnavailable, match="transformers"):
        _ = ClapEmbedder(model=checkpoint).dim
