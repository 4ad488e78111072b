"""Running statistics at two levels: the deployment's caller population, and each caller.

Speaker identity dominates voice features, so a raw feature vector says more about *who* is
speaking than *how they feel*. painline therefore compares each utterance with

1. the deployment population (mean and spread of every utterance this hotline has heard, updated
   from unlabelled traffic, so a new phone network or language adapts without labels), and then
2. the caller's own normal voice, where painline has heard it, shrunk toward the population when it
   has heard little of it.

Both levels are :class:`RunningStats`: Welford's online mean/variance, mergeable with Chan's
parallel formula (so workers can update concurrently and merge), serialisable to plain JSON for
the database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

_EPS = 1e-8


@dataclass
class RunningStats:
    """Per-dimension count, mean and sum of squared deviations (M2)."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, dim: int) -> RunningStats:
        return cls(0, np.zeros(dim), np.zeros(dim))

    @classmethod
    def from_array(cls, X: np.ndarray) -> RunningStats:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        mean = X.mean(axis=0) if len(X) else np.zeros(X.shape[1])
        return cls(len(X), mean, ((X - mean) ** 2).sum(axis=0))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def update(self, x: np.ndarray) -> RunningStats:
        """Add one vector (Welford) or a batch of rows (merged as a block). Returns self."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim == 2:
            return self.merge_in(RunningStats.from_array(x))
        self.n += 1
        delta = x - self.mean
        self.mean = self.mean + delta / self.n
        self.m2 = self.m2 + delta * (x - self.mean)
        return self

    def merge_in(self, other: RunningStats) -> RunningStats:
        """Combine another set of statistics into this one (Chan et al.). Returns self."""
        if other.n == 0:
            return self
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean.copy(), other.m2.copy()
            return self
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.n / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.n * other.n / n)
        self.n = n
        return self

    def merged(self, other: RunningStats) -> RunningStats:
        return self.copy().merge_in(other)

    def copy(self) -> RunningStats:
        return RunningStats(self.n, self.mean.copy(), self.m2.copy())

    @property
    def var(self) -> np.ndarray:
        """Sample variance (n - 1); zero where fewer than two vectors were seen."""
        return self.m2 / (self.n - 1) if self.n > 1 else np.zeros_like(self.mean)

    @property
    def std(self) -> np.ndarray:
        std: np.ndarray = np.sqrt(self.var)
        return std

    def to_dict(self) -> dict[str, Any]:
        return {"n": int(self.n), "mean": self.mean.tolist(), "m2": self.m2.tolist()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunningStats:
        return cls(int(d["n"]), np.asarray(d["mean"], dtype=np.float64), np.asarray(d["m2"], dtype=np.float64))


def shrunk_mean(caller: RunningStats, prior_mean: np.ndarray, tau: float) -> np.ndarray:
    """The caller's mean pulled toward ``prior_mean`` as if ``tau`` prior vectors had been seen.

    With one enrolment utterance and tau = 2, the estimate is one third the caller and two thirds
    the population; with twenty it is nearly all the caller.
    """
    return (caller.n * caller.mean + tau * np.asarray(prior_mean)) / (caller.n + tau)


def pooled_within_std(X: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Square root of the average within-group variance: the spread left once identity is removed."""
    total = RunningStats.empty(X.shape[1])
    for g in np.unique(groups):
        rows = X[groups == g]
        total.m2 = total.m2 + ((rows - rows.mean(axis=0)) ** 2).sum(axis=0)
        total.n += len(rows) - 1
    return np.sqrt(total.m2 / max(total.n, 1))


@dataclass
class TwoLevelNormaliser:
    """Population standardisation, then optional subtraction of the caller's (shrunk) baseline.

    Fitted on training data (``fit``), then applied with whatever population statistics the
    deployment has (``transform(..., population=...)``): the training corpus's own by default, or
    the target population's when scoring a new corpus or hotline. In population-standardised units
    the population mean is zero, so shrinkage pulls the caller's mean toward zero.

    ``within_scale`` is the pooled within-speaker spread in standardised units, estimated on the
    training speakers: dividing by it puts caller-relative deviations on a common scale.
    """

    population: RunningStats | None = None
    within_scale: np.ndarray | None = None
    tau: float = 2.0

    def fit(self, X: np.ndarray, groups: np.ndarray) -> TwoLevelNormaliser:
        self.population = RunningStats.from_array(X)
        self.within_scale = np.maximum(pooled_within_std(self.standardise(X), groups), 0.05)
        return self

    def standardise(self, X: np.ndarray, population: RunningStats | None = None) -> np.ndarray:
        pop = population or self.population
        if pop is None:
            raise RuntimeError("normaliser is not fitted and no population statistics were given")
        z: np.ndarray = (np.asarray(X, dtype=np.float64) - pop.mean) / (pop.std + _EPS)
        return z

    def caller_offset(self, caller: RunningStats, population: RunningStats | None = None) -> np.ndarray:
        """The caller's shrunk mean in standardised units, from their raw-feature baseline statistics.

        Standardisation is affine, so the standardised mean is the standardised raw mean; baselines
        can therefore be stored raw and re-read against whatever population statistics are current.
        """
        z_mean = self.standardise(caller.mean[None, :], population)[0]
        return shrunk_mean(RunningStats(caller.n, z_mean, caller.m2), np.zeros_like(z_mean), self.tau)

    def relative(self, X: np.ndarray, offset: np.ndarray, population: RunningStats | None = None) -> np.ndarray:
        """Utterances relative to the caller: standardised, minus the caller's offset, rescaled."""
        assert self.within_scale is not None
        rel: np.ndarray = (self.standardise(X, population) - offset) / self.within_scale
        return rel

    def to_dict(self) -> dict[str, Any]:
        assert self.population is not None and self.within_scale is not None
        return {
            "population": self.population.to_dict(),
            "within_scale": self.within_scale.tolist(),
            "tau": self.tau,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TwoLevelNormaliser:
        return cls(RunningStats.from_dict(d["population"]), np.asarray(d["within_scale"]), float(d["tau"]))
