"""Nuisance attribute projection and sample weights in training (analysis.nuisance, analysis.training)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.pipeline import Pipeline

from analysis.baseline import RunningStats
from analysis.metrics import roc_auc
from analysis.nuisance import NuisanceProjection
from analysis.training import TIMING_FEATURES, TrainConfig, feature_mask, fit_estimator, fit_model
from tests.analysis_synthetic import Synthetic, fit_synthetic, make_corpus


def _low_rank_speakers(n_speakers: int, seed: int, clips: int = 20, dim: int = 10) -> Synthetic:
    """Speakers far apart along two directions; pain moves every clip along a third, orthogonal one."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(np.random.default_rng(99).normal(size=(dim, 3)))  # the same axes for every corpus
    groups = np.repeat(np.array([f"s{seed}-{i}" for i in range(n_speakers)]), clips)
    y = np.tile(np.arange(clips) % 2, n_speakers)
    who = rng.normal(0.0, 20.0, size=(n_speakers, 2)).repeat(clips, axis=0) @ basis[:, :2].T
    X = who + 1.5 * y[:, None] * basis[:, 2] + rng.normal(size=(len(y), dim))
    return Synthetic(X, y, groups, y == 0)


def test_projection_removes_the_directions_speakers_differ_in_and_keeps_the_rest() -> None:
    data = _low_rank_speakers(12, seed=0)
    nap = NuisanceProjection(2).fit(data.X, groups=data.groups)
    Z = nap.transform(data.X)
    means = np.stack([Z[data.groups == s].mean(axis=0) for s in np.unique(data.groups)])
    raw = np.stack([data.X[data.groups == s].mean(axis=0) for s in np.unique(data.groups)])
    assert means.std(axis=0).max() < 0.2 * raw.std(axis=0).max()
    # the pain direction survives: pain and normal clips still differ by most of the effect
    gap = np.linalg.norm(Z[data.y == 1].mean(axis=0) - Z[data.y == 0].mean(axis=0))
    assert gap > 1.2


def test_projection_needs_speakers_and_is_the_identity_with_no_components() -> None:
    data = make_corpus(n_speakers=4, clips=6, dim=5)
    with pytest.raises(ValueError, match="groups"):
        NuisanceProjection(2).fit(data.X)
    assert np.allclose(NuisanceProjection(0).fit(data.X, groups=data.groups).transform(data.X), data.X)


def test_a_projected_model_scores_new_speakers_better_when_identity_swamps_the_effect() -> None:
    train, test = _low_rank_speakers(16, seed=3), _low_rank_speakers(10, seed=4)
    cfg = TrainConfig(c_grid=(1.0,), draws=1, inner_folds=3)
    plain = fit_synthetic(train, cfg)
    projected = fit_synthetic(train, TrainConfig(c_grid=(1.0,), draws=1, inner_folds=3, nap_components=2))
    assert isinstance(projected.population_clf, Pipeline)
    assert projected.card["training"]["nap_components"] == 2
    population = RunningStats.from_array(test.X)
    auc_plain = roc_auc(test.y, plain.population_logit(test.X, population))
    auc_projected = roc_auc(test.y, projected.population_logit(test.X, population))
    assert auc_projected > auc_plain + 0.05, (auc_plain, auc_projected)


def test_sample_weights_reach_both_classifiers() -> None:
    """Speakers whose labels are wrong stop misleading the model once their clips weigh nothing."""
    corpus = make_corpus(n_speakers=32, clips=20, dim=10, offset_sd=0.5, effect=1.5, seed=3)
    names = np.unique(corpus.groups)
    clean, wrong, test = corpus.speakers(names[:12]), corpus.speakers(names[12:24]), corpus.speakers(names[24:])
    wrong.y = 1 - wrong.y  # normal and pain swapped
    X, y = np.vstack([clean.X, wrong.X]), np.concatenate([clean.y, wrong.y])
    groups, normal = np.concatenate([clean.groups, wrong.groups]), np.concatenate([clean.normal, wrong.y == 0])
    bad = np.isin(groups, names[12:24])

    def fit(weight: np.ndarray | None) -> tuple[float, float]:
        model = fit_model(
            X,
            y,
            groups,
            normal,
            feature_names=[f"f{i}" for i in range(10)],
            embedder={"name": "synthetic", "dim": 10},
            channel={},
            task={"name": "synthetic"},
            training_data={"corpus": "synthetic"},
            cfg=TrainConfig(c_grid=(1.0,), draws=1, inner_folds=3),
            sample_weight=weight,
        )
        # the classifiers' own scores: calibration is chosen on every clip once, wrong labels included
        population = RunningStats.from_array(test.X)
        baseline = RunningStats.from_array(test.X[test.normal][:3])
        return (
            roc_auc(test.y, model.population_logit(test.X, population)),
            roc_auc(test.y, model.caller_logit(test.X, baseline, population)),
        )

    unweighted, weighted = fit(None), fit(np.where(bad, 1e-3, 1.0))
    for path in (0, 1):  # population, caller
        assert weighted[path] > unweighted[path] + 0.1, (path, unweighted, weighted)
        assert weighted[path] > 0.8


def test_the_timing_columns_can_be_left_out_with_or_without_the_level_ones() -> None:
    names = ["F0semitoneFrom27.5Hz_sma3nz_amean", "loudness_sma3_amean", *TIMING_FEATURES]
    assert feature_mask(names, drop_level=False).all()
    assert feature_mask(names, drop_level=False, drop_timing=True).tolist() == [True, True] + [False] * 6
    assert feature_mask(names, drop_level=True, drop_timing=True).tolist() == [True, False] + [False] * 6


class _Recorder(ClassifierMixin, BaseEstimator):
    """Remembers what its fit was given."""

    def fit(self, X: np.ndarray, y: np.ndarray, **kwargs: Any) -> _Recorder:
        self.fitted_with_ = sorted(kwargs)
        return self


class _GroupsRecorder(_Recorder):
    fit_requires_groups: ClassVar[bool] = True


def test_speakers_reach_the_fit_of_the_estimators_that_declare_they_need_them() -> None:
    data = make_corpus(n_speakers=4, clips=6, dim=5)
    weight = np.ones(len(data.y))

    def fitted_with(estimator: Any, weight: np.ndarray | None) -> list[str]:
        fitted = fit_estimator(estimator, data.X, data.y, data.groups, weight)
        assert fitted is not None
        return list((fitted.steps[-1][1] if isinstance(fitted, Pipeline) else fitted).fitted_with_)

    assert fitted_with(_Recorder(), weight) == ["sample_weight"]
    assert fitted_with(_GroupsRecorder(), None) == ["groups"]
    # in a pipeline the projection gets its groups (it raises without them), the final step its own share
    assert fitted_with(Pipeline([("nap", NuisanceProjection(1)), ("last", _Recorder())]), weight) == ["sample_weight"]
    pipeline = Pipeline([("nap", NuisanceProjection(1)), ("last", _GroupsRecorder())])
    assert fitted_with(pipeline, weight) == ["groups", "sample_weight"]
