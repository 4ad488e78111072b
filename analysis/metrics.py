"""Evaluation metrics for pain scores, with confidence intervals that respect speakers.

Why speaker-grouped intervals: a corpus holds many clips per speaker, and clips from one voice are
strongly correlated (same timbre, same microphone, same acting style). Resampling clips as if they
were independent pretends we have far more evidence than we do and gives intervals that are too
narrow. :func:`grouped_bootstrap_ci` resamples whole speakers instead, which is the unit a deployed
hotline generalises over.

Conventions used throughout:

* Binary labels are 0/1 (or bool); 1 means "pain". Scores are finite floats, higher means more pain.
* A clip is predicted positive when ``score >= threshold``. Every threshold-based function uses this
  rule, so a threshold chosen by :func:`threshold_for_specificity` means the same thing in
  :func:`balanced_accuracy` and in the live worker.
* A metric that is undefined (for example AUC when only one class is present) returns ``nan``
  rather than raising, so bootstrap replicates can be skipped cheaply. :func:`summarise` turns
  ``nan`` into ``None`` so its result is valid JSON.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
Metric = Callable[..., float]

# Bootstrap work is done in chunks of replicates so that (replicates x clips) float matrices stay
# around this many elements (~32 MB) whatever the corpus size.
_CHUNK_ELEMENTS = 4_000_000


# --------------------------------------------------------------------------- input validation


def _binary_labels(y: ArrayLike) -> NDArray[np.bool_]:
    """0/1 or bool labels as a bool vector; anything else is a caller bug, so raise."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr
    if arr.size and not np.all(np.isin(arr, (0, 1))):
        raise ValueError("binary labels must be 0/1 or bool")
    return arr.astype(bool)


def _scores(p: ArrayLike, n: int) -> FloatArray:
    """Scores as float64, same length as the labels, all finite (nan would silently mis-rank)."""
    arr = np.asarray(p, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"scores must have shape ({n},), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("scores must be finite")
    return arr


def _weight_matrix(weights: ArrayLike, n: int) -> FloatArray:
    """Per-clip weights as a (replicates, clips) matrix; one replicate if a vector is given."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim == 1:
        w = w[None, :]
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape ({n},) or (B, {n}), got {w.shape}")
    if np.any(w < 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and non-negative")
    return w


def _safe_ratio(num: FloatArray, den: FloatArray) -> FloatArray:
    """num / den with nan where den is zero (the metric is undefined there)."""
    out = np.full(np.shape(num), np.nan)
    ok = den > 0
    np.divide(num, den, out=out, where=ok)
    return out


# --------------------------------------------------------------------------- AUC


def roc_auc_batch(y: ArrayLike, p: ArrayLike, weights: ArrayLike) -> FloatArray:
    """Weighted ROC AUC for many weight vectors at once; returns one AUC per row of ``weights``.

    This is the Mann-Whitney statistic with per-clip weights: the weighted fraction of
    (positive, negative) pairs ranked correctly, ties counting one half. With integer weights it
    equals the AUC of the sample in which clip ``i`` is repeated ``weights[i]`` times, which is
    exactly what a bootstrap replicate is, so the bootstrap never has to build concatenated
    arrays. The scores are sorted once; each replicate is then a cumulative sum over
    negatives, so cost is O(B * n) after an O(n log n) sort. Rows with no positive or no negative
    weight give ``nan``.
    """
    yb = _binary_labels(y)
    n = yb.size
    s = _scores(p, n)
    w = _weight_matrix(weights, n)
    n_rep = w.shape[0]
    order = np.argsort(s, kind="stable")
    s_sorted, y_sorted = s[order], yb[order]
    # For each clip: first and one-past-last sorted position of its tie group.
    lo = np.searchsorted(s_sorted, s_sorted, side="left")
    hi = np.searchsorted(s_sorted, s_sorted, side="right")
    pos = np.flatnonzero(y_sorted)
    neg_mask = ~y_sorted
    lo_pos, hi_pos = lo[pos], hi[pos]

    out = np.empty(n_rep)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    for start in range(0, n_rep, chunk):
        wc = w[start : start + chunk][:, order]
        cum = np.zeros((wc.shape[0], n + 1))
        np.cumsum(np.where(neg_mask, wc, 0.0), axis=1, out=cum[:, 1:])
        # cum[:, lo] = negative weight strictly below the score; cum[:, hi] adds the tied negatives.
        beaten = 0.5 * (cum[:, lo_pos] + cum[:, hi_pos])
        w_pos = wc[:, pos]
        numerator = np.einsum("ij,ij->i", w_pos, beaten)
        out[start : start + chunk] = _safe_ratio(numerator, w_pos.sum(axis=1) * cum[:, -1])
    return out


def roc_auc(y: ArrayLike, p: ArrayLike, sample_weight: ArrayLike | None = None) -> float:
    """Area under the ROC curve (probability a random pain clip outscores a random no-pain clip).

    Ties count one half, matching ``sklearn.metrics.roc_auc_score``. Returns ``nan`` when only one
    class is present (or carries weight) instead of raising, so bootstraps can skip the replicate.
    """
    yb = _binary_labels(y)
    w = np.ones(yb.size) if sample_weight is None else sample_weight
    return float(roc_auc_batch(yb, p, w)[0])


# --------------------------------------------------------------------------- thresholded metrics


def balanced_accuracy_batch(y: ArrayLike, p: ArrayLike, weights: ArrayLike, threshold: float = 0.5) -> FloatArray:
    """Weighted balanced accuracy for many weight vectors at once (see :func:`balanced_accuracy`)."""
    yb = _binary_labels(y)
    s = _scores(p, yb.size)
    w = _weight_matrix(weights, yb.size)
    yhat = s >= threshold
    pos, neg = yb.astype(np.float64), (~yb).astype(np.float64)
    sens = _safe_ratio(w @ (pos * yhat), w @ pos)
    spec = _safe_ratio(w @ (neg * ~yhat), w @ neg)
    return 0.5 * (sens + spec)


def balanced_accuracy(
    y: ArrayLike, p: ArrayLike, threshold: float = 0.5, sample_weight: ArrayLike | None = None
) -> float:
    """Mean of sensitivity and specificity at ``score >= threshold``.

    Used instead of plain accuracy because pain and no-pain clips are rarely balanced, and a
    hotline cares about both missed pain and false alarms. ``nan`` if either class is absent.
    """
    yb = _binary_labels(y)
    w = np.ones(yb.size) if sample_weight is None else sample_weight
    return float(balanced_accuracy_batch(yb, p, w, threshold)[0])


def _operating_points(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Every achievable (threshold, sensitivity, specificity) for the rule ``score >= threshold``.

    Thresholds are the distinct observed scores in decreasing order, preceded by ``+inf`` (nothing
    flagged). Tied scores therefore always move together: no operating point splits a tie.
    """
    yb = _binary_labels(y)
    s = _scores(p, yb.size)
    n_pos, n_neg = int(yb.sum()), int((~yb).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("need at least one positive and one negative clip")
    thresholds = np.concatenate(([np.inf], np.unique(s)[::-1]))
    pos_sorted, neg_sorted = np.sort(s[yb]), np.sort(s[~yb])
    # positives with score >= t, negatives with score < t
    tp = n_pos - np.searchsorted(pos_sorted, thresholds, side="left")
    tn = np.searchsorted(neg_sorted, thresholds, side="left")
    return thresholds, tp / n_pos, tn / n_neg


def roc_points(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve as ``(fpr, tpr, thresholds)``, starting at (0, 0) with threshold ``+inf``."""
    thresholds, sens, spec = _operating_points(y, p)
    return 1.0 - spec, sens, thresholds


def threshold_for_specificity(y: ArrayLike, p: ArrayLike, specificity: float) -> float:
    """The threshold giving the highest sensitivity whose specificity is at least ``specificity``.

    Candidates are the observed scores (rule ``score >= threshold``); among those meeting the
    specificity target, the lowest one flags the most clips and so has the highest sensitivity.
    If even the highest observed score breaks the target (it belongs to too many negatives), the
    result is the next float above the maximum score: a finite threshold that flags nothing, so
    it can be stored and compared like any other.
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError("specificity must be in [0, 1]")
    thresholds, _, spec = _operating_points(y, p)
    # spec is non-increasing as the threshold falls, and spec[0] == 1 (nothing flagged).
    ok = np.flatnonzero(spec >= specificity)
    best = thresholds[ok[-1]]
    if np.isinf(best):
        return float(np.nextafter(thresholds[1], np.inf))
    return float(best)


def sensitivity_at_specificity(y: ArrayLike, p: ArrayLike, specificity: float = 0.9) -> float:
    """The highest sensitivity achievable with specificity >= ``specificity``.

    Precisely: over all thresholds ``t`` of the rule ``score >= t`` (including one above every
    score, which flags nothing and has specificity 1), keep those with
    ``TN / (TN + FP) >= specificity`` and report the largest ``TP / (TP + FN)`` among them.
    There is no interpolation between ROC points, so the figure is achievable by a deterministic
    threshold on this data; it is conservative (a step function of the target) compared with
    interpolated readings. Raises if either class is absent, because no threshold exists then.
    """
    if not 0.0 <= specificity <= 1.0:
        raise ValueError("specificity must be in [0, 1]")
    _, sens, spec = _operating_points(y, p)
    return float(sens[spec >= specificity].max())


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error with equal-width probability bins, weighted by bin count.

    Bins are ``[k/n, (k+1)/n)`` for ``k < n-1`` and the last bin is closed, so ``p == 1`` counts.
    ECE = sum over non-empty bins of ``(clips in bin / all clips) * |pain rate - mean p|``.
    Matters because the worker compares probabilities with a caller's own baseline: a model can
    rank well (high AUC) yet say 0.9 where the truth is 0.6.
    """
    yb = _binary_labels(y)
    s = _scores(p, yb.size)
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if yb.size == 0:
        return float("nan")
    if np.any((s < 0) | (s > 1)):
        raise ValueError("expected_calibration_error needs probabilities in [0, 1]")
    bins = np.minimum((s * n_bins).astype(np.int64), n_bins - 1)
    sum_p = np.bincount(bins, weights=s, minlength=n_bins)
    sum_y = np.bincount(bins, weights=yb.astype(np.float64), minlength=n_bins)
    return float(np.abs(sum_y - sum_p).sum() / yb.size)


def confusion(y: ArrayLike, yhat: ArrayLike, labels: Sequence[Any] | NDArray[Any] | None = None) -> NDArray[np.int64]:
    """Confusion matrix: rows are true labels, columns predicted labels, in ``labels`` order.

    ``labels`` defaults to the sorted union of both inputs; for binary pain labels pass
    ``[0, 1]`` so the layout is always ``[[TN, FP], [FN, TP]]`` even if a class is missing.
    """
    ya, ha = np.asarray(y), np.asarray(yhat)
    if ya.ndim != 1 or ya.shape != ha.shape:
        raise ValueError("y and yhat must be 1-D and the same length")
    lab = np.unique(np.concatenate((ya, ha))) if labels is None else np.asarray(labels)
    index = {v: i for i, v in enumerate(lab.tolist())}
    try:
        rows = np.array([index[v] for v in ya.tolist()], dtype=np.int64)
        cols = np.array([index[v] for v in ha.tolist()], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"label {exc.args[0]!r} not in labels") from None
    k = len(lab)
    return np.bincount(rows * k + cols, minlength=k * k).reshape(k, k).astype(np.int64)


# --------------------------------------------------------------------------- multi-class


def macro_auc_ovr(y: ArrayLike, P: ArrayLike, labels: Sequence[Any] | NDArray[Any] | None = None) -> float:
    """Macro-averaged one-vs-rest AUC for a (clips, classes) probability matrix.

    Column ``k`` of ``P`` scores class ``labels[k]`` (default ``k``). Classes absent from ``y``
    have no defined one-vs-rest AUC and are left out of the mean rather than counted as 0.5;
    ``nan`` if no class is defined. With every class present this equals sklearn's
    ``roc_auc_score(..., multi_class="ovr", average="macro")``.
    """
    ya = np.asarray(y)
    Pa = np.asarray(P, dtype=np.float64)
    if Pa.ndim != 2 or Pa.shape[0] != ya.shape[0]:
        raise ValueError("P must have shape (len(y), n_classes)")
    lab = list(range(Pa.shape[1])) if labels is None else list(labels)
    if len(lab) != Pa.shape[1]:
        raise ValueError("labels must name every column of P")
    if not np.all(np.isin(ya, lab)):
        raise ValueError("y contains a label with no column in P")
    aucs = np.array([roc_auc(ya == c, Pa[:, k]) for k, c in enumerate(lab)])
    defined = aucs[np.isfinite(aucs)]
    return float(defined.mean()) if defined.size else float("nan")


def balanced_accuracy_multiclass(
    y: ArrayLike, yhat: ArrayLike, labels: Sequence[Any] | NDArray[Any] | None = None
) -> float:
    """Mean per-class recall over the classes present in ``y``.

    ``yhat`` is either predicted labels or a (clips, classes) probability matrix, in which case the
    argmax column is mapped through ``labels`` (default: column index). Matches
    ``sklearn.metrics.balanced_accuracy_score``.
    """
    ya = np.asarray(y)
    ha = np.asarray(yhat)
    if ha.ndim == 2:
        lab = np.arange(ha.shape[1]) if labels is None else np.asarray(labels)
        ha = lab[np.argmax(ha, axis=1)]
    if ya.ndim != 1 or ya.shape != ha.shape:
        raise ValueError("y and yhat must describe the same clips")
    present = np.unique(ya)
    if present.size == 0:
        return float("nan")
    recalls = [np.mean(ha[ya == c] == c) for c in present]
    return float(np.mean(recalls))


# --------------------------------------------------------------------------- grouped bootstrap

_BATCHED: dict[Callable[..., Any], Callable[..., FloatArray]] = {
    roc_auc: roc_auc_batch,
    balanced_accuracy: balanced_accuracy_batch,
}


def _batched_form(metric: Metric) -> Callable[[Any, Any, FloatArray], FloatArray] | None:
    """The vectorised twin of ``metric`` (also through ``functools.partial``), if we have one."""
    if isinstance(metric, functools.partial):
        inner = _BATCHED.get(metric.func)
        if inner is None or metric.args:
            return None
        return functools.partial(inner, **metric.keywords)
    return _BATCHED.get(metric)


def _accepts_sample_weight(metric: Metric) -> bool:
    try:
        return "sample_weight" in inspect.signature(metric).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return False


def _group_counts(groups: ArrayLike, n: int, n_boot: int, seed: int) -> tuple[FloatArray, NDArray[np.intp]]:
    """Bootstrap multiplicities: (n_boot, n_groups) draw counts plus each clip's group index."""
    g = np.asarray(groups)
    if g.shape != (n,):
        raise ValueError(f"groups must have shape ({n},), got {g.shape}")
    _, inverse = np.unique(g, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    flat = (draws + np.arange(n_boot)[:, None] * n_groups).ravel()
    counts = np.bincount(flat, minlength=n_boot * n_groups).reshape(n_boot, n_groups)
    return counts.astype(np.float64), inverse.reshape(-1)


def _replicate_values(metric: Metric, y: Any, p: Any, counts: FloatArray, inverse: NDArray[np.intp]) -> FloatArray:
    """Metric value of every bootstrap replicate (nan where undefined)."""
    n = inverse.size
    batched = _batched_form(metric)
    if batched is not None:
        chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
        parts = [batched(y, p, counts[i : i + chunk][:, inverse]) for i in range(0, counts.shape[0], chunk)]
        return np.concatenate(parts) if parts else np.empty(0)

    ya, pa = np.asarray(y), np.asarray(p)
    weighted = _accepts_sample_weight(metric)
    values = np.full(counts.shape[0], np.nan)
    for b, row in enumerate(counts):
        w = row[inverse]
        keep = np.flatnonzero(w > 0)
        if np.unique(ya[keep]).size < 2:
            continue  # one class only: every metric here is undefined
        if weighted:
            values[b] = metric(ya[keep], pa[keep], sample_weight=w[keep])
        else:
            idx = np.repeat(keep, w[keep].astype(np.int64))
            values[b] = metric(ya[idx], pa[idx])
    return values


def grouped_bootstrap_ci(
    y: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike,
    metric: Metric,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Point estimate and percentile bootstrap interval, resampling speakers rather than clips.

    Each replicate draws as many speakers as there are, with replacement, and keeps all clips of
    every drawn speaker (a speaker drawn twice contributes its clips twice). Internally a
    replicate is a weight vector over clips (the speaker's draw count), so ``roc_auc`` and
    ``balanced_accuracy`` (also via ``functools.partial(balanced_accuracy, threshold=t)``) are
    evaluated for all replicates at once. Any other ``metric(y, p)`` works too: it gets
    ``sample_weight`` if its signature has that parameter, otherwise the explicitly repeated
    sample. Replicates where the metric is undefined (one class only, or a ``nan`` result) are
    skipped. Returns ``(point, low, high)``; ``low``/``high`` are ``nan`` if no replicate is
    defined. ``p`` may be 2-D (clips first) for multi-class metrics on the generic path.
    """
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    if not 0.0 < alpha < 1.0:
        raise ValueError("alpha must be in (0, 1)")
    n = len(np.asarray(y))
    counts, inverse = _group_counts(groups, n, n_boot, seed)
    return _interval(float(metric(y, p)), _replicate_values(metric, y, p, counts, inverse), alpha)


def _interval(point: float, values: FloatArray, alpha: float) -> tuple[float, float, float]:
    """``(point, low, high)``: the percentile interval of the defined replicate values (nan if none)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        return point, float("nan"), float("nan")
    low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return point, float(low), float(high)


def paired_auc_difference(
    y: ArrayLike,
    p_a: ArrayLike,
    p_b: ArrayLike,
    groups: ArrayLike,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float, float]:
    """AUC of ``p_a`` minus AUC of ``p_b`` on the same items, with a speaker-grouped paired interval.

    Both scores are resampled with the same speakers in every replicate, so the interval is that of
    the difference (two separate intervals overlap far more than the difference is uncertain).
    Returns ``(point, low, high)``.
    """
    ya = np.asarray(y)
    n = len(ya)
    counts, inverse = _group_counts(groups, n, n_boot, seed)
    chunk = max(1, _CHUNK_ELEMENTS // max(n, 1))
    weights = (counts[i : i + chunk][:, inverse] for i in range(0, n_boot, chunk))
    diffs = np.concatenate([roc_auc_batch(ya, p_a, w) - roc_auc_batch(ya, p_b, w) for w in weights])
    return _interval(float(roc_auc(ya, p_a) - roc_auc(ya, p_b)), diffs, alpha)


# --------------------------------------------------------------------------- summary


def _json_float(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def summarise(
    y: ArrayLike,
    p: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    *,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """Headline binary evaluation as plain JSON-serialisable data (bench results, model cards).

    Keys: ``auc``, ``auc_ci`` ([low, high]), ``balanced_accuracy`` and ``balanced_accuracy_ci`` at
    ``threshold``, ``sens_at_90spec``, ``ece`` (``None`` if the scores are not probabilities in
    [0, 1]), ``n_clips``, ``n_speakers``, ``n_positive``, ``n_negative``, ``threshold`` and
    ``confusion`` ([[TN, FP], [FN, TP]] at ``threshold``). Undefined values are ``None``.
    Both intervals use the same speaker resamples (same ``seed``).
    """
    yb = _binary_labels(y)
    s = _scores(p, yb.size)
    g = np.asarray(groups)
    ba = functools.partial(balanced_accuracy, threshold=threshold)
    auc, auc_lo, auc_hi = grouped_bootstrap_ci(yb, s, g, roc_auc, n_boot, alpha, seed)
    bacc, ba_lo, ba_hi = grouped_bootstrap_ci(yb, s, g, ba, n_boot, alpha, seed)
    both_classes = bool(yb.any() and (~yb).any())
    sens90 = sensitivity_at_specificity(yb, s, 0.9) if both_classes else float("nan")
    in_unit = bool(np.all((s >= 0) & (s <= 1)))
    ece = expected_calibration_error(yb, s) if in_unit else float("nan")
    cm = confusion(yb.astype(np.int64), (s >= threshold).astype(np.int64), labels=[0, 1])
    return {
        "auc": _json_float(auc),
        "auc_ci": [_json_float(auc_lo), _json_float(auc_hi)],
        "balanced_accuracy": _json_float(bacc),
        "balanced_accuracy_ci": [_json_float(ba_lo), _json_float(ba_hi)],
        "sens_at_90spec": _json_float(sens90),
        "ece": _json_float(ece),
        "n_clips": int(yb.size),
        "n_speakers": int(np.unique(g).size),
        "n_positive": int(yb.sum()),
        "n_negative": int((~yb).sum()),
        "threshold": float(threshold),
        "confusion": cm.tolist(),
    }
