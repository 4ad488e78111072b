"""Evaluation protocols, always reported side by side.

- ``random``: stratified 5-fold over clips. Speakers leak across folds; shown only to expose the gap.
- ``person``: grouped 5-fold, no speaker on both sides, no baseline.
- ``baseline_k``: as ``person``, each test speaker enrolled from k normal-state clips (several random
  draws), those clips removed from what is scored. ``person_same_clips_k`` scores the very same clips
  without the baseline, so the two are comparable.
- ``oracle``: the caller path with each test speaker's baseline taken over all their clips (a
  reference for what perfect knowledge of the speaker would give, not a result).
- ``call_k``/``call_none``: simulated calls of ``call_size`` clips of one speaker in one state, scored
  through :func:`analysis.aggregate.call_probability`, with and without a k-clip baseline.
- ``cross``: trained on one corpus, tested on another whose population statistics come from its own
  unlabelled clips (see :func:`cross_corpus`).

Every number carries a 95% CI from a speaker-grouped bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from sklearn.model_selection import GroupKFold, StratifiedKFold

from analysis.aggregate import call_probability
from analysis.baseline import RunningStats
from analysis.metrics import summarise
from analysis.model import PainModel
from analysis.training import enrolment_draws

FitFn = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], PainModel]


@dataclass
class Scored:
    """Pooled predictions of one protocol: label, probability and speaker per scored item."""

    y: list[np.ndarray]
    p: list[np.ndarray]
    g: list[np.ndarray]

    @classmethod
    def new(cls) -> Scored:
        return cls([], [], [])

    def add(self, y: ArrayLike, p: ArrayLike, g: ArrayLike) -> None:
        self.y.append(np.asarray(y))
        self.p.append(np.asarray(p))
        self.g.append(np.asarray(g))

    def summary(self, threshold: float, n_boot: int = 1000) -> dict[str, Any] | None:
        if not self.y:
            return None
        y, p, g = (np.concatenate(v) for v in (self.y, self.p, self.g))
        return summarise(y, p, g, threshold, n_boot=n_boot)


def assert_person_split(groups: np.ndarray, train: np.ndarray, test: np.ndarray) -> None:
    """The leak guard every person-level split passes through."""
    shared = set(groups[train].tolist()) & set(groups[test].tolist())
    if shared:
        raise AssertionError(f"speaker(s) on both sides of a person-level split: {sorted(shared)[:5]}")


def random_split(X: np.ndarray, y: np.ndarray, groups: np.ndarray, fit: FitFn, folds: int = 5, seed: int = 0) -> Scored:
    out = Scored.new()
    normal = np.zeros(len(y), dtype=bool)  # no baselines in the random protocol
    for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(X, y):
        model = fit(X[tr], y[tr], groups[tr], normal[tr])
        out.add(y[te], model.predict_proba(X[te]), groups[te])
    return out


def person_level(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    normal: np.ndarray,
    fit: FitFn,
    *,
    folds: int = 5,
    enrol_k: tuple[int, ...] = (1, 3, 5),
    draws: int = 3,
    call_size: int = 4,
    call_k: int = 3,
    seed: int = 0,
) -> tuple[dict[str, Scored], list[float]]:
    """Grouped k-fold with every person-level protocol computed from the same fitted models."""
    rng = np.random.default_rng(seed)
    res: dict[str, Scored] = {"person": Scored.new(), "oracle": Scored.new()}
    for k in enrol_k:
        res[f"baseline_{k}"] = Scored.new()
        res[f"person_same_clips_{k}"] = Scored.new()
    res["call_none"] = Scored.new()
    res[f"call_{call_k}"] = Scored.new()
    thresholds = []
    for tr, te in GroupKFold(min(folds, len(np.unique(groups)))).split(X, y, groups):
        assert_person_split(groups, tr, te)
        model = fit(X[tr], y[tr], groups[tr], normal[tr])
        thresholds.append(model.threshold)
        Xt, yt, gt, nt = X[te], y[te], groups[te], normal[te]
        p_pop = model.predict_proba(Xt)
        res["person"].add(yt, p_pop, gt)
        for speaker in np.unique(gt):
            rows = np.flatnonzero(gt == speaker)
            res["oracle"].add(
                yt[rows], model.predict_proba(Xt[rows], baseline=RunningStats.from_array(Xt[rows])), gt[rows]
            )
        for enrol, scored, k in enrolment_draws(gt, nt, enrol_k, draws, rng, remove_enrolled=True):
            base = RunningStats.from_array(Xt[enrol])
            p_base = model.predict_proba(Xt[scored], baseline=base)
            res[f"baseline_{k}"].add(yt[scored], p_base, gt[scored])
            res[f"person_same_clips_{k}"].add(yt[scored], p_pop[scored], gt[scored])
            if k == call_k:
                for label in (0, 1):
                    pool = scored[yt[scored] == label]
                    for call in _calls(pool, call_size, rng):
                        res[f"call_{call_k}"].add(
                            [label],
                            [call_probability(p_base[np.searchsorted(scored, call)])],
                            [speaker_of(gt, call)],
                        )
                        res["call_none"].add([label], [call_probability(p_pop[call])], [speaker_of(gt, call)])
    return res, thresholds


def speaker_of(groups: np.ndarray, rows: np.ndarray) -> str:
    return str(groups[rows[0]])


def _calls(pool: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Split a speaker's clips of one state into disjoint simulated calls of ``size`` clips."""
    if len(pool) < size:
        return []
    shuffled = rng.permutation(pool)
    return [np.sort(shuffled[i : i + size]) for i in range(0, len(shuffled) - size + 1, size)]


def cross_corpus(
    model: PainModel,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    normal: np.ndarray,
    *,
    k: int = 3,
    draws: int = 3,
    seed: int = 0,
) -> dict[str, Scored]:
    """Score a corpus the model never saw, with that corpus's own (unlabelled) population statistics."""
    rng = np.random.default_rng(seed)
    target = RunningStats.from_array(X)  # labels are not used: unlabelled traffic statistics
    res = {
        "cross_training_population": Scored.new(),
        "cross": Scored.new(),
        f"cross_baseline_{k}": Scored.new(),
    }
    res["cross_training_population"].add(y, model.predict_proba(X), groups)
    res["cross"].add(y, model.predict_proba(X, population=target), groups)
    for enrol, scored, _ in enrolment_draws(groups, normal, (k,), draws, rng, remove_enrolled=True):
        p = model.predict_proba(X[scored], population=target, baseline=RunningStats.from_array(X[enrol]))
        res[f"cross_baseline_{k}"].add(y[scored], p, groups[scored])
    return res


def multiclass_person_level(
    X: np.ndarray,
    classes: np.ndarray,
    groups: np.ndarray,
    class_names: list[str],
    *,
    folds: int = 5,
    c: float = 1.0,
    n_boot: int = 1000,
) -> dict[str, Any]:
    """Person-level grouped k-fold for a multi-class task (population path, no baselines).

    A class-balanced multinomial logistic regression: with 382 "hunger" clips against 43 "pain",
    an unweighted model would always answer the majority class.

    Reports the one-vs-rest macro AUC and the multi-class balanced accuracy, each with a
    speaker-grouped bootstrap CI, and the confusion matrix.
    """
    from sklearn.linear_model import LogisticRegression

    from analysis.baseline import TwoLevelNormaliser
    from analysis.metrics import balanced_accuracy_multiclass, confusion, grouped_bootstrap_ci, macro_auc_ovr

    labels = np.arange(len(class_names))
    P = np.zeros((len(classes), len(class_names)))
    for tr, te in GroupKFold(min(folds, len(np.unique(groups)))).split(X, classes, groups):
        assert_person_split(groups, tr, te)
        norm = TwoLevelNormaliser().fit(X[tr], groups[tr])
        clf = LogisticRegression(C=c / 10.0, class_weight="balanced", max_iter=5000)
        clf.fit(norm.standardise(X[tr]), classes[tr])
        P[np.ix_(te, clf.classes_)] = clf.predict_proba(norm.standardise(X[te]))
    auc = grouped_bootstrap_ci(classes, P, groups, lambda y, p: macro_auc_ovr(y, p, labels=labels), n_boot=n_boot)
    bal = grouped_bootstrap_ci(
        classes, P, groups, lambda y, p: balanced_accuracy_multiclass(y, p, labels=labels), n_boot=n_boot
    )
    return {
        "classes": class_names,
        "macro_auc_ovr": auc[0],
        "macro_auc_ovr_ci": [auc[1], auc[2]],
        "balanced_accuracy": bal[0],
        "balanced_accuracy_ci": [bal[1], bal[2]],
        "confusion": confusion(classes, P.argmax(axis=1), labels=labels).tolist(),
    }
