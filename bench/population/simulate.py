"""The deployment replay: score each utterance against the population as it stood, then fold it in.

Kept apart from the corpus loading so the ordering rule (an utterance never sees itself or anything
after it) can be tested on synthetic features in milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.aggregate import call_probability, logit, sigmoid
from analysis.baseline import RunningStats
from analysis.model import PainModel

OLD_RULE_MIN_N = 50
"""The rule the shrinkage replaced: the training population until this many live utterances."""

WINDOWS: tuple[tuple[int, int | None], ...] = (
    (1, 50),
    (51, 100),
    (101, 200),
    (201, 400),
    (401, 800),
    (801, 1600),
    (1601, None),
)
"""Arrival windows (1-based, inclusive; ``None``: to the end), narrow early where the rules differ."""

Scorer = Callable[[PainModel, np.ndarray, RunningStats], float]


def old_population(live: RunningStats, prior: RunningStats) -> RunningStats:
    """The replaced rule, for comparison only: a cliff from the training statistics to the live ones."""
    return live if live.n >= OLD_RULE_MIN_N else prior


def score_shrunk(model: PainModel, x: np.ndarray, live: RunningStats) -> float:
    """The product's rule: the worker passes the live statistics and the model shrinks them."""
    return float(model.predict_proba(x[None, :], population=live)[0])


def score_old(model: PainModel, x: np.ndarray, live: RunningStats) -> float:
    """The old rule's score: the population path standardised by exactly :func:`old_population`.

    ``predict_proba`` always shrinks what it is given, so the old rule cannot go through it; this
    repeats its population path (no baseline, as for a caller without one) with the population fixed.
    """
    assert model.normaliser.population is not None
    pop = old_population(live, model.normaliser.population)
    z = model.normaliser.standardise(np.atleast_2d(x), pop)[:, model.feature_mask]
    clf = model.population_clf
    lp = clf.decision_function(z) if hasattr(clf, "decision_function") else logit(clf.predict_proba(z)[:, 1])
    return float(sigmoid(model.population_cal(np.asarray(lp, dtype=np.float64)))[0])


def replay(
    model: PainModel,
    X: np.ndarray,
    order: Sequence[int],
    *,
    seed_rows: np.ndarray | None = None,
    scorer: Scorer = score_shrunk,
) -> np.ndarray:
    """Probabilities of the rows of ``X`` in arrival ``order``, each scored before it is folded in.

    ``seed_rows`` are folded in as one block before the first arrival, as ``painline population seed``
    does, and are never scored. Returns one probability per arrival, in arrival order.
    """
    live = RunningStats.empty(X.shape[1])
    if seed_rows is not None and len(seed_rows):
        live.update(np.atleast_2d(np.asarray(seed_rows, dtype=np.float64)))
    out = np.empty(len(order))
    for i, row in enumerate(order):
        x = np.asarray(X[row], dtype=np.float64)
        out[i] = scorer(model, x, live)
        live.update(x)
    return out


@dataclass(frozen=True)
class WindowRates:
    """Specificity and sensitivity at the threshold over one window of arrivals (``None``: no such rows)."""

    start: int
    end: int
    n: int
    n_negative: int
    n_positive: int
    specificity: float | None
    sensitivity: float | None


def window_rates(
    probs: np.ndarray, pain: np.ndarray, threshold: float, windows: Sequence[tuple[int, int | None]] = WINDOWS
) -> list[WindowRates]:
    """Rates per arrival window; a flag is ``p >= threshold`` as in ``worker.calls``.

    Windows past the last arrival are left out; the last one present is cut at the last arrival.
    """
    probs, pain = np.asarray(probs), np.asarray(pain, dtype=bool)
    out: list[WindowRates] = []
    for start, end in windows:
        if start > len(probs):
            break
        stop = len(probs) if end is None else min(end, len(probs))
        p, y = probs[start - 1 : stop], pain[start - 1 : stop]
        neg, pos = p[~y], p[y]
        out.append(
            WindowRates(
                start,
                stop,
                len(p),
                len(neg),
                len(pos),
                float(np.mean(neg < threshold)) if len(neg) else None,
                float(np.mean(pos >= threshold)) if len(pos) else None,
            )
        )
    return out


def call_specificity(
    probs: np.ndarray,
    pain: np.ndarray,
    speakers: np.ndarray,
    speech_s: np.ndarray,
    threshold: float,
    *,
    per_call: int = 4,
    min_speech_s: float = 3.0,
) -> dict[str, Any]:
    """Share of no-pain calls not flagged, a call being ``per_call`` no-pain arrivals of one speaker in turn.

    Arrays are in arrival order. The call score is ``analysis.aggregate.call_probability`` (speech-weighted
    log-odds, the rule ``worker.calls`` applies); calls with less speech than ``min_speech_s`` get no
    verdict in the product and are left out here, and a speaker's last, incomplete call is dropped.
    """
    pain = np.asarray(pain, dtype=bool)
    flagged = 0
    calls = 0
    for speaker in np.unique(speakers):
        rows = np.flatnonzero((speakers == speaker) & ~pain)
        for c in range(len(rows) // per_call):
            idx = rows[c * per_call : (c + 1) * per_call]
            if float(np.sum(speech_s[idx])) < min_speech_s:
                continue
            calls += 1
            flagged += call_probability(probs[idx], speech_s[idx]) >= threshold
    return {"calls": calls, "specificity": 1.0 - flagged / calls if calls else None}


def overall_rates(probs: np.ndarray, pain: np.ndarray, threshold: float) -> dict[str, float | None]:
    """Specificity and sensitivity over every arrival of one replay."""
    pain = np.asarray(pain, dtype=bool)
    neg, pos = probs[~pain], probs[pain]
    return {
        "specificity": float(np.mean(neg < threshold)) if len(neg) else None,
        "sensitivity": float(np.mean(pos >= threshold)) if len(pos) else None,
    }


def spread(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, standard deviation and range over replays, ignoring replays with no such rows."""
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"mean": None, "sd": None, "min": None, "max": None, "n_orders": 0}
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
        "min": float(v.min()),
        "max": float(v.max()),
        "n_orders": len(v),
    }


def summarise(runs: Sequence[list[WindowRates]]) -> list[dict[str, Any]]:
    """Per window, the spread over replays of specificity and sensitivity (windows keyed by position)."""
    out: list[dict[str, Any]] = []
    for k in range(max(len(r) for r in runs)):
        present = [r[k] for r in runs if len(r) > k]
        out.append(
            {
                "window": f"{present[0].start}-{max(w.end for w in present)}",
                "n_negative": int(np.mean([w.n_negative for w in present])),
                "n_positive": int(np.mean([w.n_positive for w in present])),
                "specificity": spread([w.specificity for w in present]),
                "sensitivity": spread([w.sensitivity for w in present]),
            }
        )
    return out


__all__ = [
    "OLD_RULE_MIN_N",
    "WINDOWS",
    "WindowRates",
    "call_specificity",
    "old_population",
    "overall_rates",
    "replay",
    "score_old",
    "score_shrunk",
    "spread",
    "summarise",
    "window_rates",
]
