"""Leak tests: no protocol may let a test speaker's clips, labels or enrolment clips reach what it scores.

Each test instruments the seam the protocol goes through (the fit function it is given, the model it
gets back, the enrolment draws, the inner GroupKFold) and checks what actually crossed it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

import analysis.protocols as protocols
import analysis.training as training
from analysis.baseline import RunningStats
from analysis.model import PainModel
from analysis.protocols import assert_person_split, cross_corpus, person_level
from analysis.training import TrainConfig, enrolment_draws
from tests.analysis_synthetic import Synthetic, fit_synthetic, make_corpus

CHEAP = TrainConfig(classifier="logreg", c_grid=(1.0,), enrol_k=(1, 3), draws=1, inner_folds=2)


@pytest.fixture(scope="module")
def corpus() -> Synthetic:
    return make_corpus(n_speakers=9, clips=12, dim=6, seed=5)


@pytest.fixture
def recorded_draws(monkeypatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every (enrolment rows, scored rows) the protocols draw, recorded as they pass through."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []

    def recording_draws(*args: Any, **kwargs: Any):
        for enrol, scored, k in enrolment_draws(*args, **kwargs):
            seen.append((enrol, scored))
            yield enrol, scored, k

    monkeypatch.setattr(protocols, "enrolment_draws", recording_draws)
    return seen


class RecordingModel:
    """Wraps a fitted model and records every predict_proba call (rows scored, population, baseline)."""

    def __init__(self, model: PainModel, train_groups: np.ndarray) -> None:
        self.model = model
        self.train_groups = set(train_groups.tolist())
        self.calls: list[dict[str, Any]] = []

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def predict_proba(
        self, X: np.ndarray, population: RunningStats | None = None, baseline: RunningStats | None = None
    ) -> np.ndarray:
        self.calls.append({"X": np.array(X, copy=True), "population": population, "baseline": baseline})
        return self.model.predict_proba(X, population=population, baseline=baseline)


def _row_speaker(data: Synthetic) -> dict[bytes, str]:
    lookup = {row.tobytes(): str(g) for row, g in zip(data.X, data.groups, strict=True)}
    assert len(lookup) == len(data.X)  # rows are unique, so a row identifies its clip
    return lookup


# --------------------------------------------------------------------------- the guard itself


def test_assert_person_split_raises_on_shared_speaker() -> None:
    groups = np.array(["a", "a", "b", "b", "c"])
    with pytest.raises(AssertionError, match="'b'"):
        assert_person_split(groups, np.array([0, 1, 2]), np.array([3, 4]))
    assert_person_split(groups, np.array([0, 1]), np.array([2, 3, 4]))  # disjoint: passes


# --------------------------------------------------------------------------- person_level


def test_person_level_never_trains_on_a_test_speaker(corpus: Synthetic) -> None:
    models: list[RecordingModel] = []
    seen_training: list[np.ndarray] = []

    def fit(X: np.ndarray, y: np.ndarray, g: np.ndarray, normal: np.ndarray) -> PainModel:
        seen_training.append(g.copy())
        # the rows handed to fit must be exactly the training speakers' rows, labels included
        rows = np.isin(corpus.groups, g)
        np.testing.assert_array_equal(X, corpus.X[rows])
        np.testing.assert_array_equal(y, corpus.y[rows])
        model = RecordingModel(fit_synthetic(Synthetic(X, y, g, normal), CHEAP), g)
        models.append(model)
        return model  # type: ignore[return-value]

    speaker_of = _row_speaker(corpus)
    res, thresholds = person_level(
        corpus.X, corpus.y, corpus.groups, corpus.normal, fit, folds=3, enrol_k=(1, 3), draws=2, call_k=3
    )
    assert len(models) == 3 and len(thresholds) == 3
    tested: list[str] = []
    for model in models:
        scored = {speaker_of[row.tobytes()] for call in model.calls for row in call["X"]}
        assert scored, "the fold's model scored nothing"
        assert not scored & model.train_groups, f"test speakers {scored & model.train_groups} were trained on"
        tested.extend(sorted(scored))
    # every speaker is tested exactly once, by the one model that never saw them
    assert sorted(tested) == sorted(set(corpus.groups.tolist()))
    assert all(len(set(g.tolist())) == 6 for g in seen_training)
    # the person protocol scores each clip once; baselines only ever score fewer clips than that
    assert sum(len(y) for y in res["person"].y) == len(corpus.y)
    assert res["baseline_3"].y and res["call_3"].y and res["call_none"].y


def test_enrolment_draws_never_score_enrolled_clips() -> None:
    rng = np.random.default_rng(0)
    groups = np.repeat(np.array(["a", "b", "c", "d"]), [6, 3, 8, 2])
    normal = rng.random(len(groups)) < 0.5
    normal[groups == "b"] = True  # a speaker with only normal clips still keeps one clip to score
    normal[groups == "d"] = False  # no normal clips: cannot be enrolled
    seen = set()
    for enrol, scored, k in enrolment_draws(groups, normal, (1, 3, 5), 4, rng, remove_enrolled=True):
        assert not set(enrol.tolist()) & set(scored.tolist())
        assert len(scored) > 0 and 1 <= len(enrol) <= k
        assert normal[enrol].all()
        assert len(set(groups[enrol].tolist()) | set(groups[scored].tolist())) == 1  # one speaker
        np.testing.assert_array_equal(
            np.sort(np.concatenate([enrol, scored])), np.flatnonzero(groups == groups[enrol[0]])
        )
        seen.add(str(groups[enrol[0]]))
    assert "d" not in seen and {"b", "c"} <= seen
    # without removal (training-time), the enrolled clips are scored too
    for enrol, scored, _ in enrolment_draws(groups, normal, (3,), 1, rng, remove_enrolled=False):
        assert set(enrol.tolist()) <= set(scored.tolist())


def test_person_level_baselines_exclude_enrolment_clips(corpus: Synthetic, recorded_draws) -> None:
    draws_seen = recorded_draws
    models: list[RecordingModel] = []

    def fit(X: np.ndarray, y: np.ndarray, g: np.ndarray, normal: np.ndarray) -> PainModel:
        models.append(RecordingModel(fit_synthetic(Synthetic(X, y, g, normal), CHEAP), g))
        return models[-1]  # type: ignore[return-value]

    person_level(corpus.X, corpus.y, corpus.groups, corpus.normal, fit, folds=3, enrol_k=(1, 3), draws=2)
    assert draws_seen
    for enrol, scored in draws_seen:
        assert not set(enrol.tolist()) & set(scored.tolist())
    # and what was scored with a k-clip baseline never contains the clip the baseline was built from
    for model in models:
        for call in model.calls:
            base = call["baseline"]
            if base is None or base.n != 1:
                continue
            enrolled_row = base.mean
            assert not np.any(np.all(call["X"] == enrolled_row, axis=1)), "an enrolment clip was scored"


# --------------------------------------------------------------------------- inner CV of fit_model


def test_fit_model_inner_cv_is_grouped(corpus: Synthetic, monkeypatch) -> None:
    splits: list[tuple[set[str], set[str]]] = []

    class RecordingGroupKFold(GroupKFold):
        def split(self, X, y=None, groups=None):
            for tr, te in super().split(X, y, groups):
                splits.append((set(np.asarray(groups)[tr].tolist()), set(np.asarray(groups)[te].tolist())))
                yield tr, te

    monkeypatch.setattr(training, "GroupKFold", RecordingGroupKFold)
    fit_synthetic(corpus, TrainConfig(classifier="logreg", c_grid=(0.3, 1.0), enrol_k=(1, 3), draws=1, inner_folds=3))
    assert len(splits) == 3
    for tr, te in splits:
        assert tr and te and not tr & te, f"speaker(s) {tr & te} on both sides of an inner split"
    assert set().union(*(te for _, te in splits)) == set(corpus.groups.tolist())


# --------------------------------------------------------------------------- cross-corpus


def test_cross_corpus_population_comes_from_target_features_only(corpus: Synthetic, recorded_draws) -> None:
    source = make_corpus(n_speakers=8, clips=12, dim=6, seed=11)
    model = fit_synthetic(source, CHEAP)
    target = corpus
    rng = np.random.default_rng(0)

    def run(y: np.ndarray) -> tuple[RecordingModel, dict[str, protocols.Scored]]:
        rec = RecordingModel(model, source.groups)
        return rec, cross_corpus(rec, target.X, y, target.groups, target.normal, k=3, draws=2)  # type: ignore[arg-type]

    rec_a, res_a = run(target.y)
    rec_b, res_b = run(rng.permutation(target.y))
    expected = RunningStats.from_array(target.X)
    for rec in (rec_a, rec_b):
        pops = [c["population"] for c in rec.calls if c["population"] is not None]
        assert pops, "no call used the target population"
        for pop in pops:
            assert pop.n == len(target.X)
            np.testing.assert_array_equal(pop.mean, expected.mean)
            np.testing.assert_array_equal(pop.m2, expected.m2)
    # the labels change nothing that was scored: identical probabilities, in the same order
    for name in res_a:
        np.testing.assert_array_equal(np.concatenate(res_a[name].p), np.concatenate(res_b[name].p))
    # enrolled clips are not scored in the cross-corpus baseline protocol either
    assert recorded_draws
    for enrol, scored in recorded_draws:
        assert len(enrol) == 3 and not set(enrol.tolist()) & set(scored.tolist())
    assert sum(c["baseline"] is not None for c in rec_a.calls) == len(recorded_draws) // 2
