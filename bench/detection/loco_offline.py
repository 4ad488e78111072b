"""Leave-one-corpus-out research on cached features: many variants in the time of one live run.

``python -m bench.detection.loco_offline --variant egemaps --variant egemaps+speaker/aligned``

The live LOCO protocol (:func:`painline.live_path.run_loco`) plays every call through a deployment
and takes about half an hour per corpus; a research question (does the d-vector help? does
per-corpus standardisation?) needs an answer per variant in minutes. Since a segmented clip scores
the same offline as through a replayed call (``tests/painline/test_live_path.py``), this module replays the
protocol on the features: the same GroupKFold halves, each half's population seeded from the other
half's clips, the same enrolment and call plan (:func:`painline.live_path.call_plan` with the same seed),
and the same pooled training (:func:`painline.research.fit_pooled`). What it leaves out is the
speaker check and the population's growth during the calls, so it ranks variants; the shipped
default's figures come from the live run. Results go to ``bench/results/loco_research.json``; the
research log (docs/research-log.md) says what was kept.

A variant is ``<embedder>[/<option>...]``; options:

- ``aligned``: each training corpus standardised by its own statistics before pooling, as a
  deployment standardises its callers by their own (:func:`painline.research.fit_pooled`);
- ``speakers`` or ``corpora``: every training speaker, or every training corpus, weighs the same
  in the fit (:class:`painline.research.Weighting`; by default every clip does);
- ``notiming``: the eGeMAPS columns that time the words are left out
  (:data:`analysis.training.TIMING_FEATURES`);
- ``vocal``: the nonverbal vocalisations (moans, screams, cries and the other sounds) join every
  training set; their own check then holds out half of their performers at a time;
- ``adversarial``: a small network with corpus- and speaker-adversarial heads instead of the SVM
  (:class:`analysis.adversarial.AdversarialMLP`); ``mlp``: the same network, adversaries silenced;
- ``augment``: each training corpus gains a damaged copy of its clips, each clip through one of
  :data:`AUGMENTS` chosen at random (babble at 10 dB SNR, -12 dB, +12 dB); the held-out corpus
  is never augmented;
- ``nap<k>``: the population path projects out the ``k`` leading directions of between-speaker
  variation (:mod:`analysis.nuisance`), e.g. ``nap8``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from analysis.aggregate import logit, sigmoid
from analysis.baseline import RunningStats
from analysis.embedders import Embedder, get_embedder
from analysis.features import ChannelConfig, FeatureCache, extract, has_speech
from analysis.metrics import grouped_bootstrap_ci, roc_auc
from analysis.perturb import Noise
from analysis.training import TrainConfig
from painline.config import Settings
from painline.live_path import CALL_SIZES, SPEECH_TASKS, call_plan
from painline.research import (
    DEFAULT_CHANNEL,
    Pooling,
    TaskData,
    Weighting,
    fit_pooled,
    load_task_data,
    loco_fold_model,
)
from painline.workers import embedder_sources

RESULTS = Path(__file__).resolve().parents[1] / "results" / "loco_research.json"
NONVERBAL = "nonverbal-distress"
DOC = Path(__file__).resolve().parents[2] / "docs" / "detection.md"

AGGREGATIONS = ("mean_logodds", "top_half", "median")
"""How a call's utterance probabilities become one: the shipped mean of log-odds, and two rivals."""


def aggregate(probs: np.ndarray, how: str) -> float:
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs[np.isfinite(probs)]
    if not len(probs):
        return 0.0  # nothing of the call was heard: it cannot raise a flag
    z = logit(probs)
    if how == "mean_logodds":
        return float(sigmoid(z.mean()))
    if how == "top_half":
        top = np.sort(z)[len(z) // 2 :]
        return float(sigmoid(top.mean()))
    if how == "median":
        return float(sigmoid(np.median(z)))
    raise ValueError(f"unknown aggregation {how!r}")


@dataclass(frozen=True)
class Variant:
    embedder: str
    pooling: Pooling = field(default_factory=Pooling)
    nap: int = 0
    no_timing: bool = False
    vocal: bool = False
    classifier: str = "svm"
    augment: bool = False

    @classmethod
    def parse(cls, text: str) -> Variant:
        name, *options = text.split("/")
        variant = cls(name)
        for option in options:
            if option == "aligned":
                variant = replace(variant, pooling=replace(variant.pooling, aligned=True))
            elif option in (Weighting.SPEAKERS, Weighting.CORPORA):
                variant = replace(variant, pooling=replace(variant.pooling, weighting=Weighting(option)))
            elif option in ("adversarial", "mlp"):
                variant = replace(variant, classifier=option)
            elif option == "augment":
                variant = replace(variant, augment=True)
            elif option == "vocal":
                variant = replace(variant, vocal=True)
            elif option == "notiming":
                variant = replace(variant, no_timing=True)
            elif option.startswith("nap") and option[3:].isdigit() and int(option[3:]) > 0:
                variant = replace(variant, nap=int(option[3:]))
            else:
                known = "aligned, speakers, corpora, notiming, vocal, adversarial, mlp, augment, nap<k>"
                raise SystemExit(f"unknown variant option {option!r} in {text!r}: {known}")
        return variant

    @classmethod
    def of_card(cls, card: dict[str, Any]) -> Variant:
        """The variant a model was trained as, read from its card: where the shipped model's rows are."""
        data, training = card.get("training_data", {}), card.get("training", {})
        return cls(
            card["embedder"]["name"],
            Pooling.from_card(data),
            nap=int(training.get("nap_components", 0)),
            no_timing=bool(training.get("drop_timing_features", False)),
            vocal=NONVERBAL in data.get("extra_tasks", []),
            classifier=str(training.get("classifier", "svm")),
        )

    def __str__(self) -> str:
        options = ["aligned"] if self.pooling.aligned else []
        options += [self.pooling.weighting.value] if self.pooling.weighting is not Weighting.CLIPS else []
        options += ["notiming"] if self.no_timing else []
        options += ["vocal"] if self.vocal else []
        options += [self.classifier] if self.classifier != "svm" else []
        options += ["augment"] if self.augment else []
        options += [f"nap{self.nap}"] if self.nap else []
        return "/".join([self.embedder, *options])

    def train_config(self, cfg: TrainConfig) -> TrainConfig:
        classifier = self.classifier if self.classifier != "svm" else cfg.classifier
        return replace(cfg, nap_components=self.nap, drop_timing_features=self.no_timing, classifier=classifier)


@dataclass
class _Rows:
    y: dict[str, list[int]] = field(default_factory=dict)
    p: dict[str, list[float]] = field(default_factory=dict)
    unheard: int = 0  # clips in which the VAD found no utterance

    def add(self, row: str, y: int, p: float) -> None:
        self.y.setdefault(row, []).append(int(y))
        self.p.setdefault(row, []).append(float(p))

    def auc(self) -> dict[str, float]:
        return {row: round(roc_auc(np.array(self.y[row]), np.array(self.p[row])), 4) for row in sorted(self.y)}


def play_offline(model: Any, test: TaskData, seed: int = 0) -> _Rows:
    """The live LOCO plan on features: halves seeded by each other, 3 enrolment clips, calls of 4 and 8.

    Rows of ``test.X`` that are NaN (damaged audio in which the VAD found no utterance) score
    nothing, as on a call: such an utterance is missing from its rows, and a call left with no
    utterance at all can never be flagged (it counts with probability 0).
    """
    rng = np.random.default_rng(seed)
    rows = _Rows()
    heard = has_speech(test.X)
    for seed_rows, te in GroupKFold(2).split(test.X, test.y, test.groups):
        population = RunningStats.from_array(test.X[seed_rows[heard[seed_rows]]])
        plan, enrol = call_plan(te, test.y, test.normal, test.groups, rng)
        p_pop = _scores(model, test.X, heard, population, None)
        p_base = {}
        for s, idx in enrol.items():
            kept = idx[heard[idx]]
            baseline = RunningStats.from_array(test.X[kept]) if len(kept) else None
            p_base[s] = _scores(model, test.X, heard, population, baseline)
        for speaker, label, size, idx in plan:
            if size == min(CALL_SIZES):
                for i in idx[heard[idx]]:
                    rows.add("population", label, p_pop[i])
                    rows.add("baseline_3", label, p_base[speaker][i])
                rows.add(f"call_{size}_population", label, aggregate(p_pop[idx], "mean_logodds"))
            for how in AGGREGATIONS:
                suffix = "" if how == "mean_logodds" else f"_{how}"
                rows.add(f"call_{size}_baseline_3{suffix}", label, aggregate(p_base[speaker][idx], how))
    rows.unheard = int((~heard).sum())
    return rows


def _scores(
    model: Any, X: np.ndarray, heard: np.ndarray, population: RunningStats, baseline: RunningStats | None
) -> np.ndarray:
    out = np.full(len(X), np.nan)
    out[heard] = model.predict_proba(X[heard], population=population, baseline=baseline)
    return out


DAMAGES: dict[str, ChannelConfig] = {
    "white_20db": replace(DEFAULT_CHANNEL, noise=Noise.WHITE, snr_db=20.0),
    "white_10db": replace(DEFAULT_CHANNEL, noise=Noise.WHITE, snr_db=10.0),
    "babble_20db": replace(DEFAULT_CHANNEL, noise=Noise.BABBLE, snr_db=20.0),
    "babble_10db": replace(DEFAULT_CHANNEL, noise=Noise.BABBLE, snr_db=10.0),
    "frames_lost_2pct": replace(DEFAULT_CHANNEL, frame_loss=0.02),
    "frames_lost_5pct": replace(DEFAULT_CHANNEL, frame_loss=0.05),
    "gain_plus_12db": replace(DEFAULT_CHANNEL, gain_db=12.0),
    "gain_minus_12db": replace(DEFAULT_CHANNEL, gain_db=-12.0),
}
"""The robustness rows: each damages all of the test corpus's audio (calls, enrolment, population
seed); training audio stays clean. Babble is four other speakers of the test corpus at once."""


FAST = TrainConfig(c_grid=(1.0,), enrol_k=(3,), draws=1)
"""For ranking variants against each other when a full fold fit per variant costs too much: one C,
one enrolment size (the 3 clips the LOCO plan enrols) and one draw. Every variant of a comparison
uses it; no shipped figure does."""


def loco_fold(
    data: list[TaskData],
    held_out: int,
    variant: Variant,
    settings: Settings,
    *,
    robustness: tuple[str, ...] = (),
    fold_dir: Path | None = None,
    cfg: TrainConfig | None = None,
    extra: list[TaskData] | None = None,
    train: list[TaskData] | None = None,
) -> dict[str, Any]:
    """One LOCO fold: train on ``train`` (by default ``data``) but ``held_out``, and on ``extra``; play
    the held-out corpus's calls from ``data``, clean and under each of the ``robustness`` damages."""
    started = time.time()
    emb = get_embedder(variant.embedder, embedder_sources(settings))
    cfg = variant.train_config(cfg or TrainConfig())
    model = loco_fold_model(
        train or data,
        held_out,
        emb,
        DEFAULT_CHANNEL,
        cfg,
        pooling=variant.pooling,
        extra=extra or [],
        fold_dir=fold_dir,
    )
    test = data[held_out]
    out: dict[str, Any] = {"auc": play_offline(model, test).auc(), "threshold": model.threshold}
    if robustness:
        cache = FeatureCache(settings.cache_dir / "features")
        out["robustness"] = {}
        for name in robustness:
            channel = DAMAGES[name]
            damaged = play_offline(model, replace(test, X=extract(test.clips, emb, channel, cache, progress=False)))
            out["robustness"][name] = {"auc": damaged.auc(), "unheard_clips": damaged.unheard}
            print(f"  {name}: call_8_baseline_3 {damaged.auc().get('call_8_baseline_3')}", flush=True)
    out["seconds"] = round(time.time() - started, 1)
    return out


AUGMENTS = ("babble_10db", "gain_minus_12db", "gain_plus_12db")
"""The damages a training clip's augmented copy goes through (one each, at random): the robustness
rows the shipped procedure fails (docs/detection.md), so the copy teaches what it is tested on."""


def augmented(data: TaskData, emb: Embedder, settings: Settings, seed: int = 0) -> TaskData:
    """``data`` (embedded by ``emb``) and, after it, one damaged copy of each of its clips embedded the
    same way (a clip the VAD no longer hears is left out). The copy keeps the clip's speaker and label,
    so grouped CV never splits the two."""
    cache = FeatureCache(settings.cache_dir / "features")
    damaged = np.stack([extract(data.clips, emb, DAMAGES[name], cache, progress=False) for name in AUGMENTS])
    pick = np.random.default_rng(seed).integers(len(AUGMENTS), size=len(data.y))
    copy = replace(data, X=damaged[pick, np.arange(len(data.y))])
    copy = subset(copy, np.flatnonzero(has_speech(copy.X)))
    return replace(
        data,
        clips=[*data.clips, *copy.clips],
        X=np.vstack([data.X, copy.X]),
        y=np.concatenate([data.y, copy.y]),
        groups=np.concatenate([data.groups, copy.groups]),
        normal=np.concatenate([data.normal, copy.normal]),
    )


def subset(data: TaskData, rows: np.ndarray) -> TaskData:
    """The clips ``rows`` of ``data`` (a task's speakers split for training and testing)."""
    return replace(
        data,
        clips=[data.clips[i] for i in rows],
        X=data.X[rows],
        y=data.y[rows],
        groups=data.groups[rows],
        normal=data.normal[rows],
    )


def nonverbal_check(
    train: list[TaskData], nonverbal: TaskData, variant: Variant, settings: Settings, cfg: TrainConfig
) -> dict[str, Any]:
    """The variant trained on ``train``, scored on performed moans, screams and cries it never heard.

    No speech corpus has vocalised distress, so this is the check that a representation learnt from
    acted speech still points the right way on the sounds closest to a caller in pain. Standardised by
    the vocalisations' own statistics, as a hotline's population would be; ``labels`` gives each
    distress sound's AUC against all the other vocalisations, to see which one a variant loses.
    Its performers gave one or two clips each, so there are no calls or baselines to replay.
    """
    started = time.time()
    emb = get_embedder(variant.embedder, embedder_sources(settings))
    cfg = variant.train_config(cfg)
    p = np.zeros(len(nonverbal.y))
    # with ``vocal`` the vocalisations are training data too: each half of the performers is scored
    # by a model that heard the other half, standardised by its own half's statistics
    halves = GroupKFold(2).split(nonverbal.X, nonverbal.y, nonverbal.groups) if variant.vocal else [([], slice(None))]
    for seen, unseen in halves:
        extra = [subset(nonverbal, np.asarray(seen))] if variant.vocal else []
        model = fit_pooled(train, emb, DEFAULT_CHANNEL, cfg, variant.pooling, extra)
        X = nonverbal.X[unseen]
        p[unseen] = model.predict_proba(X, population=RunningStats.from_array(X))
    point, low, high = grouped_bootstrap_ci(nonverbal.y, p, nonverbal.groups, roc_auc)
    labels = np.array([c.label for c in nonverbal.clips])
    negative = nonverbal.y == 0
    per_label = {
        str(label): round(roc_auc(np.r_[np.ones(k.sum()), np.zeros(negative.sum())], np.r_[p[k], p[negative]]), 4)
        for label in sorted(set(labels[nonverbal.y == 1]))
        for k in [labels == label]
    }
    return {
        "trained_on": [d.task.name for d in train],
        "population": {"auc": round(point, 4), "ci": [round(low, 4), round(high, 4)]},
        "labels": per_label,
        "seconds": round(time.time() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--variant",
        action="append",
        required=True,
        help="<embedder>[/option...] (repeatable; options in the module docstring)",
    )
    p.add_argument("--task", action="append", help="test corpus task (default: every speech task)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--doc", type=Path, default=DOC, help="with --robustness: the doc whose robustness section is replaced"
    )
    p.add_argument("--fast", action="store_true", help="rank variants with FAST's training settings (not the shipped)")
    p.add_argument("--robustness", action="store_true", help="also score the test corpus's audio damaged (DAMAGES)")
    p.add_argument(
        "--damage",
        action="append",
        choices=list(DAMAGES),
        help="with --robustness: only this damage (repeatable; default every one)",
    )
    p.add_argument(
        "--nonverbal",
        action="append",
        metavar="TASK[+TASK...]",
        help="also train the variant on these speech tasks (all four: 'all') and score nonverbal-distress "
        "(repeatable; instead of the LOCO folds when --task is not given)",
    )
    p.add_argument(
        "--fold-models", type=Path, help="keep and reuse fold models under DIR/<variant>/ (as painline train)"
    )
    args = p.parse_args(argv)
    settings = Settings.from_env()
    tasks = args.task or list(SPEECH_TASKS)
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    for text in args.variant:
        variant = Variant.parse(text)
        emb = get_embedder(variant.embedder, embedder_sources(settings))
        data = [load_task_data(t, emb, settings, DEFAULT_CHANNEL) for t in SPEECH_TASKS]
        out = results.setdefault(str(variant) + (" (fast)" if args.fast else ""), {})
        if args.fast and args.fold_models:
            raise SystemExit("--fast models are for ranking only: they are not kept beside the shipped procedure's")
        fold_dir = args.fold_models / str(variant).replace("/", "-") if args.fold_models else None
        for spec in args.nonverbal or []:
            names = list(SPEECH_TASKS) if spec == "all" else spec.split("+")
            if not set(names) <= set(SPEECH_TASKS):
                raise SystemExit(f"--nonverbal {spec}: train on speech tasks ({', '.join(SPEECH_TASKS)}) or 'all'")
            nonverbal = load_task_data(NONVERBAL, emb, settings, DEFAULT_CHANNEL)
            train = [data[list(SPEECH_TASKS).index(n)] for n in names]
            key = "nonverbal" + ("" if spec == "all" else f" ({spec})")
            out[key] = nonverbal_check(train, nonverbal, variant, settings, FAST if args.fast else TrainConfig())
            print(str(variant), key, json.dumps(out[key]), flush=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        vocal = [load_task_data(NONVERBAL, emb, settings, DEFAULT_CHANNEL)] if variant.vocal else []
        augmented_data = [augmented(d, emb, settings) for d in data] if variant.augment else None
        for t in tasks if (args.task or not args.nonverbal) else []:
            out[t] = loco_fold(
                data,
                list(SPEECH_TASKS).index(t),
                variant,
                settings,
                robustness=tuple(args.damage or DAMAGES) if args.robustness else (),
                fold_dir=fold_dir,
                cfg=FAST if args.fast else TrainConfig(),
                extra=vocal,
                train=augmented_data,
            )
            print(str(variant), t, json.dumps(out[t]["auc"]), f"{out[t]['seconds']} s", flush=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    if args.robustness and not args.fast:
        for text in args.variant:
            write_robustness_doc(text, results[text], args.doc)
            print(f"wrote the robustness section for {text} into {args.doc}")
    return 0


ROBUST_BEGIN = "<!-- robustness: generated by python -m bench.detection.loco_offline --robustness -->"
ROBUST_END = "<!-- /robustness -->"
ROBUST_ROW = "call_8_baseline_3"


def robustness_section(variant: str, per_task: dict[str, Any]) -> str:
    """The doc's robustness table: LOCO ``call_8_baseline_3`` per corpus, clean and under each damage."""
    tasks = [t for t in SPEECH_TASKS if "robustness" in per_task.get(t, {})]
    head = "| damage (test audio) | " + " | ".join(t.split("-")[0] for t in tasks) + " | mean change |"
    lines = [head, "|---" * (len(tasks) + 2) + "|"]
    clean = [per_task[t]["auc"][ROBUST_ROW] for t in tasks]
    lines.append("| none | " + " | ".join(f"{v:.3f}" for v in clean) + " | |")
    for name in [n for n in DAMAGES if all(n in per_task[t]["robustness"] for t in tasks)]:
        vals = [per_task[t]["robustness"][name]["auc"].get(ROBUST_ROW) for t in tasks]
        unheard = [per_task[t]["robustness"][name]["unheard_clips"] for t in tasks]
        cells = [
            f"{v:.3f} ({v - c:+.3f})" + (f", {u} clip{'s' if u > 1 else ''} unheard" if u else "")
            for v, c, u in zip(vals, clean, unheard, strict=True)
        ]
        mean = float(np.mean([v - c for v, c in zip(vals, clean, strict=True)]))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {mean:+.3f} |")
    return (
        f"{ROBUST_BEGIN}\n## Robustness: damaged calls in unheard languages\n\n"
        f"Leave one corpus out (variant `{variant}`, the shipped procedure), the row `{ROBUST_ROW}` (calls of 8 "
        "utterances, caller enrolled from 3 normal clips), with all of the test corpus's audio damaged "
        "before the phone's codec (noise, gain) or after it (lost 20 ms frames); training audio is clean. "
        "Babble is four other speakers of the same corpus at once. Measured by `bench.detection.loco_offline` "
        "(the live plan on features, without the speaker check or the population's growth during calls, so "
        "the clean row is not the live LOCO table's: read the changes); an unheard clip is one in which the VAD "
        "found no utterance, so the call "
        "scores without it. AUC (change from clean).\n\n" + "\n".join(lines) + f"\n{ROBUST_END}\n"
    )


def write_robustness_doc(variant: str, per_task: dict[str, Any], doc: Path) -> None:
    from bench.detection.__main__ import LOCO_END, _place

    text = doc.read_text() if doc.exists() else "# Detection results\n"
    doc.write_text(_place(text, ROBUST_BEGIN, ROBUST_END, robustness_section(variant, per_task), LOCO_END))


def format_table(results: dict[str, Any]) -> str:
    rows = ["population", "baseline_3", "call_4_baseline_3", "call_8_baseline_3"]
    lines = ["| variant | " + " | ".join(t.split("-")[0] for t in SPEECH_TASKS) + " | mean |", "|---" * 6 + "|"]
    for name, per in results.items():
        for row in rows:
            vals = [per.get(t, {}).get("auc", {}).get(row) for t in SPEECH_TASKS]
            have = [v for v in vals if v is not None]
            mean = f"{np.mean(have):.3f}" if len(have) == len(vals) else "-"
            cells = " | ".join(f"{v:.3f}" if v is not None else "-" for v in vals)
            lines.append(f"| {name} {row} | {cells} | {mean} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
