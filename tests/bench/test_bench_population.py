"""The population replay of ``bench.population``: what each utterance is scored against, and the windows.

The bench's claim rests on two things no corpus is needed to check: an utterance is scored against
the statistics of the utterances that arrived before it (never itself or later ones; the first
against the training population, or the seed), and the per-window rates count the right rows.
"""

from __future__ import annotations

import numpy as np
import pytest

import analysis.model
from analysis.baseline import RunningStats
from analysis.model import PainModel
from analysis.training import TrainConfig
from bench.population.simulate import (
    OLD_RULE_MIN_N,
    call_specificity,
    old_population,
    replay,
    score_old,
    spread,
    summarise,
    window_rates,
)
from tests.analysis_synthetic import fit_synthetic, make_corpus


@pytest.fixture(scope="module")
def model() -> PainModel:
    return fit_synthetic(
        make_corpus(n_speakers=6, clips=10, dim=4, seed=1), TrainConfig(c_grid=(1.0,), draws=1, inner_folds=2)
    )


@pytest.fixture(scope="module")
def shifted() -> np.ndarray:
    """A live population far from the training one, so what a row is scored against shows in its score."""
    rng = np.random.default_rng(7)
    return make_corpus(n_speakers=4, clips=15, dim=4, seed=2).X[rng.permutation(60)] + 5.0


def test_first_arrival_is_scored_against_the_training_population(model: PainModel, shifted: np.ndarray) -> None:
    order = np.arange(len(shifted))
    probs = replay(model, shifted, order.tolist())
    assert probs[0] == pytest.approx(model.predict_proba(shifted[:1])[0])


def test_each_arrival_sees_only_earlier_ones(model: PainModel, shifted: np.ndarray) -> None:
    order = np.random.default_rng(3).permutation(len(shifted))
    probs = replay(model, shifted, order.tolist())
    for k in (1, 2, 17, len(order) - 1):
        earlier = RunningStats.from_array(shifted[order[:k]])
        expected = model.predict_proba(shifted[order[k]][None, :], population=earlier)[0]
        assert probs[k] == pytest.approx(expected, abs=1e-9)


def test_order_matters(model: PainModel, shifted: np.ndarray) -> None:
    forward = np.arange(len(shifted))
    first = replay(model, shifted, forward.tolist())
    last = replay(model, shifted, forward[::-1].tolist())
    # row 0 arrives first in one replay (training scale) and last in the other (nearly the live scale)
    assert first[0] != pytest.approx(last[-1], abs=1e-3)


def test_seed_rows_are_folded_in_before_the_first_arrival_and_not_scored(model: PainModel, shifted: np.ndarray) -> None:
    seed, live = shifted[:30], shifted[30:]
    probs = replay(model, live, np.arange(len(live)).tolist(), seed_rows=seed)
    assert len(probs) == len(live)
    expected = model.predict_proba(live[:1], population=RunningStats.from_array(seed))[0]
    assert probs[0] == pytest.approx(expected, abs=1e-9)


def test_old_rule_is_the_training_population_then_the_live_one_alone(
    model: PainModel, shifted: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    prior = model.normaliser.population
    assert prior is not None
    few = RunningStats.from_array(shifted[: OLD_RULE_MIN_N - 1])
    many = RunningStats.from_array(shifted[:OLD_RULE_MIN_N])
    assert old_population(few, prior) is prior and old_population(many, prior) is many
    x = shifted[-1]
    assert score_old(model, x, few) == pytest.approx(model.predict_proba(x[None, :])[0], abs=1e-12)
    monkeypatch.setattr(analysis.model, "POPULATION_PRIOR_N", 0)  # shrinkage off: the live statistics alone
    assert score_old(model, x, many) == pytest.approx(model.predict_proba(x[None, :], population=many)[0], abs=1e-9)


def test_windows_count_the_right_arrivals() -> None:
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.95, 0.3, 0.6])
    pain = np.array([0, 0, 1, 1, 1, 1, 0])
    windows = [(1, 2), (3, 4), (5, 10), (11, None)]
    rates = window_rates(probs, pain, threshold=0.5, windows=windows)
    assert [(w.start, w.end, w.n) for w in rates] == [(1, 2, 2), (3, 4, 2), (5, 7, 3)]  # cut at the end; 11+ absent
    assert rates[0].specificity == 0.5 and rates[0].sensitivity is None
    assert rates[1].specificity is None and rates[1].sensitivity == 0.5
    assert rates[2].specificity == 0.0 and rates[2].sensitivity == 0.5
    assert window_rates(np.array([0.5]), np.array([0]), 0.5, [(1, None)])[0].specificity == 0.0  # p >= thr flags


def test_summary_spreads_over_orders() -> None:
    a = window_rates(np.array([0.1, 0.9]), np.array([0, 0]), 0.5, [(1, 1), (2, None)])
    b = window_rates(np.array([0.9, 0.9]), np.array([0, 0]), 0.5, [(1, 1), (2, None)])
    rows = summarise([a, b])
    assert [r["window"] for r in rows] == ["1-1", "2-2"]
    assert rows[0]["specificity"]["mean"] == 0.5 and rows[0]["specificity"]["min"] == 0.0
    assert rows[1]["specificity"]["max"] == 0.0
    assert spread([None, None])["mean"] is None


def test_calls_are_runs_of_one_speakers_no_pain_arrivals() -> None:
    speakers = np.array(["a", "b", "a", "a", "a", "b", "a", "c", "c", "c", "c"])
    pain = np.array([0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    probs = np.array([0.9, 0.1, 0.9, 0.99, 0.9, 0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    speech = np.array([1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    out = call_specificity(probs, pain, speakers, speech, threshold=0.5)
    # a: one call of its four no-pain arrivals (the pain one skipped), flagged; b: too few; c: too little speech
    assert out == {"calls": 1, "specificity": 0.0}
    probs[0] = probs[2] = 0.05  # log-odds averaged: two low and two high utterances
    assert call_specificity(probs, pain, speakers, speech, threshold=0.5)["specificity"] == 1.0
