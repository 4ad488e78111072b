"""The model artifact: one joblib file plus a JSON model card beside it.

A :class:`PainModel` scores embedded utterances in two paths and blends them:

- the *population* path: features standardised by the deployment population's statistics;
- the *caller* path: features relative to the caller's own (shrunk) baseline.

How much the caller path counts depends on how many baseline utterances the caller has, and was
chosen on held-out speakers during training; where the baseline did not help, its weight is zero,
so a baseline can never make the model worse than it was on training speakers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from analysis.aggregate import logit, sigmoid
from analysis.baseline import RunningStats, TwoLevelNormaliser

FORMAT_VERSION = 1
POPULATION_PRIOR_N = 100
"""How many utterances the training population counts for against the deployment's own.

The live population statistics are merged with the training population's, the latter weighted as
if it were this many utterances: a new hotline starts on the training scale and moves onto its own
callers' scale smoothly as they are heard (half way at this many utterances), instead of jumping
from one to the other at a fixed count. Seeding (``painline population seed``) gives a hotline its
own scale before go-live."""


class ModelMismatchError(ValueError):
    """The artifact was trained for another embedder or feature dimension than the one configured."""


@dataclass
class Platt:
    """One-dimensional logistic calibration of a log-odds score."""

    a: float = 1.0
    b: float = 0.0

    def __call__(self, z: np.ndarray) -> np.ndarray:
        return self.a * np.asarray(z) + self.b


@dataclass
class PainModel:
    """Everything needed to score an utterance; see the module docstring."""

    card: dict[str, Any]
    normaliser: TwoLevelNormaliser
    population_clf: Any  # scikit-learn estimator with predict_proba (or decision_function)
    caller_clf: Any | None
    feature_mask: np.ndarray
    # [(min_n, weight)], ascending min_n: weight of the caller path for a baseline of n utterances
    blend: list[tuple[int, float]] = field(default_factory=lambda: [(1, 0.0)])
    population_cal: Platt = field(default_factory=Platt)
    blended_cal: Platt = field(default_factory=Platt)

    # ------------------------------------------------------------------ identity
    @property
    def embedder_name(self) -> str:
        return str(self.card["embedder"]["name"])

    @property
    def dim(self) -> int:
        return int(self.card["embedder"]["dim"])

    @property
    def version(self) -> str:
        return str(self.card["model_version"])

    @property
    def threshold(self) -> float:
        return float(self.card["threshold"]["value"])

    @property
    def rms_normalise(self) -> bool:
        return bool(self.card.get("channel", {}).get("rms_normalise", False))

    # ------------------------------------------------------------------ scoring
    def caller_weight(self, n: int) -> float:
        weight = 0.0
        for min_n, w in self.blend:
            if n >= min_n:
                weight = w
        return weight if self.caller_clf is not None else 0.0

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if X.shape[1] != self.dim:
            raise ModelMismatchError(
                f"model {self.version} expects {self.dim}-d {self.embedder_name} features, got {X.shape[1]}-d"
            )
        return X

    def _population(self, population: RunningStats | None) -> RunningStats:
        assert self.normaliser.population is not None
        return shrunk_population(population, self.normaliser.population, POPULATION_PRIOR_N)

    def population_logit(self, X: np.ndarray, population: RunningStats | None = None) -> np.ndarray:
        z = self.normaliser.standardise(self._check(X), self._population(population))[:, self.feature_mask]
        return _decision(self.population_clf, z)

    def caller_logit(self, X: np.ndarray, baseline: RunningStats, population: RunningStats | None = None) -> np.ndarray:
        assert self.caller_clf is not None
        pop = self._population(population)
        offset = self.normaliser.caller_offset(baseline, pop)
        r = self.normaliser.relative(self._check(X), offset, pop)[:, self.feature_mask]
        return _decision(self.caller_clf, r)

    def predict_proba(
        self,
        X: np.ndarray,
        population: RunningStats | None = None,
        baseline: RunningStats | None = None,
    ) -> np.ndarray:
        """Calibrated probability of pain per row of ``X`` (raw embedder output)."""
        lp = self.population_logit(X, population)
        w = self.caller_weight(baseline.n) if baseline is not None and baseline.n > 0 else 0.0
        if w <= 0.0:
            return sigmoid(self.population_cal(lp))
        assert baseline is not None
        lb = self.caller_logit(X, baseline, population)
        return sigmoid(self.blended_cal(w * lb + (1.0 - w) * lp))

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write ``path`` (joblib) and ``path`` with ``.card.json`` beside it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump({"format_version": FORMAT_VERSION, "model": self}, path, compress=3)
        card_path(path).write_text(json.dumps(self.card, indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path, expect_embedder: str | None = None, expect_dim: int | None = None) -> PainModel:
        """Load an artifact, refusing one trained for another embedder or dimension."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"no model artifact at {path}; train one with `painline train`")
        blob = joblib.load(path)
        if not isinstance(blob, dict) or blob.get("format_version") != FORMAT_VERSION:
            raise ModelMismatchError(f"{path} is not a painline model artifact of format {FORMAT_VERSION}")
        model: PainModel = blob["model"]
        if expect_embedder and expect_embedder != model.embedder_name:
            raise ModelMismatchError(
                f"{path} was trained on '{model.embedder_name}' features but the embedder configured is "
                f"'{expect_embedder}': retrain with --embedder {expect_embedder} or configure "
                f"'{model.embedder_name}'"
            )
        if expect_dim is not None and expect_dim != model.dim:
            raise ModelMismatchError(f"{path} expects {model.dim}-d features but the embedder produces {expect_dim}-d")
        return model


def shrunk_population(live: RunningStats | None, prior: RunningStats, prior_n: float) -> RunningStats:
    """The live population's mean and spread, each pulled toward ``prior``'s as if ``prior_n`` of the
    prior's utterances had been seen too (see :data:`POPULATION_PRIOR_N`).

    With no live data this is the prior; with ``prior_n`` live utterances, half way; with many, the
    live population. Mean and variance are interpolated separately: pooling the two populations as
    one sample would add their mean difference to the spread and shrink every score toward zero.
    """
    if live is None or live.n == 0:
        return prior
    k = float(prior_n)
    mean = (k * prior.mean + live.n * live.mean) / (k + live.n)
    var = (k * prior.var + max(live.n - 1, 0) * live.var) / (k + max(live.n - 1, 0))
    n = live.n + round(k)
    return RunningStats(n, mean, var * (n - 1))


def card_path(model_path: str | Path) -> Path:
    p = Path(model_path)
    return p.with_name(p.stem + ".card.json")


def model_version(card: dict[str, Any]) -> str:
    """A short content hash of what defines the model (embedder, task, data, settings)."""
    ident = {k: card[k] for k in ("embedder", "task", "training_data", "training", "channel") if k in card}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]


def _decision(clf: Any, Z: np.ndarray) -> np.ndarray:
    if hasattr(clf, "decision_function"):
        return np.asarray(clf.decision_function(Z), dtype=np.float64)
    return logit(clf.predict_proba(Z)[:, 1])
