"""``painline train`` and ``painline evaluate``: the research commands over dataset manifests.

Both read tasks from ``painline/tasks.toml`` (or ``--tasks``), corpora from the data directory
(``PAINLINE_DATA_DIR``), and cache features under ``PAINLINE_CACHE_DIR``. ``evaluate`` prints the
protocol table (random split beside person-level ones, so the speaker gap is visible) and writes
JSON and plots; ``train`` fits on whole corpora and writes the artifact with its model card.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold

from analysis.baseline import RunningStats
from analysis.dataset import Clip, Dataset, load_manifest
from analysis.embedders import Embedder, get_embedder
from analysis.features import ChannelConfig, FeatureCache, extract, has_speech
from analysis.metrics import roc_auc, threshold_for_specificity
from analysis.model import PainModel, model_version
from analysis.protocols import Scored, cross_corpus, multiclass_person_level, person_level, random_split
from analysis.tasks import Task, TaskError, bind, load_tasks
from analysis.training import TrainConfig, fit_model
from painline.config import Settings
from painline.workers import embedder_sources

TASKS_FILE = Path(__file__).with_name("tasks.toml")
DEFAULT_CHANNEL = ChannelConfig(telephone=True, rms_normalise=True, segment=True)
"""What the shipped model is trained and judged on: the utterances a call cuts from each clip."""


@dataclass
class TaskData:
    """One task's clips embedded: the clips, their features, pain labels, speakers, normal-state mask.

    Row ``i`` of every array belongs to ``clips[i]``; clips a call would score nothing of are left out.
    """

    task: Task
    dataset: Dataset
    clips: list[Clip]
    X: np.ndarray
    y: np.ndarray
    groups: np.ndarray
    normal: np.ndarray


def load_task_data(
    task_name: str,
    embedder: Embedder,
    settings: Settings,
    channel: ChannelConfig = DEFAULT_CHANNEL,
    tasks_file: Path = TASKS_FILE,
    max_speakers: int | None = None,
) -> TaskData:
    tasks = load_tasks(tasks_file)
    if task_name not in tasks:
        raise SystemExit(f"unknown task {task_name!r}; defined: {', '.join(tasks)}")
    task = tasks[task_name]
    try:
        ds = load_manifest(settings.data_dir / task.corpus, name=task.corpus)
        task = bind(task, ds)
    except TaskError as exc:  # a label the corpus lacks: say so in one line, no traceback
        raise SystemExit(f"painline: {exc}") from None
    except OSError as exc:  # the corpus is not where the settings say
        raise SystemExit(f"painline: task {task_name!r}: {exc}") from None
    keep = task.select(ds)
    if max_speakers:  # for quick runs and tests: the first speakers, in manifest order
        chosen = list(dict.fromkeys(ds.speakers[keep].tolist()))[:max_speakers]
        keep &= np.isin(ds.speakers, chosen)
    clips = [c for c, k in zip(ds.clips, keep, strict=True) if k]
    X = extract(clips, embedder, channel, FeatureCache(settings.cache_dir / "features"))
    # a segmented clip a call would not score (no utterance in it) is not scored offline either
    spoken = has_speech(X)
    if not spoken.all():
        clips = [c for c, k in zip(clips, spoken, strict=True) if k]
        X = X[spoken]
    labels = np.array([c.label for c in clips])
    speakers = np.array([c.speaker_id for c in clips])
    return TaskData(task, ds, clips, X, task.pain(labels), speakers, task.normal_mask(labels))


def make_fit(data: TaskData, embedder: Embedder, channel: ChannelConfig, cfg: TrainConfig):
    """A closure fitting a model on a subset, with the card filled from the task and data."""

    def fit(X: np.ndarray, y: np.ndarray, g: np.ndarray, normal: np.ndarray) -> PainModel:
        return fit_model(
            X,
            y,
            g,
            normal,
            feature_names=embedder.feature_names,
            embedder=embedder.describe(),
            channel=channel.card(),
            task={"name": data.task.name, "classes": data.task.classes, "normal": data.task.normal},
            training_data={"corpus": data.dataset.name, "manifest_sha256": data.dataset.manifest_sha256},
            cfg=cfg,
        )

    return fit


def align_corpora(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """Each corpus's features standardised by its own statistics, then put in the pooled frame.

    A deployment standardises its callers by its own population's statistics, so a new hotline's
    recording chain and language shift nothing on average. Pooled training without this learns the
    corpora's differences (one corpus louder, another lower-pitched) as if they were signal. The
    pooled mean and spread are kept so the model's training population still describes raw features.
    """
    pooled = RunningStats.from_array(np.vstack(blocks))
    out = []
    for X in blocks:
        own = RunningStats.from_array(X)
        scale = np.where(own.std > 0, pooled.std / np.where(own.std > 0, own.std, 1.0), 1.0)
        out.append(((X - own.mean) * scale + pooled.mean).astype(X.dtype))
    return out


class Weighting(StrEnum):
    """How much each clip counts when corpora are pooled for training."""

    CLIPS = "clips"  # every clip once: a corpus with more clips per speaker weighs more
    SPEAKERS = "speakers"  # every speaker the same, however many clips they recorded
    CORPORA = "corpora"  # every corpus the same, however many speakers and clips it has


@dataclass(frozen=True)
class Pooling:
    """How several corpora become one training set (``painline train --aligned --weighting W``)."""

    aligned: bool = False  # each corpus standardised by its own statistics first (:func:`align_corpora`)
    weighting: Weighting = Weighting.CLIPS

    @classmethod
    def from_card(cls, training_data: dict[str, Any]) -> Pooling:
        """The pooling a model card's ``training_data`` records (absent keys: the defaults)."""
        return cls(
            bool(training_data.get("corpora_aligned", False)),
            Weighting(training_data.get("weighting", Weighting.CLIPS.value)),
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Pooling:
        """The pooling :func:`add_pooling_arguments` parsed."""
        return cls(args.aligned, Weighting(args.weighting))

    def card(self) -> dict[str, Any]:
        # the weighting is recorded only when it is not the default, so the cards (and versions) of
        # models trained before it existed are unchanged
        weighted = {} if self.weighting is Weighting.CLIPS else {"weighting": self.weighting.value}
        return {"corpora_aligned": self.aligned, **weighted}

    def flags(self) -> str:
        """The ``painline train`` options that ask for this pooling."""
        weighted = "" if self.weighting is Weighting.CLIPS else f" --weighting {self.weighting.value}"
        return (" --aligned" if self.aligned else "") + weighted


def add_pooling_arguments(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--aligned``, ``--weighting`` and ``--extra-task``, as ``painline train`` and the LOCO bench take them.

    ``when`` prefixes each help text (e.g. ``"with --loco: "``) where the options apply to one mode.
    """
    p.add_argument(
        "--aligned",
        action="store_true",
        help=when + "standardise each corpus by its own statistics before pooling (as a deployment does)",
    )
    p.add_argument(
        "--weighting",
        choices=[w.value for w in Weighting],
        default=Weighting.CLIPS.value,
        help=when + "how much each clip counts: every clip once (default), every speaker or every corpus the same",
    )
    p.add_argument(
        "--extra-task",
        action="append",
        default=[],
        help=when + "a task trained on in every fit but never held out: sounds other than speech (repeatable)",
    )


def pooling_weights(parts: list[TaskData], weighting: Weighting) -> np.ndarray | None:
    """One weight per pooled clip (mean 1, so C keeps its meaning), or None for :attr:`Weighting.CLIPS`."""
    if weighting is Weighting.CLIPS:
        return None
    blocks = []
    for d in parts:
        if weighting is Weighting.CORPORA:
            blocks.append(np.full(len(d.y), 1.0 / len(d.y)))
        else:
            _, inverse, counts = np.unique(d.groups, return_inverse=True, return_counts=True)
            blocks.append(1.0 / counts[inverse])
    w = np.concatenate(blocks)
    return w * (len(w) / w.sum())


def fit_pooled(
    parts: list[TaskData],
    embedder: Embedder,
    channel: ChannelConfig,
    cfg: TrainConfig,
    pooling: Pooling = Pooling(),
    extra: Sequence[TaskData] = (),
) -> PainModel:
    """One model on several tasks' clips pooled (speakers kept apart by corpus), as ``painline train`` fits it.

    ``extra`` are pooled like ``parts``; they are named apart only in the card's ``reproduce`` line
    (``painline train --extra-task``), since they are never held out for a LOCO threshold.
    """
    reproduce = " ".join([*(f"--task {d.task.name}" for d in parts), *(f"--extra-task {d.task.name}" for d in extra)])
    parts = [*parts, *extra]
    groups = np.concatenate([np.char.add(f"{d.dataset.name}:", d.groups.astype(str)) for d in parts])
    names = [d.task.name for d in parts]
    blocks = [d.X for d in parts]
    return fit_model(
        np.vstack(align_corpora(blocks) if pooling.aligned else blocks),
        np.concatenate([d.y for d in parts]),
        groups,
        np.concatenate([d.normal for d in parts]),
        feature_names=embedder.feature_names,
        embedder=embedder.describe(),
        channel=channel.card(),
        task={"name": "+".join(names), "classes": {d.task.name: d.task.classes for d in parts}},
        training_data={
            "corpora": [
                {
                    "corpus": d.dataset.name,
                    "manifest_sha256": d.dataset.manifest_sha256,
                    "clips": len(d.y),
                    "speakers": len(np.unique(d.groups)),
                    "licence": d.task.licence,
                }
                for d in parts
            ],
            "reproduce": f"painline train {reproduce}{pooling.flags()}",
            **pooling.card(),
            **({"extra_tasks": [d.task.name for d in extra]} if extra else {}),
        },
        cfg=cfg,
        sample_weight=pooling_weights(parts, pooling.weighting),
    )


@dataclass(frozen=True)
class LocoThreshold:
    """A threshold chosen on leave-one-corpus-out predictions, and how it held in each language."""

    value: float
    target_specificity: float
    specificity: dict[str, float]  # per held-out corpus, at ``value``
    sensitivity: dict[str, float]

    def card(self) -> dict[str, Any]:
        return {
            "value": self.value,
            "method": f"lowest probability reaching {self.target_specificity:.0%} specificity on pooled "
            "leave-one-corpus-out predictions: for each corpus, a model trained on the others scored its "
            "clips standardised by that corpus's own unlabelled statistics (no baseline), so the "
            "threshold was chosen on languages its fold models never heard",
            "held_out_specificity": self.specificity,
            "held_out_sensitivity": self.sensitivity,
        }


def loco_fold_model(
    parts: list[TaskData],
    held_out: int,
    embedder: Embedder,
    channel: ChannelConfig,
    cfg: TrainConfig,
    *,
    pooling: Pooling = Pooling(),
    extra: Sequence[TaskData] = (),
    fold_dir: Path | None = None,
) -> PainModel:
    """The model trained on every part but ``held_out``, and on ``extra``; kept in ``fold_dir`` (and reused
    from it) when given.

    ``extra`` are training corpora that are never held out: sounds other than speech (performed
    moans, screams and cries) that teach what distress sounds like but are no language of their own.

    A fold model takes minutes to fit and the research bench (bench.detection.loco_offline) scores
    the same folds again, so they are saved as ``<held-out task>.joblib``. A saved one is reused only
    if its card names the same training tasks, pooling, training settings and embedder.
    """
    train = [d for j, d in enumerate(parts) if j != held_out]
    path = fold_dir / f"{parts[held_out].task.name}.joblib" if fold_dir is not None else None
    if path is not None and path.exists():
        saved = PainModel.load(path)
        data = saved.card.get("training_data", {})
        if (
            saved.card.get("task", {}).get("name") == "+".join(d.task.name for d in [*train, *extra])
            and Pooling.from_card(data) == pooling
            and all(saved.card.get("training", {}).get(k) == v for k, v in asdict(cfg).items())
            and saved.embedder_name == embedder.name
        ):
            return saved
    model = fit_pooled(train, embedder, channel, cfg, pooling, extra)
    if path is not None:
        model.save(path)
    return model


def loco_threshold(
    parts: list[TaskData],
    embedder: Embedder,
    channel: ChannelConfig,
    cfg: TrainConfig,
    *,
    pooling: Pooling = Pooling(),
    extra: Sequence[TaskData] = (),
    fold_dir: Path | None = None,
) -> LocoThreshold:
    """The threshold for a model trained on all of ``parts``, chosen where it already held across corpora.

    A threshold chosen on the training corpora's own out-of-fold predictions assumes the next
    hotline sounds like them; one chosen on held-out corpora has been tested on that assumption
    failing. Costs one fit per corpus (:func:`loco_fold_model`); ``extra`` corpora are in every fit
    and never held out, so they do not vote on the threshold.
    """
    ys, ps = [], []
    for i, held in enumerate(parts):
        model = loco_fold_model(parts, i, embedder, channel, cfg, pooling=pooling, extra=extra, fold_dir=fold_dir)
        ys.append(held.y)
        ps.append(model.predict_proba(held.X, population=RunningStats.from_array(held.X)))
    value = threshold_for_specificity(np.concatenate(ys), np.concatenate(ps), cfg.target_specificity)
    names = [d.dataset.name for d in parts]
    return LocoThreshold(
        value=float(value),
        target_specificity=cfg.target_specificity,
        specificity={n: round(float((p[y == 0] < value).mean()), 4) for n, y, p in zip(names, ys, ps, strict=True)},
        sensitivity={n: round(float((p[y == 1] >= value).mean()), 4) for n, y, p in zip(names, ys, ps, strict=True)},
    )


def with_threshold(model: PainModel, threshold: LocoThreshold) -> PainModel:
    """``model`` with its threshold replaced; the version changes, since the threshold decides flags."""
    model.card["threshold"] = threshold.card()
    model.card["training"] = {**model.card["training"], "threshold_from": "leave-one-corpus-out"}
    data = model.card["training_data"]
    if "reproduce" in data and not data["reproduce"].endswith(" --loco-threshold"):
        data["reproduce"] += " --loco-threshold"  # the command must rebuild this threshold too
    model.card["model_version"] = model_version(model.card)
    return model


@dataclass(frozen=True)
class GainCheck:
    """Person-level AUC of models trained at 0 dB, with the test audio at other gains."""

    auc: dict[float, float]
    clips: int  # clips with speech at every gain: the AUCs are over these
    lost: dict[float, int]  # clips the VAD found no utterance in at that gain (but did at 0 dB)


def gain_check(
    task_name: str,
    embedder: Embedder,
    settings: Settings,
    cfg: TrainConfig,
    gains: tuple[float, ...] = (12.0, -12.0),
    max_speakers: int | None = None,
) -> GainCheck:
    """The gain-invariance check: 5 grouped folds trained at 0 dB, the held-out clips scored at each gain.

    The test audio goes through the whole channel at each gain (gain, codec, the call's VAD cut,
    per-utterance normalisation), so a level that changes where the VAD cuts shows here too. The
    AUCs are over the same clips at every gain: those with an utterance at all of them.
    """
    base = load_task_data(task_name, embedder, settings, DEFAULT_CHANNEL, max_speakers=max_speakers)
    cache = FeatureCache(settings.cache_dir / "features")
    shifted = {g: extract(base.clips, embedder, replace(DEFAULT_CHANNEL, gain_db=g), cache) for g in gains}
    spoken = {g: has_speech(X) for g, X in shifted.items()}
    keep = np.logical_and.reduce(list(spoken.values())) if spoken else np.ones(len(base.y), dtype=bool)
    fit = make_fit(base, embedder, DEFAULT_CHANNEL, cfg)
    preds = {g: np.full(len(base.y), np.nan) for g in (0.0, *gains)}
    for tr, te in GroupKFold(5).split(base.X, base.y, base.groups):
        model = fit(base.X[tr], base.y[tr], base.groups[tr], base.normal[tr])
        preds[0.0][te] = model.predict_proba(base.X[te])
        for g, X in shifted.items():
            rows = te[keep[te]]
            preds[g][rows] = model.predict_proba(X[rows])
    return GainCheck(
        auc={g: roc_auc(base.y[keep], p[keep]) for g, p in preds.items()},
        clips=int(keep.sum()),
        lost={g: int((~ok).sum()) for g, ok in spoken.items()},
    )


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"task {result['task']}  ({result['n_clips']} clips; threshold {result['threshold']:.3f})",
        f"{'protocol':<44} {'AUC':>6} {'95% CI':>15} {'bal.acc':>8} {'95% CI':>15} "
        f"{'sens@90spec':>11} {'ECE':>6} {'n':>6}",
    ]
    for name, s in result["protocols"].items():
        if s is None:
            continue
        lines.append(
            f"{name:<44} {fmt(s['auc']):>6} {fmt_ci(s['auc_ci']):>15} {fmt(s['balanced_accuracy']):>8} "
            f"{fmt_ci(s['balanced_accuracy_ci']):>15} {fmt(s['sens_at_90spec']):>11} {fmt(s['ece']):>6} "
            f"{s['n_clips']:>6}"
        )
    mc = result.get("multiclass_person")
    if mc:
        lines.append(
            f"multi-class person-level ({'/'.join(mc['classes'])}): macro AUC {fmt(mc['macro_auc_ovr'])} "
            f"{fmt_ci(mc['macro_auc_ovr_ci'])}, balanced accuracy {fmt(mc['balanced_accuracy'])} "
            f"{fmt_ci(mc['balanced_accuracy_ci'])}, confusion {mc['confusion']}"
        )
    return "\n".join(lines)


def fmt(v: float | None) -> str:
    """A metric for a table: three decimals, or '-' where there is none."""
    return "-" if v is None else f"{v:.3f}"


def fmt_ci(ci: list[float | None] | None) -> str:
    """A confidence interval for a table, or '-'."""
    if not ci or ci[0] is None or ci[1] is None:
        return "-"
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--embedder", default="egemaps", help="embedder name (default: egemaps)")
    p.add_argument("--tasks", type=Path, default=TASKS_FILE, help="tasks TOML file")
    p.add_argument("--data-dir", type=Path, help="folder of corpora (default: PAINLINE_DATA_DIR)")
    p.add_argument("--no-rms", action="store_true", help="keep recording level (no RMS normalisation)")
    p.add_argument("--gain-db", type=float, default=0.0, help="scale all audio by this gain before the channel")
    p.add_argument(
        "--whole-clips",
        action="store_true",
        help="embed whole clips instead of the utterances a call's VAD would cut (not what calls score)",
    )
    p.add_argument("--classifier", default="svm", choices=["svm", "logreg", "gboost"])
    p.add_argument("--drop-level-features", action="store_true", help="drop absolute-level features")
    p.add_argument("--max-speakers", type=int, help="use only the first N speakers (quick runs)")


def _setup(args: argparse.Namespace) -> tuple[Settings, Embedder, ChannelConfig, TrainConfig]:
    settings = Settings.from_env()
    if args.data_dir:
        settings = settings.with_(data_dir=args.data_dir)
    embedder = get_embedder(args.embedder, embedder_sources(settings))
    channel = ChannelConfig(
        telephone=True, rms_normalise=not args.no_rms, gain_db=args.gain_db, segment=not args.whole_clips
    )
    cfg = replace(TrainConfig(), classifier=args.classifier, drop_level_features=args.drop_level_features)
    return settings, embedder, channel, cfg


def evaluate_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="painline evaluate", description="Run every protocol for a task.")
    p.add_argument("--task", required=True)
    p.add_argument("--cross", action="append", default=[], help="also test on this task's corpus (repeatable)")
    p.add_argument("--out", type=Path, default=Path("var/evaluation"), help="folder for JSON and plots")
    p.add_argument("--boot", type=int, default=1000, help="bootstrap replicates for CIs")
    p.add_argument(
        "--protocol",
        choices=["all", "live-path", "loco"],
        default="all",
        help="all: every clip-level protocol (default); live-path: calls through the product's own "
        "stream and worker code (painline.live_path); loco: --task's corpus as an unseen hotline, "
        "trained on the other speech corpora (or --train), on the live path",
    )
    p.add_argument("--train", action="append", help="with --protocol loco: a task to train on (repeatable)")
    _common_args(p)
    args = p.parse_args(argv)
    if args.protocol in ("live-path", "loco"):
        return _live_path_main(args)
    settings, embedder, channel, cfg = _setup(args)
    data = load_task_data(args.task, embedder, settings, channel, args.tasks, args.max_speakers)
    cross = [load_task_data(t, embedder, settings, channel, args.tasks, args.max_speakers) for t in args.cross]
    evaluation = evaluate_protocols(data, embedder, channel, cfg, cross, n_boot=args.boot)
    result = evaluation.result
    print(format_table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.task}.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out / (args.task + '.json')}")
    figures = write_figures(evaluation, args.out)
    print(f"wrote {len(figures)} figures (ROC, calibration, per speaker for each protocol) to {args.out}")
    return 0


def _live_path_main(args: argparse.Namespace) -> int:
    """``painline evaluate --task T --protocol live-path``: the live-path protocol's table and JSON.

    It trains with the shipped procedure and plays calls through the product, so the options that
    change training or the channel are not offered here.
    """
    from painline.live_path import SPEECH_TASKS, format_table, run_loco, run_protocol

    changed = [
        flag
        for flag, on in (
            ("--cross", args.cross),
            ("--no-rms", args.no_rms),
            ("--gain-db", args.gain_db),
            ("--whole-clips", args.whole_clips),
            ("--classifier", args.classifier != "svm"),
            ("--drop-level-features", args.drop_level_features),
            ("--tasks", args.tasks != TASKS_FILE),
        )
        if on
    ]
    if changed:
        raise SystemExit(f"painline evaluate: {', '.join(changed)} cannot be used with --protocol live-path")
    if args.train and args.protocol != "loco":
        raise SystemExit("painline evaluate: --train is for --protocol loco")
    settings = Settings.from_env()
    if args.data_dir:
        settings = settings.with_(data_dir=args.data_dir)
    if args.protocol == "loco":
        train = args.train or [t for t in SPEECH_TASKS if t != args.task]
        result = run_loco(
            args.task,
            train,
            settings,
            max_speakers=args.max_speakers,
            n_boot=args.boot,
            embedder_name=args.embedder,
            progress=lambda m: print(m, flush=True),
        )
        print(json.dumps({k: v.get("auc") if isinstance(v, dict) else v for k, v in result.items()}, indent=1))
    else:
        result = run_protocol(
            args.task,
            settings,
            max_speakers=args.max_speakers,
            n_boot=args.boot,
            embedder_name=args.embedder,
            progress=lambda m: print(m, flush=True),
        )
        print(format_table(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.task}.{args.protocol}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
    return 0


def train_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="painline train", description="Train the model artifact on whole corpora.")
    p.add_argument("--task", action="append", required=True, help="task(s) to train on (repeatable: pooled)")
    p.add_argument("--out", type=Path, default=Path("painline/models/default.joblib"))
    add_pooling_arguments(p)
    p.add_argument(
        "--loco-threshold",
        action="store_true",
        help="choose the threshold on pooled leave-one-corpus-out predictions (several tasks)",
    )
    p.add_argument(
        "--fold-models", type=Path, help="with --loco-threshold: keep (and reuse) the leave-one-corpus-out fold models"
    )
    _common_args(p)
    args = p.parse_args(argv)
    settings, embedder, channel, cfg = _setup(args)
    parts = [load_task_data(t, embedder, settings, channel, args.tasks, args.max_speakers) for t in args.task]
    extra = [load_task_data(t, embedder, settings, channel, args.tasks, args.max_speakers) for t in args.extra_task]
    pooling = Pooling.from_args(args)
    chosen = None
    if args.loco_threshold:
        if len(parts) < 2:
            raise SystemExit("painline: --loco-threshold needs at least two tasks (one held out at a time)")
        chosen = loco_threshold(parts, embedder, channel, cfg, pooling=pooling, extra=extra, fold_dir=args.fold_models)
    model = fit_pooled(parts, embedder, channel, cfg, pooling, extra)
    if chosen is not None:
        model = with_threshold(model, chosen)
        print(
            f"threshold from pooled leave-one-corpus-out predictions: {chosen.value:.3f}; "
            f"held-out specificity {chosen.specificity}, sensitivity {chosen.sensitivity}"
        )
    model.save(args.out)
    print(f"wrote {args.out} (model {model.version}, threshold {model.threshold:.3f}, blend {model.blend})")
    return 0


# ---------------------------------------------------------------------------------------------------
# figures (``painline evaluate`` and ``python -m bench.detection``)


@dataclass
class Evaluation:
    """One task's protocols: the JSON summary, and the pooled predictions the figures are drawn from.

    The summary alone cannot be plotted (it holds metrics, not per-clip scores), so the figures need
    the :class:`Scored` predictions each protocol pooled.
    """

    result: dict[str, Any]
    scored: dict[str, Scored]


def evaluate_protocols(
    data: TaskData,
    embedder: Embedder,
    channel: ChannelConfig,
    cfg: TrainConfig,
    cross: list[TaskData] | None = None,
    n_boot: int = 1000,
    draws: int = 3,
) -> Evaluation:
    """Every protocol for one task: the JSON-serialisable summary, and each protocol's predictions for the figures."""
    fit = make_fit(data, embedder, channel, cfg)
    started = time.time()
    results: dict[str, Scored] = {"random": random_split(data.X, data.y, data.groups, fit)}
    person, thresholds = person_level(data.X, data.y, data.groups, data.normal, fit, draws=draws)
    results.update(person)
    threshold = float(np.median(thresholds))
    out: dict[str, Any] = {"task": data.task.name, "n_clips": len(data.y), "threshold": threshold}
    if cross:
        model = fit(data.X, data.y, data.groups, data.normal)
        for target in cross:
            for name, scored in cross_corpus(model, target.X, target.y, target.groups, target.normal).items():
                results[f"{name}->{target.task.name}"] = scored
    out["protocols"] = {name: s.summary(threshold, n_boot) for name, s in results.items()}
    if not data.task.is_binary:
        labels = np.array([c.label for c in data.clips])
        out["multiclass_person"] = multiclass_person_level(
            data.X, data.task.class_index(labels), data.groups, list(data.task.classes), n_boot=n_boot
        )
    out["seconds"] = round(time.time() - started, 1)
    return Evaluation(result=out, scored=results)


@dataclass(frozen=True)
class ProtocolFigures:
    """The PNG files drawn for one protocol; ``roc`` is None when its clips hold one class only."""

    roc: Path | None
    calibration: Path
    speakers: Path


FIGURE_KINDS = ("roc", "calibration", "speakers")
"""The file name endings :func:`protocol_figures` writes, ``<stem>-<kind>.png``."""


def figure_stem(task: str, protocol: str) -> str:
    """A file-name-safe ``<task>-<protocol>``: cross-corpus protocols are named ``cross->T``."""
    name = f"{task}-{protocol.replace('->', '-to-')}"
    return "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)


def protocol_figures(
    scored: Scored, out: Path, stem: str, title: str, compare: dict[str, Scored] | None = None
) -> ProtocolFigures | None:
    """ROC, calibration and per-speaker figures of one protocol's pooled predictions, as PNG files.

    ``compare`` adds other protocols' curves to the ROC (the random split beside the person-level
    one shows the speaker gap at a glance). None when the protocol scored nothing.
    """
    from analysis import plots  # matplotlib is loaded only by the commands that draw

    if not scored.y:
        return None
    y, p, g = (np.concatenate(v) for v in (scored.y, scored.p, scored.g))
    curves = {title: (y, p)}
    for name, other in (compare or {}).items():
        if other.y:
            curves[name] = (np.concatenate(other.y), np.concatenate(other.p))
    one_class = np.unique(y).size < 2
    return ProtocolFigures(
        roc=None if one_class else plots.roc_plot(curves, out / f"{stem}-roc.png", title=f"ROC: {title}"),
        calibration=plots.calibration_plot(y, p, out / f"{stem}-calibration.png", title=f"Calibration: {title}"),
        speakers=plots.per_speaker_plot(
            y, p, g, out / f"{stem}-speakers.png", title=f"Mean score per speaker: {title}"
        ),
    )


def write_figures(evaluation: Evaluation, out: Path) -> list[Path]:
    """Every protocol's figures for ``painline evaluate``, named ``<task>-<protocol>-<kind>.png``."""
    task = str(evaluation.result["task"])
    written: list[Path] = []
    for name, scored in evaluation.scored.items():
        figures = protocol_figures(scored, out, figure_stem(task, name), f"{task} {name}")
        if figures is not None:
            written += [f for f in (figures.roc, figures.calibration, figures.speakers) if f is not None]
    return written
