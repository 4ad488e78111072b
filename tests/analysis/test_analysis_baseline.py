"""Running statistics and the two-level normaliser: every shortcut (Welford, Chan merge, affine
re-standardisation of stored baselines) must equal the direct computation it replaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.baseline import RunningStats, TwoLevelNormaliser, pooled_within_std, shrunk_mean

TOL = 1e-9


def _assert_matches(stats: RunningStats, X: np.ndarray) -> None:
    assert stats.n == len(X)
    np.testing.assert_allclose(stats.mean, X.mean(axis=0), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stats.var, X.var(axis=0, ddof=1), rtol=TOL, atol=TOL)
    np.testing.assert_allclose(stats.std, X.std(axis=0, ddof=1), rtol=TOL, atol=TOL)


def _data(seed: int, n: int = 200, dim: int = 7) -> np.ndarray:
    rng = np.random.default_rng(seed)
    # offset and scale far from zero/one so a formula that forgets the mean shows up
    return rng.normal(50.0, 3.0, size=(n, dim)) * rng.uniform(0.1, 10.0, size=dim)


def test_welford_single_updates_equal_numpy() -> None:
    X = _data(0)
    stats = RunningStats.empty(X.shape[1])
    for row in X:
        assert stats.update(row) is stats
    _assert_matches(stats, X)


def test_block_updates_equal_numpy() -> None:
    X = _data(1)
    stats = RunningStats.empty(X.shape[1])
    for block in np.array_split(X, [3, 4, 50, 51, 120]):
        stats.update(block)
    _assert_matches(stats, X)
    _assert_matches(RunningStats.from_array(X), X)


def test_mixed_single_and_block_updates() -> None:
    X = _data(2, n=60)
    stats = RunningStats.empty(X.shape[1]).update(X[:10])
    for row in X[10:30]:
        stats.update(row)
    stats.update(X[30:])
    _assert_matches(stats, X)


@pytest.mark.parametrize("seed", range(5))
def test_merge_of_random_splits_in_any_order(seed: int) -> None:
    rng = np.random.default_rng(seed)
    X = _data(seed + 10, n=150)
    cuts = np.sort(rng.choice(np.arange(1, len(X)), size=6, replace=False))
    parts = [RunningStats.from_array(p) for p in np.split(X, cuts)]
    parts.append(RunningStats.empty(X.shape[1]))  # an empty part is neutral
    order = rng.permutation(len(parts))
    total = RunningStats.empty(X.shape[1])
    for i in order:
        total.merge_in(parts[i])
    _assert_matches(total, X)
    # a merge tree (pairwise) gives the same
    layer = [parts[i] for i in order]
    while len(layer) > 1:
        layer = [layer[i].merged(layer[i + 1]) if i + 1 < len(layer) else layer[i] for i in range(0, len(layer), 2)]
    _assert_matches(layer[0], X)


def test_merged_does_not_mutate_operands() -> None:
    a, b = RunningStats.from_array(_data(3, n=5)), RunningStats.from_array(_data(4, n=6))
    a_before, b_before = a.copy(), b.copy()
    a.merged(b)
    for s, before in ((a, a_before), (b, b_before)):
        assert s.n == before.n
        np.testing.assert_array_equal(s.mean, before.mean)
        np.testing.assert_array_equal(s.m2, before.m2)


def test_merge_into_empty_copies_not_aliases() -> None:
    other = RunningStats.from_array(_data(5, n=4))
    target = RunningStats.empty(other.dim).merge_in(other)
    target.mean[0] += 1.0  # in-place changes to the merged copy must not reach the source
    target.m2[0] += 1.0
    np.testing.assert_allclose(other.mean, _data(5, n=4).mean(axis=0))
    np.testing.assert_allclose(other.m2, RunningStats.from_array(_data(5, n=4)).m2)


def test_variance_undefined_below_two_samples_is_zero() -> None:
    s = RunningStats.empty(3)
    np.testing.assert_array_equal(s.var, np.zeros(3))
    s.update(np.array([1.0, 2.0, 3.0]))
    np.testing.assert_array_equal(s.var, np.zeros(3))
    s.update(np.array([3.0, 2.0, 1.0]))
    np.testing.assert_allclose(s.var, [2.0, 0.0, 2.0])


def test_to_dict_from_dict_json_round_trip() -> None:
    X = _data(6, n=33)
    stats = RunningStats.from_array(X)
    text = json.dumps(stats.to_dict())
    back = RunningStats.from_dict(json.loads(text))
    assert back.n == stats.n
    np.testing.assert_array_equal(back.mean, stats.mean)  # float repr round-trips exactly
    np.testing.assert_array_equal(back.m2, stats.m2)
    assert back.mean.dtype == np.float64
    # and the revived statistics keep accumulating correctly
    extra = _data(7, n=5)
    back.update(extra)
    _assert_matches(back, np.vstack([X, extra]))


def test_normaliser_json_round_trip() -> None:
    X = _data(8, n=40)
    groups = np.repeat(np.arange(4), 10)
    norm = TwoLevelNormaliser(tau=3.0).fit(X, groups)
    back = TwoLevelNormaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert back.tau == 3.0
    np.testing.assert_array_equal(back.within_scale, norm.within_scale)
    np.testing.assert_array_equal(back.standardise(X), norm.standardise(X))


# --------------------------------------------------------------------------- shrinkage, pooling


def test_shrunk_mean_formula() -> None:
    caller = RunningStats.from_array(np.array([[3.0, -6.0]]))
    prior = np.array([0.0, 3.0])
    # one vector, tau = 2: a third the caller, two thirds the prior
    np.testing.assert_allclose(shrunk_mean(caller, prior, 2.0), [1.0, 0.0])
    many = RunningStats.from_array(_data(9, n=40, dim=2))
    expected = (40 * many.mean + 2.5 * prior) / 42.5
    np.testing.assert_allclose(shrunk_mean(many, prior, 2.5), expected)
    np.testing.assert_allclose(shrunk_mean(RunningStats.empty(2), prior, 2.0), prior)
    np.testing.assert_allclose(shrunk_mean(many, prior, 0.0), many.mean)


def test_pooled_within_std_equals_numpy() -> None:
    rng = np.random.default_rng(11)
    sizes = [5, 9, 2, 14]
    groups = np.concatenate([np.full(n, f"s{i}") for i, n in enumerate(sizes)])
    X = rng.normal(size=(len(groups), 4)) * [1, 2, 3, 4] + rng.normal(0, 20, size=(len(sizes), 4)).repeat(sizes, 0)
    ss = sum(((X[groups == g] - X[groups == g].mean(0)) ** 2).sum(0) for g in np.unique(groups))
    expected = np.sqrt(ss / (len(X) - len(sizes)))
    np.testing.assert_allclose(pooled_within_std(X, groups), expected, rtol=1e-12)
    # identity removed: far below the total spread that the speaker offsets inflate
    assert np.all(pooled_within_std(X, groups) < X.std(axis=0, ddof=1))


def test_pooled_within_std_ignores_singleton_groups() -> None:
    X = np.array([[0.0], [2.0], [100.0]])
    np.testing.assert_allclose(pooled_within_std(X, np.array(["a", "a", "b"])), [np.sqrt(2.0)])


# --------------------------------------------------------------------------- two-level normaliser


def _speakers(seed: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(6), 15)
    X = rng.normal(size=(90, 5)) + rng.normal(0, 4, size=(6, 5))[groups] + 30.0
    return X, groups


def test_normaliser_fit_standardises_to_population() -> None:
    X, groups = _speakers()
    norm = TwoLevelNormaliser().fit(X, groups)
    Z = norm.standardise(X)
    np.testing.assert_allclose(Z.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(Z.std(axis=0, ddof=1), 1.0, atol=1e-6)
    assert norm.within_scale is not None
    np.testing.assert_allclose(norm.within_scale, np.maximum(pooled_within_std(Z, groups), 0.05))


def test_standardise_unfitted_without_population_raises() -> None:
    with pytest.raises(RuntimeError):
        TwoLevelNormaliser().standardise(np.zeros((1, 2)))


@pytest.mark.parametrize("k", [1, 3, 10])
def test_caller_offset_is_standardised_mean_shrunk_toward_zero(k: int) -> None:
    X, groups = _speakers()
    norm = TwoLevelNormaliser(tau=2.0).fit(X, groups)
    caller_rows = X[groups == 2][:k]
    caller = RunningStats.from_array(caller_rows)
    z_mean = norm.standardise(caller_rows).mean(axis=0)
    expected = k * z_mean / (k + 2.0)
    np.testing.assert_allclose(norm.caller_offset(caller), expected, rtol=1e-9, atol=1e-12)


def test_caller_offset_against_another_population() -> None:
    """Baselines are stored raw and re-read against whichever population statistics are current."""
    X, groups = _speakers()
    norm = TwoLevelNormaliser(tau=2.0).fit(X, groups)
    live = RunningStats.from_array(X[:40] * 1.5 + 7.0)
    caller_rows = X[groups == 4][:5]
    expected = 5 * norm.standardise(caller_rows, live).mean(axis=0) / 7.0
    np.testing.assert_allclose(norm.caller_offset(RunningStats.from_array(caller_rows), live), expected)
    assert not np.allclose(norm.caller_offset(RunningStats.from_array(caller_rows)), expected)


def test_relative_algebra() -> None:
    X, groups = _speakers()
    norm = TwoLevelNormaliser(tau=2.0).fit(X, groups)
    offset = np.linspace(-1, 1, X.shape[1])
    R = norm.relative(X, offset)
    assert norm.within_scale is not None
    np.testing.assert_allclose(R, (norm.standardise(X) - offset) / norm.within_scale)
    # zero offset: just standardised and rescaled; shifting the offset shifts every row equally
    np.testing.assert_allclose(norm.relative(X, np.zeros(X.shape[1])) * norm.within_scale, norm.standardise(X))
    np.testing.assert_allclose(norm.relative(X, offset + 1.0), R - 1.0 / norm.within_scale)
    # a caller at their own (unshrunk) mean sits at zero
    rows = X[groups == 1]
    unshrunk = TwoLevelNormaliser(population=norm.population, within_scale=norm.within_scale, tau=0.0)
    centred = unshrunk.relative(rows, unshrunk.caller_offset(RunningStats.from_array(rows)))
    np.testing.assert_allclose(centred.mean(axis=0), 0.0, atol=1e-9)


# --------------------------------------------------------------------------- properties

_rows = st.integers(min_value=0, max_value=12)
_matrix_seed = st.integers(min_value=0, max_value=2**31 - 1)


@settings(max_examples=60, deadline=None)
@given(sizes=st.tuples(_rows, _rows, _rows), seed=_matrix_seed)
def test_merge_is_associative_and_commutative(sizes: tuple[int, int, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    parts = [rng.normal(rng.uniform(-100, 100), rng.uniform(0.01, 50), size=(n, 3)) for n in sizes]
    a, b, c = (RunningStats.from_array(p) if len(p) else RunningStats.empty(3) for p in parts)
    left = a.merged(b).merged(c)
    right = a.merged(b.merged(c))
    swapped = c.merged(a).merged(b)
    for s in (right, swapped):
        assert s.n == left.n
        np.testing.assert_allclose(s.mean, left.mean, rtol=TOL, atol=1e-9)
        np.testing.assert_allclose(s.m2, left.m2, rtol=1e-8, atol=1e-6)
    X = np.vstack(parts)
    if len(X):
        np.testing.assert_allclose(left.mean, X.mean(axis=0), rtol=TOL, atol=1e-9)
    if len(X) > 1:
        np.testing.assert_allclose(left.var, X.var(axis=0, ddof=1), rtol=1e-8, atol=1e-9)
