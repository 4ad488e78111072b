"""The HeAR embedder, run through its real loading path on a tiny SavedModel with HeAR's signature.

HeAR's weights are gated, so the test saves a small ``tf.Module`` whose ``serving_default``
signature has HeAR's exact contract (``x: float32[None, 32000]`` -> ``output_0``) and loads it the
way a site would load the real folder.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis import embedders as base
from analysis.channel import TELEPHONE_RATE
from analysis.embedders.hear import HEAR_RATE, PATH_SETTING, WINDOW_SAMPLES, HearEmbedder, window_starts
from painline.config import Settings
from painline.workers import embedder_sources

REPO = Path(__file__).resolve().parents[2]
OUT_DIM = 12


def _save_tiny(folder: Path, *, output_key: str = "output_0", static_dim: bool = True) -> Path:
    """Energy in 64 consecutive chunks of the window, projected to OUT_DIM: position-sensitive."""
    tf = pytest.importorskip("tensorflow")
    weights = np.random.default_rng(0).standard_normal((64, OUT_DIM)).astype(np.float32)

    module_base: Any = tf.Module  # tensorflow ships no types

    class Tiny(module_base):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(weights)

        @tf.function(input_signature=[tf.TensorSpec([None, WINDOW_SAMPLES], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:  # tf.Tensor: tensorflow ships no types
            energy = tf.reduce_mean(tf.square(tf.reshape(x, [-1, 64, WINDOW_SAMPLES // 64])), axis=-1)
            y = tf.matmul(tf.sqrt(energy + 1e-6), self.w)
            if not static_dim:  # hide the width from the signature, as some exported models do
                y = tf.reshape(y, [-1, tf.shape(x)[0] * 0 + OUT_DIM])
            return {output_key: y}

    module = Tiny()
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_tiny(tmp_path_factory.mktemp("tiny_hear"))


@pytest.fixture(scope="module")
def embedder(model_dir: Path) -> HearEmbedder:
    return HearEmbedder(path=model_dir, batch_size=2)


def _clips(seconds: list[float], sr: int = TELEPHONE_RATE, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out = []
    for s in seconds:
        n = int(s * sr)
        envelope = 0.2 + np.abs(np.sin(np.linspace(0, rng.uniform(2, 9), n)))
        out.append((0.2 * envelope * rng.standard_normal(n)).astype(np.float32))
    return out


def test_import_does_not_pull_in_tensorflow() -> None:
    code = "import sys, analysis.embedders.hear; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_registered_under_its_name(model_dir: Path) -> None:
    assert isinstance(base.get_embedder("hear", path=model_dir), HearEmbedder)


@pytest.mark.parametrize(
    ("seconds", "hop_s", "starts_s"),
    [
        (0.3, 1.0, [0]),
        (2.0, 1.0, [0]),
        (2.5, 1.0, [0, 1]),
        (4.0, 1.0, [0, 1, 2]),
        (4.0, 2.0, [0, 2]),
        (4.1, 2.0, [0, 2, 4]),
    ],
)
def test_window_starts(seconds: float, hop_s: float, starts_s: list[int]) -> None:
    starts = window_starts(round(seconds * HEAR_RATE), WINDOW_SAMPLES, round(hop_s * HEAR_RATE))
    assert starts == [s * HEAR_RATE for s in starts_s]


def test_dim_comes_from_the_model(embedder: HearEmbedder) -> None:
    out = embedder.embed(_clips([0.5, 2.0, 6.3]))
    assert embedder.dim == OUT_DIM
    assert out.shape == (3, OUT_DIM)
    assert out.dtype == np.float32
    assert np.all(np.isfinite(out))


def test_dim_is_probed_when_the_signature_does_not_say(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "dynamic", static_dim=False)
    embedder = HearEmbedder(path=folder)
    assert embedder.dim == OUT_DIM
    assert embedder.embed(_clips([1.0])).shape == (1, OUT_DIM)


def test_deterministic_and_batch_equals_one_by_one(embedder: HearEmbedder) -> None:
    clips = _clips([0.7, 3.3, 2.0, 5.0], seed=1)  # 1 + 3 + 1 + 4 windows, batch_size 2
    batch = embedder.embed(clips)
    np.testing.assert_array_equal(batch, embedder.embed(clips))
    single = np.vstack([embedder.embed([c]) for c in clips])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-6)
    assert not np.allclose(batch[0], batch[1])


def test_clip_is_the_mean_of_its_overlapping_windows(embedder: HearEmbedder) -> None:
    (clip,) = _clips([3.0], sr=HEAR_RATE, seed=2)  # 1 s hop: windows 0-2 s and 1-3 s
    windows = [clip[:WINDOW_SAMPLES], clip[HEAR_RATE : HEAR_RATE + WINDOW_SAMPLES]]
    expected = embedder.embed(windows, sr=HEAR_RATE).mean(axis=0)
    np.testing.assert_allclose(embedder.embed([clip], sr=HEAR_RATE)[0], expected, rtol=1e-5, atol=1e-6)


def test_short_clip_is_zero_padded(embedder: HearEmbedder) -> None:
    (clip,) = _clips([0.8], sr=HEAR_RATE, seed=3)
    padded = np.zeros(WINDOW_SAMPLES, dtype=np.float32)
    padded[: len(clip)] = clip
    np.testing.assert_allclose(embedder.embed([clip], sr=HEAR_RATE), embedder.embed([padded], sr=HEAR_RATE), rtol=1e-6)


def test_no_overlap_option_uses_fewer_windows(model_dir: Path) -> None:
    (clip,) = _clips([4.0], sr=HEAR_RATE, seed=4)
    halves = [clip[:WINDOW_SAMPLES], clip[WINDOW_SAMPLES:]]
    no_overlap = HearEmbedder(path=model_dir, hop_s=2.0)
    expected = no_overlap.embed(halves, sr=HEAR_RATE).mean(axis=0)
    np.testing.assert_allclose(no_overlap.embed([clip], sr=HEAR_RATE)[0], expected, rtol=1e-5, atol=1e-6)
    assert no_overlap.describe()["hop_s"] == 2.0


def test_telephone_rate_input_is_resampled_to_16k(embedder: HearEmbedder) -> None:
    (narrow,) = _clips([2.0], seed=5)
    at_8k = embedder.embed([narrow])
    np.testing.assert_array_equal(at_8k, embedder.embed([narrow], sr=TELEPHONE_RATE))
    assert not np.allclose(at_8k, embedder.embed([narrow], sr=HEAR_RATE))


def test_the_deployment_setting_reaches_the_embedder(model_dir: Path) -> None:
    """PAINLINE_HEAR_PATH -> Settings -> the sources the composition root passes -> the embedder."""
    settings = Settings.from_env({PATH_SETTING: str(model_dir)})
    assert base.get_embedder("hear", embedder_sources(settings)).dim == OUT_DIM


def test_no_path_at_all_is_unavailable(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setenv(PATH_SETTING, str(model_dir))  # the environment is not read below painline/
    with pytest.raises(base.EmbedderUnavailable, match=PATH_SETTING):
        HearEmbedder().embed(_clips([1.0]))


def test_missing_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(base.EmbedderUnavailable, match=r"no HeAR SavedModel at .*nowhere"):
        _ = HearEmbedder(path=tmp_path / "nowhere").dim


def test_wrong_signature_is_unavailable(tmp_path: Path) -> None:
    folder = _save_tiny(tmp_path / "other", output_key="embedding")
    with pytest.raises(base.EmbedderUnavailable, match="output_0"):
        _ = HearEmbedder(path=folder).dim


def test_missing_backend_is_unavailable(monkeypatch: pytest.MonkeyPatch, model_dir: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(base.EmbedderUnavailable, match="TensorFlow"):
        _ = HearEmbedder(path=model_dir).dim


def test_bad_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="hop_s"):
        HearEmbedder(path="x", hop_s=3.0)
    with pytest.raises(ValueError, match="batch_size"):
        HearEmbedder(path="x", batch_size=0)
