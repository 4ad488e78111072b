"""bench/detection: the full evaluation, written to bench/results/detection.json and docs/detection.md.

    python -m bench.detection            # everything (about an hour on 2 cores)
    python -m bench.detection --quick    # 8 speakers per corpus, 200 bootstrap draws (minutes)
    python -m bench.detection --live-path [--task T ...] [--max-speakers N]   # only the live-path protocol
    python -m bench.detection --loco [--task T ...]   # leave one speech corpus out, on the live path

Runs every protocol for every shipped task, cross-corpus both ways between ravdess-distress and
nemo-distress, the gain-invariance check (test audio scaled by +-12 dB), and each installed
embedder's speed in audio seconds per CPU second on telephone audio. The clip-level run also draws
each task's person-level ROC, calibration and per-speaker figures into ``img/`` beside --doc
(docs/img/detection-<task>-<kind>.png) and links them from the doc.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from analysis.channel import TELEPHONE_RATE
from analysis.embedders import EmbedderUnavailable, get_embedder
from analysis.training import TrainConfig
from painline.config import Settings
from painline.live_path import SPEECH_TASKS
from painline.research import (
    DEFAULT_CHANNEL,
    Evaluation,
    Pooling,
    ProtocolFigures,
    Weighting,
    add_pooling_arguments,
    evaluate_protocols,
    format_table,
    gain_check,
    load_task_data,
    protocol_figures,
)

RESULTS = Path("bench/results/detection.json")
DOC = Path("docs/detection.md")
TASKS = [
    "ravdess-distress",
    "nemo-distress",
    "ased-distress",
    "spanish-distress",
    "nonverbal-distress",
    "donateacry-pain",
    "donateacry-pain-3class",
]
CROSS = {"ravdess-distress": ["nemo-distress"], "nemo-distress": ["ravdess-distress"]}


def gain_invariance(
    settings: Settings, max_speakers: int | None, cfg: TrainConfig, embedder: str = "egemaps"
) -> dict[str, float]:
    """Person-level AUC on ravdess-distress with the test audio at 0, +12 and -12 dB (trained at 0 dB)."""
    check = gain_check("ravdess-distress", get_embedder(embedder), settings, cfg, max_speakers=max_speakers)
    return {
        **{f"auc_{g:+.0f}dB": a for g, a in check.auc.items()},
        "clips": check.clips,
        **{f"clips_without_speech_{g:+.0f}dB": n for g, n in check.lost.items()},
    }


def embedder_speed(seconds_of_audio: float = 60.0) -> dict[str, float | str]:
    """Audio seconds embedded per CPU second, on telephone-channel noise-excited harmonic audio."""
    rng = np.random.default_rng(0)
    t = np.arange(int(2.5 * TELEPHONE_RATE)) / TELEPHONE_RATE
    clip = 0.3 * np.sin(2 * np.pi * 140 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.01 * rng.standard_normal(len(t))
    clips = [clip.astype(np.float32)] * int(seconds_of_audio / 2.5)
    out: dict[str, float | str] = {}
    for name in ("egemaps", "compare", "speaker", "clap", "hear"):
        try:
            emb = get_embedder(name)
            emb.embed(clips[:1])  # load the model outside the timing
            start = time.process_time()
            emb.embed(clips)
            out[name] = round(seconds_of_audio / max(time.process_time() - start, 1e-9), 1)
        except (EmbedderUnavailable, Exception) as exc:
            out[name] = f"unavailable: {str(exc).splitlines()[0][:120]}"
    return out


# the analysis issue's targets: (task, protocol, minimum AUC)
TARGETS = [
    ("ravdess-distress", "baseline_3", 0.85),
    ("nemo-distress", "baseline_3", 0.85),
    ("ravdess-distress", "call_3", 0.95),
    ("nemo-distress", "call_3", 0.95),
    ("ravdess-distress", "cross->nemo-distress", 0.80),
    ("nemo-distress", "cross->ravdess-distress", 0.80),
    ("nonverbal-distress", "person", 0.97),
]


def targets_table(results: dict) -> str:
    """Each target against what this run measured, plus the baseline-never-worse check."""
    by_task = {t["task"]: t["protocols"] for t in results["tasks"]}
    lines = ["| target | measured AUC | met? |", "|---|---|---|"]
    for task, protocol, minimum in TARGETS:
        s = by_task.get(task, {}).get(protocol)
        if s is None or s.get("auc") is None:
            continue
        lines.append(f"| {task} {protocol} >= {minimum} | {s['auc']:.3f} | {'yes' if s['auc'] >= minimum else 'no'} |")
    for task, protocols in by_task.items():
        for k in (1, 3, 5):
            b, n = protocols.get(f"baseline_{k}"), protocols.get(f"person_same_clips_{k}")
            if b and n and b.get("auc") is not None and n.get("auc") is not None:
                ok = "yes" if b["auc"] >= n["auc"] else "no"
                lines.append(
                    f"| {task} baseline_{k} >= no baseline on the same clips | {b['auc']:.3f} vs "
                    f"{n['auc']:.3f} | {ok} |"
                )
    gain = results.get("gain_invariance", {})
    if gain:
        shift = max(abs(v - gain["auc_+0dB"]) for k, v in gain.items() if k.startswith("auc_"))
        lines.append(
            f"| gain +-12 dB moves person-level AUC <= 0.01 | {shift:.4f} | {'yes' if shift <= 0.01 else 'no'} |"
        )
    return "\n".join(lines)


FIGURE_KINDS = {"roc": "ROC", "calibration": "calibration", "speakers": "per speaker"}
"""The figures drawn per task, ``docs/img/detection-<task>-<kind>.png``, and their link text."""


def write_figures(evaluation: Evaluation, img: Path) -> ProtocolFigures | None:
    """The person-level protocol's figures for one task, the random split's ROC beside it.

    Person-level is the row a hotline's new callers get; the random split, drawn on the same ROC
    axes, shows how much of its apparent accuracy came from hearing the speaker in training.
    """
    task = str(evaluation.result["task"])
    return protocol_figures(
        evaluation.scored["person"],
        img,
        f"detection-{task}",
        f"{task}, person-level",
        compare={"random split (speakers leak)": evaluation.scored["random"]},
    )


def figures_table(results: dict, doc: Path) -> str:
    """Links from the doc to each task's figures that exist beside it (``img/``), or '' when none do.

    Read from disk rather than the results JSON, so a run that merged or assembled other tasks'
    rows still links the figures their own runs drew.
    """
    img = doc.parent / "img"
    rows = []
    for task in results["tasks"]:
        names = {kind: f"detection-{task['task']}-{kind}.png" for kind in FIGURE_KINDS}
        links = [
            f"[{text}](img/{names[kind]})" if (img / names[kind]).exists() else "-"
            for kind, text in FIGURE_KINDS.items()
        ]
        if any(link != "-" for link in links):
            rows.append(f"| {task['task']} | " + " | ".join(links) + " |")
    if not rows:
        return ""
    return (
        "\n\nFigures, person-level predictions pooled over the folds (the ROC also draws the random split):\n\n"
        "| task | " + " | ".join(FIGURE_KINDS.values()) + " |\n|---|---|---|---|\n" + "\n".join(rows)
    )


def write_doc(results: dict, doc: Path = DOC) -> None:
    rows = [
        "| task | protocol | AUC [95% CI] | balanced accuracy [95% CI] | sens@90%spec | n |",
        "|---|---|---|---|---|---|",
    ]
    for task in results["tasks"]:
        for name, s in task["protocols"].items():
            if s is None:
                continue
            auc = f"{s['auc']:.3f} [{s['auc_ci'][0]:.3f}, {s['auc_ci'][1]:.3f}]" if s["auc_ci"][0] is not None else "-"
            ba = s["balanced_accuracy_ci"]
            bas = f"{s['balanced_accuracy']:.3f} [{ba[0]:.3f}, {ba[1]:.3f}]" if ba[0] is not None else "-"
            sens = "-" if s["sens_at_90spec"] is None else f"{s['sens_at_90spec']:.3f}"
            rows.append(f"| {task['task']} | {name} | {auc} | {bas} | {sens} | {s['n_clips']} |")
    for task in results["tasks"]:
        mc = task.get("multiclass_person")
        if mc:
            rows.append(
                f"\nMulti-class, person-level ({task['task']}: {' / '.join(mc['classes'])}): macro one-vs-rest AUC "
                f"{mc['macro_auc_ovr']:.3f} [{mc['macro_auc_ovr_ci'][0]:.3f}, {mc['macro_auc_ovr_ci'][1]:.3f}], "
                f"balanced accuracy {mc['balanced_accuracy']:.3f}; confusion (rows true) {mc['confusion']}"
            )
    rows.append("\n" + targets_table(results))
    gain = ", ".join(
        f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}" for k, v in results.get("gain_invariance", {}).items()
    )
    speed = ", ".join(f"{k}: {v}" for k, v in results.get("embedder_speed_audio_s_per_cpu_s", {}).items())
    live = loco_section(results["loco"]) + "\n" if results.get("loco") else ""
    if results.get("live_path"):
        live += live_path_section(results) + "\n"
    kept = kept_sections(doc.read_text()) if doc.exists() else ""
    doc.write_text(
        "# Detection results (generated by `python -m bench.detection`)\n\n"
        + live
        + f"Run {results['run']['finished']} on {results['run']['machine']}; mode {results['run']['mode']}. "
        f"Embedder {results['embedder']['name']} on 8 kHz mu-law telephone audio, each clip cut into the utterances "
        "a call's VAD would cut and each utterance RMS-normalised after decoding, as the worker scores it"
        + (
            f" (except {', '.join(whole)}: measured on whole clips, before training moved to VAD-cut utterances)"
            if (whole := [t["task"] for t in results["tasks"] if not t.get("channel", {}).get("segment")])
            else ""
        )
        + ". "
        "`random` leaks speakers across folds and is shown only to expose the speaker gap; every other row is "
        "person-level (speaker-grouped). CIs: 95%, speaker-grouped bootstrap. `baseline_k`: each test speaker "
        "enrolled from k normal-state clips, which are then not scored; `person_same_clips_k`: the same clips "
        "without the baseline. `call_*`: simulated calls of 4 clips of one speaker in one state. "
        "`cross->T`: trained on the task's corpus, tested on T's corpus with T's own unlabelled population "
        "statistics; `cross_training_population` uses the training corpus's statistics instead.\n\n"
        + "\n".join(rows)
        + figures_table(results, doc)
        + f"\n\nGain invariance (ravdess-distress, person-level, test audio scaled): {gain}\n\n"
        f"Embedder speed, audio seconds per CPU second on telephone audio: {speed}\n" + kept
    )


KEPT = (("<!-- speaker-check", "<!-- /speaker-check -->"), ("<!-- population", "<!-- /population -->"))
"""Sections other benches write into the doc (``bench.speaker_check``, ``bench.population``), kept by a full
rewrite."""


def kept_sections(text: str) -> str:
    kept = ""
    for begin, end in KEPT:
        if begin in text and end in text:
            kept += "\n\n" + begin + text.split(begin, 1)[1].split(end, 1)[0] + end + "\n"
    return kept


LIVE_TASKS = list(SPEECH_TASKS)
LIVE_BEGIN = "<!-- live-path: generated by python -m bench.detection --live-path -->"
LIVE_END = "<!-- /live-path -->"


LIVE_GAIN_TARGET = 0.03  # call of 4: enrolled minus not enrolled, AUC
LIVE_OFFLINE_TOLERANCE = 0.01  # call of 4 enrolled against the clip-level call_3 row


def live_targets_table(results: dict) -> str:
    """The live-path targets of the live-baseline issue against this run, one row per task."""
    clip_level = {t["task"]: t["protocols"] for t in results.get("tasks", [])}
    lines = [
        f"| task | call_4: enrolled - not enrolled (>= +{LIVE_GAIN_TARGET:.2f}) | never negative (call_4, call_8) "
        f"| call_4 enrolled vs clip-level call_3 (within {LIVE_OFFLINE_TOLERANCE:.2f}) |",
        "|---|---|---|---|",
    ]
    for task, result in results["live_path"].items():
        effect = result.get("baseline_effect") or {}
        gain = (effect.get("call_4") or {}).get("auc_difference")
        gain_text = "n/a" if gain is None else f"{gain:+.3f} ({'met' if gain >= LIVE_GAIN_TARGET else 'missed'})"
        worse = [k for k in ("call_4", "call_8") if effect.get(k) and not effect[k]["never_worse"]]
        enrolled = (result["rows"].get("call_4_enrolled") or {}).get("auc")
        call_3 = (clip_level.get(task, {}).get("call_3") or {}).get("auc")
        if enrolled is None or call_3 is None:
            offline = "no clip-level call_3 row"
        else:
            gap = enrolled - call_3
            verdict = "met" if abs(gap) <= LIVE_OFFLINE_TOLERANCE else "missed"
            offline = f"{enrolled:.3f} vs {call_3:.3f} ({gap:+.3f}, {verdict})"
        lines.append(f"| {task} | {gain_text} | {'no: ' + ', '.join(worse) if worse else 'yes'} | {offline} |")
    return "\n".join(lines)


def live_path_section(results: dict) -> str:
    """The "Live path" section of the doc, from ``detection.json``'s ``live_path`` key (and ``tasks``)."""
    from painline.live_path import markdown_table

    live = results["live_path"]

    return (
        f"{LIVE_BEGIN}\n## Live path\n\n"
        "What a deployment does with a call, measured: held-out speakers' clips (person-level, 5 speaker-grouped "
        "folds, a model trained per fold with the shipped procedure) joined into calls of 4 and 8 clips of one "
        "speaker in one label with 0.7 s of silence, sent as 8 kHz mu-law Twilio media messages through "
        "`StreamSession` (message parsing, jitter buffer, VAD), each utterance scored by "
        "`worker.jobs.score_utterance` (speaker check, running population statistics, baseline) and the call "
        "finalised by `finalise_call`, on a throwaway database (`painline.live_path`). Every call is played "
        "twice, into two otherwise identical deployments: in one the speaker was enrolled with "
        "`worker.baselines.enrol` from 3 of their normal-state clips (never played in a call), in the other nobody "
        "was. Before the first call both deployments' population statistics are seeded, as a hotline seeds them "
        "before go-live (`painline population seed`), from the fold's other speakers' clips, unlabelled; they then "
        "accumulate over the fold's calls in both. `call_n_*`: the finalised call "
        "score; `utterance_*`: every utterance of the 4-clip calls. sens/spec: at each fold model's own "
        "threshold; balanced accuracy at their median. CIs: 95%, speaker-grouped bootstrap. The last column "
        "scores the very same calls the way the clip-level rows below do (each clip's features as the VAD cuts it, "
        "the training population, a baseline from the enrolment clips' features, no speaker check): "
        "where the two disagree, the live-path number is what callers get.\n\n"
        + markdown_table(live)
        + "\n\nTargets:\n\n"
        + live_targets_table(results)
        + f"\n{LIVE_END}\n"
    )


def _place(text: str, begin: str, end: str, section: str, after: str | None) -> str:
    """``text`` with the block ``begin``..``end`` replaced by ``section``, or inserted after the
    block that ends with ``after`` (or below the title when there is none)."""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head.rstrip("\n") + "\n\n" + rest.split(end, 1)[1].lstrip("\n")
    if after is not None and after in text:
        head, rest = text.split(after, 1)
        return head + after + "\n\n" + section + "\n" + rest.lstrip("\n")
    title, _, body = text.partition("\n")
    return title + "\n\n" + section + "\n" + body.lstrip("\n")


def write_live_path_doc(results: dict, doc: Path = DOC) -> None:
    """Put the section after the leave-one-corpus-out one (the headline), replacing an earlier one."""
    text = doc.read_text() if doc.exists() else "# Detection results\n"
    doc.write_text(_place(text, LIVE_BEGIN, LIVE_END, live_path_section(results), LOCO_END))


def run_live_path(
    tasks: list[str], max_speakers: int | None, n_boot: int, out: Path, doc: Path, seed_population: bool = True
) -> int:
    """Run the live-path protocol and replace only its tasks under the ``live_path`` key of ``out`` (and the
    doc's section). Unseeded runs (``--unseeded``, for comparison) go under ``live_path_unseeded`` only."""
    from painline.live_path import format_table, run_protocol

    settings = Settings.from_env()
    key = "live_path" if seed_population else "live_path_unseeded"
    live: dict = {}
    for task in tasks:
        result = run_protocol(
            task,
            settings,
            max_speakers=max_speakers,
            n_boot=n_boot,
            seed_population=seed_population,
            progress=lambda m: print(m, flush=True),
        )
        result["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(format_table(result), flush=True)
        live[task] = result
    results = json.loads(out.read_text()) if out.exists() else {}
    results[key] = {**results.get(key, {}), **live}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote the {key} key of {out}")
    if not seed_population:
        return 0
    write_live_path_doc(results, doc)
    print(f"wrote the live-path table in {doc}")
    if max_speakers is None:
        card = write_card_figures(settings.model_path, results["live_path"])
        print(
            f"live-path figures written into the model card {card}"
            if card
            else "the shipped model was not trained as the live path's fold models are: its card is left alone"
        )
    return 0


LOCO_BEGIN = "<!-- loco: generated by python -m bench.detection --loco -->"
LOCO_END = "<!-- /loco -->"


LOCO_TARGETS = {"call_8_baseline_3": 0.90, "baseline_3": 0.80}
"""The four-languages issue's targets for the leave-one-corpus-out rows."""


def loco_section(loco: dict) -> str:
    """The leave-one-corpus-out section of the doc, from ``detection.json``'s ``loco`` key."""
    from painline.live_path import LOCO_ROWS
    from painline.research import fmt, fmt_ci

    lines = [
        "| test corpus | trained on | " + " | ".join(LOCO_ROWS) + " | speakers |",
        "|---" * (len(LOCO_ROWS) + 3) + "|",
    ]
    for task, r in loco.items():
        cells = [f"{fmt(r[k]['auc'])} {fmt_ci(r[k]['auc_ci'])}" if r.get(k) else "n/a" for k in LOCO_ROWS]
        trained = " + ".join([*r["trained_on"], *(f"{t} (never held out)" for t in r.get("extra_tasks", []))])
        lines.append(f"| {task} | {trained} | " + " | ".join(cells) + f" | {r['n_speakers']} |")
    lines.append("")
    poolings = {
        Pooling(bool(r.get("aligned")), Weighting(r.get("weighting", Weighting.CLIPS.value))) for r in loco.values()
    }
    if len(poolings) == 1 and (pooling := poolings.pop()) != Pooling():
        lines += [f"Each fold model pools its training corpora as `painline train{pooling.flags()}` does.", ""]
    for row, target in LOCO_TARGETS.items():
        got = {task.split("-")[0]: r[row]["auc"] for task, r in loco.items() if r.get(row)}
        missed = [f"{name} {auc:.3f} (by {target - auc:.3f})" for name, auc in got.items() if auc < target]
        met = [name for name, auc in got.items() if auc >= target]
        lines.append(
            f"Target `{row}` >= {target:.2f} on every corpus: "
            + (f"met on {', '.join(met)}; " if met else "")
            + (f"missed on {', '.join(missed)}." if missed else "met on all.")
        )
        lines.append("")
    return (
        f"{LOCO_BEGIN}\n## Leave one corpus out, on the live path\n\n"
        "Each speech corpus in turn is a hotline whose callers speak a language the model never heard: one model "
        "is trained on the other three with the shipped procedure (C, blend and threshold from grouped inner CV "
        "over the training speakers only) and deployed; the test corpus's speakers are split in two halves, each "
        "half's deployments seeded with the other half's clips (unlabelled, as `painline population seed` would) "
        "and that half's calls played through the live path"
        " (described in the next section). `population`: utterances, nobody enrolled; "
        "`baseline_3`: utterances, the caller enrolled from 3 normal clips; `call_n_*`: finalised calls of n clips. "
        "AUC [95% CI, speaker-grouped bootstrap].\n\n" + "\n".join(lines).rstrip("\n") + f"\n{LOCO_END}\n"
    )


def run_loco(
    tasks: list[str],
    max_speakers: int | None,
    n_boot: int,
    out: Path,
    doc: Path,
    *,
    embedder: str = "egemaps",
    pooling: Pooling | None = None,
    extra_tasks: Sequence[str] = (),
    fold_dir: Path | None = None,
) -> int:
    """Leave each of ``tasks`` out in turn (trained on the others and ``extra_tasks``); replace those
    tasks under ``loco``. ``fold_dir`` shares the fold models with ``painline train --fold-models``."""
    from painline.live_path import run_loco as loco_protocol

    settings = Settings.from_env()
    loco = {}
    for task in tasks:
        others = [t for t in LIVE_TASKS if t != task]
        loco[task] = loco_protocol(
            task,
            others,
            settings,
            max_speakers=max_speakers,
            n_boot=n_boot,
            embedder_name=embedder,
            pooling=pooling,
            extra_tasks=extra_tasks,
            fold_dir=fold_dir,
            progress=lambda m: print(m, flush=True),
        )
        loco[task]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(json.dumps({k: v.get("auc") if isinstance(v, dict) else v for k, v in loco[task].items()}), flush=True)
    results = json.loads(out.read_text()) if out.exists() else {}
    results["loco"] = {**results.get("loco", {}), **loco}
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_loco_doc(results["loco"], doc)
    print(f"wrote the loco key of {out} and its section in {doc}")
    if max_speakers is None:
        card = write_card_loco(settings.model_path, results["loco"])
        print(
            f"LOCO figures written into the model card {card}"
            if card
            else "the shipped model was not trained as the LOCO fold models are: its card is left alone"
        )
    return 0


def write_card_loco(model_path: Path, loco: dict) -> Path | None:
    """Put the per-language LOCO figures into the shipped model's card when they measure its procedure.

    They do when the shipped model was trained on the LOCO corpora (and the same extra, non-speech
    tasks) with the same embedder and pooling: each fold model is then this model's procedure with
    one language held out.
    """
    from analysis.model import PainModel, card_path
    from painline.live_path import LOCO_ROWS

    model = PainModel.load(model_path)
    training_data = model.card.get("training_data", {})
    trained = {c["corpus"] for c in training_data.get("corpora", [])}
    extra = list(training_data.get("extra_tasks", []))
    pooling = Pooling.from_card(training_data)
    runs = {
        task: r
        for task, r in loco.items()
        if r.get("embedder", "egemaps") == model.embedder_name
        and Pooling(bool(r.get("aligned")), Weighting(r.get("weighting", Weighting.CLIPS.value))) == pooling
        and list(r.get("extra_tasks", [])) == extra
        and r.get("mode") == "full"
    }
    if not runs or {t.split("-")[0] for t in [*runs, *extra]} != trained:
        return None
    keep = ("auc", "auc_ci", "sensitivity", "specificity", "n_clips", "n_speakers")
    model.card.setdefault("metrics", {})["leave_one_corpus_out"] = {
        "protocol": "live path, one corpus (language) held out at a time: a model trained with this model's "
        "procedure on the other corpora, the held-out corpus's population seeded from its other "
        "half of speakers, callers enrolled from 3 normal clips; CIs 95% speaker-grouped",
        "corpora": {
            task.split("-")[0]: {row: {k: r[row][k] for k in keep if k in r[row]} for row in LOCO_ROWS if r.get(row)}
            for task, r in runs.items()
        },
    }
    model.save(model_path)
    return card_path(model_path)


def write_loco_doc(loco: dict, doc: Path = DOC) -> None:
    """Put the LOCO section right below the title: it is the headline (callers in unheard languages)."""
    text = doc.read_text() if doc.exists() else "# Detection results\n"
    doc.write_text(_place(text, LOCO_BEGIN, LOCO_END, loco_section(loco), None))


def write_card_figures(model_path: Path, live: dict) -> Path | None:
    """Put the live-path figures into the shipped model's card, where the procedure they measure is its own.

    The live path trains one model per fold with the shipped procedure on the same channel, so its
    figures describe how that procedure does on callers it never heard: what the card should say.
    A model trained otherwise (whole clips, another classifier) gets nothing rather than borrowed numbers.
    """
    from analysis.model import PainModel, card_path

    model = PainModel.load(model_path)
    channel = model.card.get("channel", {})
    if not channel.get("segment") or model.card.get("training", {}).get("classifier") != TrainConfig().classifier:
        return None
    figures = {}
    for task, result in live.items():
        rows = {
            name: {k: row[k] for k in ("auc", "auc_ci", "sensitivity", "specificity", "n_clips", "n_speakers")}
            for name, row in result["rows"].items()
            if row is not None and name.startswith("call_")
        }
        figures[task] = {
            "mode": result["mode"],
            "folds": result["folds"],
            "finished": result.get("finished"),
            "rows": rows,
            "baseline_effect": result.get("baseline_effect"),
        }
    model.card.setdefault("metrics", {})["live_path"] = {
        "protocol": "live path (painline.live_path): held-out speakers' calls through StreamSession, the VAD and "
        "the worker's scoring, person-level folds, each fold trained with this model's procedure on "
        "that corpus alone; sens/spec at each fold model's threshold; CIs 95% speaker-grouped",
        "tasks": figures,
    }
    model.save(model_path)
    return card_path(model_path)


def assemble(parts: list[Path], out: Path, doc: Path) -> int:
    """Merge partial runs (e.g. one process per task on a multi-core machine) into one result."""
    results: dict = {"run": {}, "tasks": []}
    for part in parts:
        data = json.loads(part.read_text())
        results["run"] = {**data["run"], **results["run"]}
        results["tasks"].extend(data["tasks"])
        for key in ("embedder", "gain_invariance", "embedder_speed_audio_s_per_cpu_s"):
            if key in data:
                results[key] = data[key]
    order = {name: i for i, name in enumerate(TASKS)}
    results["tasks"].sort(key=lambda t: order.get(t["task"], len(order)))
    results["run"]["assembled_from"] = [p.name for p in parts]
    out.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results, doc)
    print(f"wrote {out} and {doc}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.detection")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--tasks", nargs="*", default=TASKS)
    p.add_argument("--embedder", default="egemaps", help="embedder for every protocol (default egemaps)")
    p.add_argument("--out", type=Path, default=RESULTS, help="results JSON (default bench/results/detection.json)")
    p.add_argument("--doc", type=Path, default=DOC, help="markdown table (default docs/detection.md)")
    p.add_argument("--skip-speed", action="store_true", help="do not measure embedder speed")
    p.add_argument("--skip-gain", action="store_true", help="do not run the gain-invariance check")
    p.add_argument("--merge", action="store_true", help="replace only these tasks' rows in --out")
    p.add_argument("--assemble", nargs="+", type=Path, help="combine partial result files (run in parallel) into --out")
    p.add_argument(
        "--live-path",
        action="store_true",
        help="run only the live-path protocol (painline.live_path) for --task, default both distress tasks",
    )
    p.add_argument(
        "--loco",
        action="store_true",
        help="run only leave-one-corpus-out on the live path: each --task (default the four speech "
        "corpora) tested, trained on the other three",
    )
    p.add_argument("--task", action="append", help="with --live-path or --loco: a task to run (repeatable)")
    add_pooling_arguments(p, when="with --loco: ")
    p.add_argument(
        "--unseeded",
        action="store_true",
        help="with --live-path: no population seeding before the first call (kept apart, for comparison)",
    )
    p.add_argument(
        "--fold-models",
        type=Path,
        help="with --loco: keep (and reuse) the fold models in DIR, shared with painline train --fold-models",
    )
    p.add_argument("--max-speakers", type=int, help="use only the first N speakers of each corpus (quick runs)")
    args = p.parse_args()
    if args.live_path:
        return run_live_path(
            args.task or LIVE_TASKS,
            args.max_speakers,
            200 if args.quick else 1000,
            args.out,
            args.doc,
            seed_population=not args.unseeded,
        )
    if args.loco:
        return run_loco(
            args.task or LIVE_TASKS,
            args.max_speakers,
            200 if args.quick else 1000,
            args.out,
            args.doc,
            embedder=args.embedder,
            pooling=Pooling.from_args(args),
            extra_tasks=args.extra_task,
            fold_dir=args.fold_models,
        )
    if args.assemble:
        return assemble(args.assemble, args.out, args.doc)
    settings = Settings.from_env()
    max_speakers = 8 if args.quick else None
    n_boot = 200 if args.quick else 1000
    cfg = TrainConfig()
    emb = get_embedder(args.embedder)
    results: dict = {
        "run": {"mode": "quick" if args.quick else "full", "machine": platform.platform()},
        "tasks": [],
    }
    for task in args.tasks:
        data = load_task_data(task, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers)
        cross = [
            load_task_data(t, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers) for t in CROSS.get(task, [])
        ]
        evaluation = evaluate_protocols(data, emb, DEFAULT_CHANNEL, cfg, cross, n_boot=n_boot)
        write_figures(evaluation, args.doc.parent / "img")
        res = evaluation.result
        res["channel"] = DEFAULT_CHANNEL.card()
        print(format_table(res), flush=True)
        results["tasks"].append(res)
    results["embedder"] = emb.describe()
    if not args.skip_gain:
        results["gain_invariance"] = gain_invariance(settings, max_speakers, cfg, args.embedder)
    if not args.skip_speed:
        results["embedder_speed_audio_s_per_cpu_s"] = embedder_speed()
    print("gain invariance:", results.get("gain_invariance"), flush=True)
    print("embedder speed:", results.get("embedder_speed_audio_s_per_cpu_s"), flush=True)
    results["run"]["finished"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        # the live-path and LOCO protocols run on their own (--live-path, --loco): keep their last results
        for key in ("live_path", "live_path_unseeded", "loco"):
            if key in previous:
                results[key] = previous[key]
        if args.merge:  # keep the other tasks' rows and whatever this run skipped
            done = {t["task"] for t in results["tasks"]}
            order = {name: i for i, name in enumerate(TASKS)}
            kept = [t for t in previous.get("tasks", []) if t["task"] not in done]
            results["tasks"] = sorted(kept + results["tasks"], key=lambda t: order.get(t["task"], len(order)))
            for key in ("gain_invariance", "embedder_speed_audio_s_per_cpu_s"):
                if key not in results and key in previous:
                    results[key] = previous[key]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    write_doc(results, args.doc)
    print(f"wrote {args.out} and {args.doc}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
