"""Nuisance attribute projection (NAP): remove the directions in which speakers differ most.

A voice feature vector says more about who is speaking (and in which language, on which recording
chain) than about how they feel. The population path sees every caller on the population's scale,
so the directions along which whole speakers sit apart are, to it, mostly noise it may mistake for
distress. NAP estimates those directions as the leading principal axes of the training speakers'
mean vectors and projects them out before the classifier: ``x' = x - U Uᵀ x``.

It is a scikit-learn transformer whose ``fit`` takes the speakers as ``groups`` (pass it through a
pipeline as ``<step>__groups``); with ``n_components=0`` it is the identity.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin


class NuisanceProjection(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Project out the ``n_components`` leading directions of between-speaker variation."""

    # the training procedure passes the speakers as ``groups`` to the fit of any estimator that says so
    fit_requires_groups: ClassVar[bool] = True

    def __init__(self, n_components: int = 0) -> None:
        self.n_components = n_components

    def fit(self, X: np.ndarray, y: Any = None, *, groups: np.ndarray | None = None) -> NuisanceProjection:
        X = np.asarray(X, dtype=np.float64)
        if groups is None:
            raise ValueError("NuisanceProjection.fit needs groups (one speaker id per row)")
        groups = np.asarray(groups)
        speakers = np.unique(groups)
        k = min(self.n_components, len(speakers) - 1, X.shape[1])
        if k <= 0:
            self.components_ = np.zeros((0, X.shape[1]))
            return self
        means = np.stack([X[groups == s].mean(axis=0) for s in speakers])
        # axes of the speaker means' spread around their own centre (each speaker counts once)
        _, _, vt = np.linalg.svd(means - means.mean(axis=0), full_matrices=False)
        self.components_ = vt[:k]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        return X - (X @ self.components_.T) @ self.components_
