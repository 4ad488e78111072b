"""Fitting a :class:`~analysis.model.PainModel`: hyper-parameters, blend weights, calibration, threshold.

Every choice is made on *grouped* out-of-fold predictions over the training speakers (no speaker on
both sides of an inner split), because a choice made on a random split rewards memorising voices.

The caller path is trained the way it is used: for each training speaker, a baseline is enrolled
from ``k`` of their normal-state clips (several random draws, ``k`` from ``enrol_k``) and their
clips are expressed relative to it. Held-out speakers get the same treatment with the enrolment
clips removed from what is scored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.svm import SVC

from analysis.adversarial import AdversarialMLP
from analysis.aggregate import logit, sigmoid
from analysis.baseline import RunningStats, TwoLevelNormaliser
from analysis.metrics import roc_auc, summarise, threshold_for_specificity
from analysis.model import PainModel, Platt, model_version
from analysis.nuisance import NuisanceProjection

# eGeMAPS columns that measure absolute level: the recording-level confound (see the model card)
LEVEL_FEATURE_PREFIXES = ("loudness_sma3_", "equivalentSoundLevel_dBp")
# eGeMAPS columns that time the words (voiced and unvoiced stretches, loudness peaks per second): they
# follow what is said as much as how, and a caller does not say what the training actors said
TIMING_FEATURES = (
    "loudnessPeaksPerSec",
    "VoicedSegmentsPerSec",
    "MeanVoicedSegmentLengthSec",
    "StddevVoicedSegmentLengthSec",
    "MeanUnvoicedSegmentLength",
    "StddevUnvoicedSegmentLength",
)


@dataclass(frozen=True)
class TrainConfig:
    classifier: str = "svm"  # svm | logreg | gboost | adversarial | mlp
    c_grid: tuple[float, ...] = (0.3, 1.0)
    enrol_k: tuple[int, ...] = (1, 3, 5)
    draws: int = 2
    tau: float = 2.0
    inner_folds: int = 3
    blend_grid: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    target_specificity: float = 0.9
    drop_level_features: bool = False
    drop_timing_features: bool = False
    nap_components: int = 0  # population path: speaker directions projected out (analysis.nuisance)
    seed: int = 0


@dataclass
class Enrolled:
    """Clips of held-out speakers scored relative to a baseline enrolled from other clips."""

    index: np.ndarray  # rows of X that were scored
    k: np.ndarray  # how many enrolment clips each row's baseline had
    offsets: np.ndarray  # (rows, dim) caller offsets in standardised units
    baselines: list[RunningStats] = field(default_factory=list)  # one per row (shared objects)


def make_classifier(kind: str, c: float, seed: int = 0) -> Any:
    """The estimator family by name; inputs are already standardised."""
    if kind == "svm":
        return SVC(C=c, kernel="rbf", gamma="scale", random_state=seed)
    if kind == "logreg":
        return LogisticRegression(C=c / 10.0, max_iter=5000)
    if kind == "gboost":
        return HistGradientBoostingClassifier(learning_rate=0.05, max_iter=int(100 * c), random_state=seed)
    if kind in ("adversarial", "mlp"):  # mlp: the same network with its adversaries silenced
        return AdversarialMLP(adversary=0.3 if kind == "adversarial" else 0.0, weight_decay=1e-3 / c, random_state=seed)
    raise ValueError(f"unknown classifier {kind!r}: use svm, logreg, gboost, adversarial or mlp")


def population_estimator(cfg: TrainConfig, c: float) -> Any:
    """The population path's estimator: the classifier, behind a nuisance projection if configured.

    Only the population path gets the projection: the caller path's features are already relative
    to the caller's own voice, and the spread of its speakers' means is their distress, not who they are.
    """
    clf = make_classifier(cfg.classifier, c, cfg.seed)
    if cfg.nap_components <= 0:
        return clf
    return Pipeline([("nap", NuisanceProjection(cfg.nap_components)), ("clf", clf)])


def fit_requires_groups(estimator: Any) -> bool:
    """Whether ``estimator``'s fit learns from the speakers: it declares ``fit_requires_groups = True``."""
    return bool(getattr(estimator, "fit_requires_groups", False))


def fit_estimator(
    estimator: Any, Z: np.ndarray, y: np.ndarray, groups: np.ndarray, weight: np.ndarray | None
) -> Any | None:
    """Fit ``estimator`` (plain or a :func:`population_estimator` pipeline); None when ``y`` has one class.

    ``weight`` (one per row, or None) goes to the classifier (a pipeline's final step); ``groups`` to
    every estimator (or pipeline step) that declares ``fit_requires_groups``, such as the projection
    and :class:`~analysis.adversarial.AdversarialMLP`.
    """
    if len(np.unique(y)) < 2:
        return None
    if isinstance(estimator, Pipeline):
        params: dict[str, Any] = {
            f"{name}__groups": groups for name, step in estimator.steps if fit_requires_groups(step)
        }
        if weight is not None:
            params[f"{estimator.steps[-1][0]}__sample_weight"] = weight
        return estimator.fit(Z, y, **params)
    own: dict[str, Any] = {} if weight is None else {"sample_weight": weight}
    if fit_requires_groups(estimator):
        own["groups"] = groups
    return estimator.fit(Z, y, **own)


def feature_mask(feature_names: list[str], drop_level: bool, drop_timing: bool = False) -> np.ndarray:
    """The columns the classifiers see: all, or without the level and/or timing ones."""
    keep = np.ones(len(feature_names), dtype=bool)
    if drop_level:
        keep &= np.array([not n.startswith(LEVEL_FEATURE_PREFIXES) for n in feature_names])
    if drop_timing:
        keep &= ~np.isin(feature_names, TIMING_FEATURES)
    return keep


def enrolment_draws(
    groups: np.ndarray,
    normal: np.ndarray,
    k_values: tuple[int, ...],
    draws: int,
    rng: np.random.Generator,
    remove_enrolled: bool,
) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
    """Yield ``(enrolment_rows, scored_rows, k)`` per speaker, k and draw.

    Speakers without normal-state clips cannot be enrolled and are skipped; ``k`` is capped at the
    clips available (leaving at least one clip to score when ``remove_enrolled``).
    """
    for speaker in np.unique(groups):
        rows = np.flatnonzero(groups == speaker)
        normal_rows = rows[normal[rows]]
        for k in k_values:
            cap = len(normal_rows) - (1 if remove_enrolled and len(rows) == len(normal_rows) else 0)
            kk = min(k, cap)
            if kk < 1:
                continue
            for _ in range(draws):
                enrol = rng.choice(normal_rows, kk, replace=False)
                scored = np.setdiff1d(rows, enrol) if remove_enrolled else rows
                if len(scored):
                    yield enrol, scored, k


def caller_training_set(
    norm: TwoLevelNormaliser,
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    normal: np.ndarray,
    cfg: TrainConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Caller-relative features for training speakers, one copy per enrolment draw.

    Returns the features, their labels, and the row of ``X`` each came from (for its weight).
    """
    rel, rows = [], []
    for enrol, scored, _ in enrolment_draws(groups, normal, cfg.enrol_k, cfg.draws, rng, remove_enrolled=False):
        offset = norm.caller_offset(RunningStats.from_array(X[enrol]))
        rel.append(norm.relative(X[scored], offset))
        rows.append(scored)
    if not rel:
        return np.zeros((0, X.shape[1])), np.zeros(0, dtype=int), np.zeros(0, dtype=int)
    index = np.concatenate(rows)
    return np.vstack(rel), y[index], index


def _decision(clf: Any, Z: np.ndarray) -> np.ndarray:
    if hasattr(clf, "decision_function"):
        return np.asarray(clf.decision_function(Z), dtype=np.float64)
    return logit(clf.predict_proba(Z)[:, 1])


@dataclass
class _OOF:
    pop: dict[float, np.ndarray]  # C -> out-of-fold population logits per clip
    caller_rows: list[np.ndarray]  # per enrolment draw, rows scored
    caller_k: list[int]
    caller: dict[float, list[np.ndarray]]  # C -> per draw, caller logits


def _inner_oof(X, y, groups, normal, mask, weight, cfg: TrainConfig) -> _OOF:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(cfg.seed)
    n_splits = min(cfg.inner_folds, len(np.unique(groups)))
    oof = _OOF({c: np.zeros(len(y)) for c in cfg.c_grid}, [], [], {c: [] for c in cfg.c_grid})
    for tr, te in GroupKFold(n_splits).split(X, y, groups):
        norm = TwoLevelNormaliser(tau=cfg.tau).fit(X[tr], groups[tr])
        z_tr, z_te = norm.standardise(X[tr])[:, mask], norm.standardise(X[te])[:, mask]
        w_tr = weight[tr] if weight is not None else None
        R, yr, r_rows = caller_training_set(norm, X[tr], y[tr], groups[tr], normal[tr], cfg, rng)
        w_r = w_tr[r_rows] if w_tr is not None else None
        held = list(enrolment_draws(groups[te], normal[te], cfg.enrol_k, 1, rng, remove_enrolled=True))
        for c in cfg.c_grid:
            clf = fit_estimator(population_estimator(cfg, c), z_tr, y[tr], groups[tr], w_tr)
            oof.pop[c][te] = _decision(clf, z_te) if clf is not None else 0.0
            caller_est = make_classifier(cfg.classifier, c, cfg.seed)
            cclf = fit_estimator(caller_est, R[:, mask], yr, groups[tr][r_rows], w_r) if held else None
            for enrol, scored, _ in held:
                offset = norm.caller_offset(RunningStats.from_array(X[te][enrol]))
                rel = norm.relative(X[te][scored], offset)[:, mask]
                oof.caller[c].append(_decision(cclf, rel) if cclf is not None else np.zeros(len(scored)))
        for _, scored, k in held:
            oof.caller_rows.append(te[scored])
            oof.caller_k.append(k)
    return oof


def _best(scores: dict[float, float]) -> float:
    """The arg-max, preferring the smaller (more regularised, or less baseline-reliant) value on ties."""
    best = max(scores.values())
    return min(k for k, v in scores.items() if v >= best - 1e-9)


def _platt(z: np.ndarray, y: np.ndarray) -> Platt:
    """Logistic calibration of out-of-fold scores, never allowed to invert the ranking.

    A negative slope would mean the held-out scores ran *against* the labels (no real signal, e.g.
    a device confound); flipping them would fake skill, so the model then says the base rate.
    """
    lr = LogisticRegression(C=1e4, max_iter=1000).fit(z.reshape(-1, 1), y)
    a = float(lr.coef_[0, 0])
    if a <= 0:
        return Platt(0.0, float(logit([np.mean(y)])[0]))
    return Platt(a, float(lr.intercept_[0]))


def fit_model(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    normal: np.ndarray,
    *,
    feature_names: list[str],
    embedder: dict[str, Any],
    channel: dict[str, Any],
    task: dict[str, Any],
    training_data: dict[str, Any],
    cfg: TrainConfig | None = None,
    sample_weight: np.ndarray | None = None,
) -> PainModel:
    """Fit both paths, choose C, blend weights, calibration and threshold; return the model.

    ``normal`` marks clips in the speaker's normal state (the enrolment pool); ``y`` is 1 for pain.
    ``sample_weight`` (one per clip) weights the classifiers' fits, e.g. so that each speaker or
    corpus counts the same however many clips it has; the choices made on out-of-fold predictions
    (C, blend, calibration, threshold) count every clip once.
    """
    cfg = cfg or TrainConfig()
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    mask = feature_mask(feature_names, cfg.drop_level_features, cfg.drop_timing_features)
    oof = _inner_oof(X, y, groups, normal, mask, sample_weight, cfg)

    c_pop = _best({c: roc_auc(y, v) for c, v in oof.pop.items()})
    rows = np.concatenate(oof.caller_rows) if oof.caller_rows else np.zeros(0, dtype=int)
    ks = np.concatenate(
        [np.full(len(r), k) for r, k in zip(oof.caller_rows, oof.caller_k, strict=True)] or [np.zeros(0, dtype=int)]
    )
    has_caller = len(rows) > 0 and len(np.unique(y[rows])) == 2
    blend: list[tuple[int, float]] = [(1, 0.0)]
    blended_cal = Platt()
    c_caller = cfg.c_grid[0]
    if has_caller:
        c_caller = _best({c: roc_auc(y[rows], np.concatenate(v)) for c, v in oof.caller.items()})
        lb = np.concatenate(oof.caller[c_caller])
        lp = oof.pop[c_pop][rows]
        blend = []
        for k in sorted(set(cfg.enrol_k)):
            sel = ks == k
            if sel.any() and len(np.unique(y[rows][sel])) == 2:
                w = _best({w: roc_auc(y[rows][sel], w * lb[sel] + (1 - w) * lp[sel]) for w in cfg.blend_grid})
                blend.append((k, w))
        weights = np.array([dict(blend).get(int(k), 0.0) for k in ks])
        blended_cal = _platt(weights * lb + (1 - weights) * lp, y[rows])

    population_cal = _platt(oof.pop[c_pop], y)
    p_pop = sigmoid(population_cal(oof.pop[c_pop]))
    threshold = threshold_for_specificity(y, p_pop, cfg.target_specificity)
    metrics: dict[str, Any] = {"population_path": summarise(y, p_pop, groups, threshold, n_boot=500)}
    if has_caller:
        p_blend = sigmoid(blended_cal(weights * lb + (1 - weights) * lp))
        for k, _w in blend:
            sel = ks == k
            metrics[f"with_baseline_{k}"] = summarise(
                y[rows][sel], p_blend[sel], groups[rows][sel], threshold, n_boot=500
            )

    norm = TwoLevelNormaliser(tau=cfg.tau).fit(X, groups)
    pop_clf = fit_estimator(population_estimator(cfg, c_pop), norm.standardise(X)[:, mask], y, groups, sample_weight)
    if pop_clf is None:
        raise ValueError("every training clip has the same label: there is nothing to learn")
    caller_clf = None
    if has_caller:
        R, yr, r_rows = caller_training_set(norm, X, y, groups, normal, cfg, np.random.default_rng(cfg.seed + 1))
        caller_clf = fit_estimator(
            clone(make_classifier(cfg.classifier, c_caller, cfg.seed)),
            R[:, mask],
            yr,
            groups[r_rows],
            sample_weight[r_rows] if sample_weight is not None else None,
        )

    card: dict[str, Any] = {
        "format": "painline-model/1",
        "embedder": embedder,
        "channel": channel,
        "task": task,
        "training_data": training_data,
        "training": {**asdict(cfg), "c_population": c_pop, "c_caller": c_caller},
        "features_used": int(mask.sum()),
        "levels": {
            "population": "standardise by the deployment population's running statistics "
            "(training population until the live one has enough utterances)",
            "caller": {"blend_weights_by_baseline_size": blend, "shrinkage_tau": cfg.tau},
        },
        "threshold": {
            "value": float(threshold),
            "method": f"lowest probability reaching {cfg.target_specificity:.0%} specificity on grouped "
            "out-of-fold predictions of the training speakers (no baseline)",
        },
        "label_mapping": task.get("classes", {}),
        "metrics": {
            "protocol": "person-level: grouped inner cross-validation over the training speakers, the same "
            "out-of-fold predictions that chose C, the blend and the threshold (so slightly optimistic); "
            "held-out and cross-corpus figures are in bench/results/detection.json",
            **metrics,
        },
        "intended_use": "Decision support for triage nurses: flags calls whose voice suggests pain relative "
        "to the caller's own normal voice. Not a diagnosis; trained on acted speech and performed "
        "vocalisations, none of it clinical pain.",
    }
    # the version must change when the features do (a codec fix, a new extractor), not only the settings
    card["training_data"] = {
        **training_data,
        "features_sha256": hashlib.sha256(np.ascontiguousarray(X).tobytes()).hexdigest()[:16],
    }
    card["model_version"] = model_version(card)
    return PainModel(
        card=card,
        normaliser=norm,
        population_clf=pop_clf,
        caller_clf=caller_clf,
        feature_mask=mask,
        blend=blend,
        population_cal=population_cal,
        blended_cal=blended_cal,
    )
