"""Behaviour of analysis.metrics and analysis.plots: agreement with sklearn, hand-computed cases,
and the statistical properties the speaker-grouped bootstrap exists for."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from analysis import metrics as M
from analysis import plots

# --------------------------------------------------------------------------- fixtures / helpers


def _clustered(n_speakers: int, clips_per_speaker: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic corpus where speakers differ a lot: own score offset and own pain prevalence."""
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_speakers), clips_per_speaker)
    offset = rng.normal(0.0, 2.0, n_speakers)[groups]
    prevalence = rng.uniform(0.1, 0.9, n_speakers)[groups]
    y = (rng.random(groups.size) < prevalence).astype(int)
    p = offset + 1.0 * y + rng.normal(0.0, 0.5, groups.size)
    return y, p, groups


def _ci_width(ci: tuple[float, float, float]) -> float:
    return ci[2] - ci[1]


binary_data = st.integers(min_value=2, max_value=60).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 1), min_size=n, max_size=n),
        st.lists(st.integers(-5, 5), min_size=n, max_size=n),  # small range: plenty of ties
    )
)


# --------------------------------------------------------------------------- AUC


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_continuous(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    p = rng.normal(size=500) + 0.7 * y
    assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_heavy_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 400)
    p = rng.integers(0, 4, 400) + y * rng.integers(0, 2, 400)
    assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)


def test_auc_hand_example_with_tie() -> None:
    # pairs (pos, neg): (0.5,0.5) tie -> 0.5, (0.5,0.1) -> 1, (0.9,0.5) -> 1, (0.9,0.1) -> 1
    assert M.roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9]) == pytest.approx(3.5 / 4)


def test_auc_single_class_is_nan_not_error() -> None:
    assert np.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert np.isnan(M.roc_auc([0, 1], [0.1, 0.2], sample_weight=[1, 0]))


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        M.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.roc_auc([0, 1], [0.1, np.nan])
    with pytest.raises(ValueError):
        M.roc_auc([0, 1], [0.1])


@pytest.mark.parametrize("seed", range(5))
def test_weighted_auc_equals_auc_of_concatenated_sample(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.normal(size=300) + y, 1)  # rounding creates ties across repeated clips
    w = rng.integers(0, 4, 300)
    idx = np.repeat(np.arange(300), w)
    expected = roc_auc_score(y[idx], p[idx])
    assert M.roc_auc(y, p, sample_weight=w) == pytest.approx(expected, abs=1e-12)


def test_batch_auc_rows_equal_single_calls() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    p = rng.normal(size=200) + y
    W = rng.integers(0, 3, (25, 200)).astype(float)
    batch = M.roc_auc_batch(y, p, W)
    single = [M.roc_auc(y, p, sample_weight=row) for row in W]
    np.testing.assert_allclose(batch, single, atol=1e-12)


@settings(max_examples=200, deadline=None)
@given(binary_data)
def test_auc_properties(data: tuple[list[int], list[int]]) -> None:
    y, p = np.array(data[0]), np.array(data[1], dtype=float)
    auc = M.roc_auc(y, p)
    if y.min() == y.max():
        assert np.isnan(auc)
        return
    assert 0.0 <= auc <= 1.0
    assert M.roc_auc(y, -p) == pytest.approx(1.0 - auc, abs=1e-12)
    assert M.roc_auc(1 - y, p) == pytest.approx(1.0 - auc, abs=1e-12)
    assert M.roc_auc(y, np.exp(p / 3.0)) == pytest.approx(auc, abs=1e-12)  # rank-only
    assert auc == pytest.approx(roc_auc_score(y, p), abs=1e-12)


@settings(max_examples=100, deadline=None)
@given(binary_data, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_sensitivity_falls_as_specificity_target_rises(data: tuple[list[int], list[int]], a: float, b: float) -> None:
    y, p = np.array(data[0]), np.array(data[1], dtype=float)
    if y.min() == y.max():
        return
    lo, hi = sorted((a, b))
    assert M.sensitivity_at_specificity(y, p, hi) <= M.sensitivity_at_specificity(y, p, lo)
    # the reported threshold really achieves the target and the reported sensitivity
    t = M.threshold_for_specificity(y, p, hi)
    yhat = p >= t
    spec = np.mean(~yhat[y == 0])
    assert spec >= hi - 1e-12
    assert np.mean(yhat[y == 1]) == pytest.approx(M.sensitivity_at_specificity(y, p, hi))


# --------------------------------------------------------------------------- thresholded metrics

Y10 = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
P10 = [0.1, 0.2, 0.3, 0.4, 0.8, 0.35, 0.5, 0.6, 0.7, 0.9]


def test_sens_at_spec_hand_example() -> None:
    # spec >= 0.9 allows no false positive: only 0.9 can be flagged -> sens 1/5
    assert M.sensitivity_at_specificity(Y10, P10, 0.9) == pytest.approx(0.2)
    assert M.threshold_for_specificity(Y10, P10, 0.9) == pytest.approx(0.9)
    # spec >= 0.8 allows the negative at 0.8: flag >= 0.5 -> 0.5, 0.6, 0.7, 0.9 -> sens 4/5
    assert M.sensitivity_at_specificity(Y10, P10, 0.8) == pytest.approx(0.8)
    assert M.threshold_for_specificity(Y10, P10, 0.8) == pytest.approx(0.5)
    assert M.sensitivity_at_specificity(Y10, P10, 0.0) == pytest.approx(1.0)
    assert M.threshold_for_specificity(Y10, P10, 0.0) == pytest.approx(0.1)


def test_sens_at_spec_never_splits_ties() -> None:
    # positive and negative tied at 0.5: flagging the positive costs half the negatives
    y, p = [0, 1, 0, 1], [0.5, 0.5, 0.1, 0.9]
    assert M.sensitivity_at_specificity(y, p, 0.9) == pytest.approx(0.5)
    assert M.sensitivity_at_specificity(y, p, 0.5) == pytest.approx(1.0)


def test_threshold_when_nothing_can_be_flagged() -> None:
    y, p = [1, 0], [0.2, 0.9]
    t = M.threshold_for_specificity(y, p, 0.9)
    assert 0.9 < t < 0.9 + 1e-9
    assert M.sensitivity_at_specificity(y, p, 0.9) == 0.0


def test_sens_at_spec_requires_both_classes() -> None:
    with pytest.raises(ValueError):
        M.sensitivity_at_specificity([1, 1], [0.1, 0.2])


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.75])
def test_balanced_accuracy_matches_sklearn(threshold: float) -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    p = rng.random(300)
    expected = balanced_accuracy_score(y, (p >= threshold).astype(int))
    assert M.balanced_accuracy(y, p, threshold) == pytest.approx(expected)


def test_balanced_accuracy_hand_example() -> None:
    # at 0.5: sens 4/5, spec 4/5 -> 0.8
    assert M.balanced_accuracy(Y10, P10, 0.5) == pytest.approx(0.8)
    assert np.isnan(M.balanced_accuracy([1, 1], [0.2, 0.9], 0.5))


def test_confusion_layout() -> None:
    cm = M.confusion([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], labels=[0, 1])
    assert cm.tolist() == [[1, 1], [1, 2]]
    # a missing class still gets its row/column when labels are given
    assert M.confusion([1, 1], [1, 1], labels=[0, 1]).tolist() == [[0, 0], [0, 2]]
    assert M.confusion(["a", "b"], ["b", "b"]).tolist() == [[0, 1], [0, 1]]
    with pytest.raises(ValueError):
        M.confusion([0, 2], [0, 1], labels=[0, 1])


# --------------------------------------------------------------------------- calibration


def test_ece_hand_example() -> None:
    y, p = [0, 1, 0, 1], [0.05, 0.15, 0.15, 0.95]
    # bins of 0.1: |0-.05|*1/4 + |.5-.15|*2/4 + |1-.95|*1/4 = (.05 + .7 + .05) / 4
    assert M.expected_calibration_error(y, p, 10) == pytest.approx(0.2)
    # two bins: [0,.5) holds 3 clips (mean p .11667, rate 1/3); [.5,1] holds .95 vs 1
    assert M.expected_calibration_error(y, p, 2) == pytest.approx(0.75 * (1 / 3 - 0.35 / 3) + 0.25 * 0.05)


def test_ece_probability_one_lands_in_last_bin() -> None:
    assert M.expected_calibration_error([1, 0], [1.0, 0.0]) == pytest.approx(0.0)


def test_ece_near_zero_for_calibrated_probabilities() -> None:
    rng = np.random.default_rng(11)
    p = rng.random(200_000)
    y = (rng.random(p.size) < p).astype(int)
    assert M.expected_calibration_error(y, p) < 0.01
    # an over-confident version of the same scores is clearly worse
    sharp = np.clip(0.5 + 1.8 * (p - 0.5), 0.0, 1.0)
    assert M.expected_calibration_error(y, sharp) > 0.1


def test_ece_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError):
        M.expected_calibration_error([0, 1], [-0.1, 0.5])


# --------------------------------------------------------------------------- multi-class


def _multiclass(seed: int, n: int = 400, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.0
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, P


@pytest.mark.parametrize("seed", range(3))
def test_macro_auc_ovr_matches_sklearn(seed: int) -> None:
    y, P = _multiclass(seed)
    expected = roc_auc_score(y, P, multi_class="ovr", average="macro")
    assert M.macro_auc_ovr(y, P) == pytest.approx(expected, abs=1e-12)


def test_macro_auc_ovr_with_named_labels_and_missing_class() -> None:
    y, P = _multiclass(5, k=3)
    names = np.array(["calm", "mild", "severe"])
    assert M.macro_auc_ovr(names[y], P, labels=list(names)) == pytest.approx(M.macro_auc_ovr(y, P))
    keep = y != 2  # class 2 absent: averaged over the two defined classes only
    both = [M.roc_auc(y[keep] == c, P[keep, c]) for c in (0, 1)]
    assert M.macro_auc_ovr(y[keep], P[keep]) == pytest.approx(np.mean(both))
    with pytest.raises(ValueError):
        M.macro_auc_ovr([0, 5], P[:2])


def test_balanced_accuracy_multiclass_matches_sklearn() -> None:
    y, P = _multiclass(2)
    yhat = P.argmax(axis=1)
    expected = balanced_accuracy_score(y, yhat)
    assert M.balanced_accuracy_multiclass(y, yhat) == pytest.approx(expected)
    assert M.balanced_accuracy_multiclass(y, P) == pytest.approx(expected)  # argmax path


# --------------------------------------------------------------------------- grouped bootstrap


def test_bootstrap_ci_contains_point_and_is_deterministic() -> None:
    y, p, g = _clustered(60, 20, seed=1)
    point, low, high = M.grouped_bootstrap_ci(y, p, g, M.roc_auc, n_boot=500, seed=3)
    assert point == pytest.approx(M.roc_auc(y, p))
    assert low < point < high
    assert M.grouped_bootstrap_ci(y, p, g, M.roc_auc, n_boot=500, seed=3) == (point, low, high)
    assert M.grouped_bootstrap_ci(y, p, g, M.roc_auc, n_boot=500, seed=4) != (point, low, high)


def test_bootstrap_ci_narrows_with_more_speakers() -> None:
    few = M.grouped_bootstrap_ci(*_clustered(20, 20, seed=2), M.roc_auc)
    many = M.grouped_bootstrap_ci(*_clustered(400, 20, seed=2), M.roc_auc)
    assert _ci_width(many) < 0.6 * _ci_width(few)


def test_grouping_by_speaker_widens_ci_for_clustered_data() -> None:
    y, p, g = _clustered(40, 50, seed=4)
    by_speaker = M.grouped_bootstrap_ci(y, p, g, M.roc_auc)
    by_clip = M.grouped_bootstrap_ci(y, p, np.arange(y.size), M.roc_auc)
    assert by_speaker[0] == by_clip[0]
    assert _ci_width(by_speaker) > 1.5 * _ci_width(by_clip)


def test_vectorised_bootstrap_equals_explicit_concatenation() -> None:
    """Fast weighted path, sample_weight path and explicit concatenation see identical replicates."""
    y, p, g = _clustered(15, 12, seed=6)
    fast = M.grouped_bootstrap_ci(y, p, g, M.roc_auc, n_boot=200, seed=9)
    via_weights = M.grouped_bootstrap_ci(y, p, g, roc_auc_score, n_boot=200, seed=9)

    def unweighted_auc(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(roc_auc_score(yy, pp))

    via_concat = M.grouped_bootstrap_ci(y, p, g, unweighted_auc, n_boot=200, seed=9)
    np.testing.assert_allclose(fast, via_weights, atol=1e-12)
    np.testing.assert_allclose(fast, via_concat, atol=1e-12)

    t = float(np.median(p))
    ba_fast = M.grouped_bootstrap_ci(y, p, g, functools.partial(M.balanced_accuracy, threshold=t), n_boot=200, seed=9)

    def ba_concat(yy: np.ndarray, pp: np.ndarray) -> float:
        return float(balanced_accuracy_score(yy, (pp >= t).astype(int)))

    np.testing.assert_allclose(ba_fast, M.grouped_bootstrap_ci(y, p, g, ba_concat, n_boot=200, seed=9))


def test_bootstrap_skips_single_class_replicates() -> None:
    # 4 speakers, each with one class only: many replicates draw only one class
    y = np.array([0] * 5 + [0] * 5 + [1] * 5 + [1] * 5)
    p = np.linspace(0, 1, 20)
    g = np.repeat(["a", "b", "c", "d"], 5)
    point, low, high = M.grouped_bootstrap_ci(y, p, g, M.roc_auc, n_boot=300)
    assert point == 1.0
    assert low == high == 1.0  # every defined replicate is perfect; undefined ones did not count
    all_pos = M.grouped_bootstrap_ci(np.ones(6, int), np.arange(6.0), np.arange(6), M.roc_auc)
    assert all(np.isnan(v) for v in all_pos)


def test_bootstrap_works_for_multiclass_metric() -> None:
    y, P = _multiclass(8, n=300, k=3)
    g = np.arange(300) // 10
    point, low, high = M.grouped_bootstrap_ci(y, P, g, M.macro_auc_ovr, n_boot=100)
    assert low <= point <= high


# --------------------------------------------------------------------------- summary


def test_summarise_is_json_and_consistent() -> None:
    y, s, g = _clustered(30, 10, seed=12)
    p = 1.0 / (1.0 + np.exp(-s))
    out = M.summarise(y, p, g, threshold=0.5, n_boot=200)
    json.dumps(out, allow_nan=False)
    assert out["n_clips"] == 300 and out["n_speakers"] == 30
    assert out["auc"] == pytest.approx(roc_auc_score(y, p))
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    assert out["balanced_accuracy"] == pytest.approx(M.balanced_accuracy(y, p, 0.5))
    assert out["sens_at_90spec"] == pytest.approx(M.sensitivity_at_specificity(y, p, 0.9))
    assert out["ece"] == pytest.approx(M.expected_calibration_error(y, p))
    (tn, fp), (fn, tp) = out["confusion"]
    assert tn + fp == out["n_negative"] and fn + tp == out["n_positive"]
    assert tp == int(np.sum((p >= 0.5) & (y == 1)))


def test_summarise_reports_undefined_values_as_none() -> None:
    out = M.summarise([1, 1, 1], [2.0, 3.0, 4.0], ["a", "b", "c"], threshold=3.0, n_boot=20)
    json.dumps(out, allow_nan=False)
    assert out["auc"] is None and out["auc_ci"] == [None, None]
    assert out["sens_at_90spec"] is None
    assert out["ece"] is None  # scores outside [0, 1] are not probabilities


# --------------------------------------------------------------------------- plots


def _assert_png(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 5000


def test_plots_write_png_files(tmp_path) -> None:
    y, s, g = _clustered(25, 12, seed=13)
    p = 1.0 / (1.0 + np.exp(-s))
    rng = np.random.default_rng(0)
    out = [
        plots.roc_plot({"model": (y, p), "random": (y, rng.random(y.size))}, tmp_path / "roc.png"),
        plots.calibration_plot(y, p, tmp_path / "cal.png"),
        plots.per_speaker_plot(y, p, [f"spk{i}" for i in g], tmp_path / "sub" / "speakers.png"),
        plots.confusion_plot(
            M.confusion(y, (p >= 0.5).astype(int), labels=[0, 1]), ["no pain", "pain"], tmp_path / "cm.png"
        ),
    ]
    for path in out:
        _assert_png(path)


def test_per_speaker_plot_handles_one_class_speakers_and_many_speakers(tmp_path) -> None:
    y, s, g = _clustered(120, 4, seed=14)
    y[g == 0] = 1  # speaker 0 has pain clips only
    _assert_png(plots.per_speaker_plot(y, s, g, tmp_path / "many.png"))


def test_plots_module_does_not_touch_pyplot() -> None:
    code = "import sys, analysis.plots; sys.exit('matplotlib.pyplot' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_paired_auc_difference_is_zero_for_the_same_scores_and_resolves_a_real_gain() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 400)
    groups = rng.integers(0, 25, 400)
    sharp, blurred = y + rng.normal(0, 0.7, 400), y + rng.normal(0, 2.5, 400)

    assert M.paired_auc_difference(y, sharp, sharp, groups) == (0.0, 0.0, 0.0)
    d, low, high = M.paired_auc_difference(y, sharp, blurred, groups, n_boot=500)
    assert d == pytest.approx(M.roc_auc(y, sharp) - M.roc_auc(y, blurred))
    assert 0.0 < low < d < high
    # paired: the interval of the difference is narrower than either AUC's own interval is wide
    _, a_low, a_high = M.grouped_bootstrap_ci(y, blurred, groups, M.roc_auc, n_boot=500)
    assert high - low < (a_high - a_low) * 1.5
    d_rev, low_rev, high_rev = M.paired_auc_difference(y, blurred, sharp, groups, n_boot=500)
    assert (d_rev, low_rev, high_rev) == pytest.approx((-d, -high, -low))
