"""Synthetic speaker corpora for the analysis tests: big per-speaker offsets, a modest pain effect.

The data are built so that identity dominates the features (as in real voices): a classifier that
ignores who is speaking struggles on new speakers, while one that compares each clip with the
speaker's own normal clips sees the pain effect clearly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analysis.model import PainModel
from analysis.training import TrainConfig, fit_model


@dataclass
class Synthetic:
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    normal: np.ndarray

    def speakers(self, names: list[str] | np.ndarray) -> Synthetic:
        keep = np.isin(self.groups, names)
        return Synthetic(self.X[keep], self.y[keep], self.groups[keep], self.normal[keep])


def make_corpus(
    n_speakers: int = 12,
    clips: int = 20,
    dim: int = 10,
    offset_sd: float = 3.0,
    effect: float = 1.0,
    seed: int = 0,
) -> Synthetic:
    """Half of each speaker's clips are pain (+effect on the first half of the dimensions)."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.array([f"spk{i:02d}" for i in range(n_speakers)]), clips)
    y = np.tile(np.arange(clips) % 2, n_speakers)
    offsets = rng.normal(0.0, offset_sd, size=(n_speakers, dim)).repeat(clips, axis=0)
    effect_vec = np.where(np.arange(dim) < dim // 2, effect, 0.0)
    level = rng.uniform(-50, 50, size=dim)  # raw features are nowhere near standardised
    X = level + offsets + y[:, None] * effect_vec + rng.normal(size=(len(y), dim))
    return Synthetic(X, y, groups, y == 0)


def fit_synthetic(data: Synthetic, cfg: TrainConfig | None = None, name: str = "synthetic") -> PainModel:
    dim = data.X.shape[1]
    return fit_model(
        data.X,
        data.y,
        data.groups,
        data.normal,
        feature_names=[f"f{i}" for i in range(dim)],
        embedder={"name": name, "dim": dim},
        channel={"telephone": True, "rms_normalise": True},
        task={"name": "synthetic", "classes": {"no_pain": ["calm"], "pain": ["hurt"]}},
        training_data={"corpus": "synthetic"},
        cfg=cfg or TrainConfig(c_grid=(1.0,), draws=1, inner_folds=3),
    )
