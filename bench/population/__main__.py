"""``python -m bench.population``: the live-population replay on corpora the shipped model never heard.

Writes ``bench/results/population.json`` and the marked population section of ``docs/detection.md``.
Features come from the worker's own context and featurizer (``painline.workers.build_context``,
``worker.featurize.featurize``) on the utterances a call would cut from each clip, so the replay
measures what a deployment would score; they are cached under ``.cache/population/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from analysis.audio import load_audio
from analysis.channel import telephone
from analysis.dataset import load_manifest
from analysis.model import POPULATION_PRIOR_N, PainModel
from analysis.segmentation import cut_clip
from analysis.tasks import bind, load_tasks
from bench.population.simulate import (
    OLD_RULE_MIN_N,
    WINDOWS,
    call_specificity,
    overall_rates,
    replay,
    score_old,
    score_shrunk,
    spread,
    summarise,
    window_rates,
)
from painline.config import Settings
from painline.research import TASKS_FILE
from painline.workers import build_context
from worker.context import WorkerContext
from worker.featurize import featurize

RESULTS = Path("bench/results/population.json")
DOC = Path("docs/detection.md")
CACHE = Path(".cache/population")
BEGIN = "<!-- population: python -m bench.population; numbers in bench/results/population.json -->"
END = "<!-- /population -->"
CORPUS_TASKS = {"ased": "ased-distress", "spanish": "spanish-distress"}
CONDITIONS = ("unseeded", "seeded", "old_rule")
TARGET_SPECIFICITY = 0.90
TARGET_POINTS = 5.0
BATCH_CLIPS = 100
CACHE_FORMAT = 2
CALL_UTTERANCES = 4


def corpus_utterances(
    ctx: WorkerContext, corpus: str, settings: Settings, max_speakers: int | None
) -> dict[str, np.ndarray]:
    """Every task clip of ``corpus`` on the line, cut as a call cuts it, featurized as the worker does.

    Returns per utterance the feature row, pain label, speaker, clip index and voiced seconds. Cached by
    manifest, model (embedder and channel), VAD settings and speaker limit, since featurizing is the slow part.
    """
    task = load_tasks(TASKS_FILE)[CORPUS_TASKS[corpus]]
    ds = load_manifest(settings.data_dir / task.corpus, name=task.corpus)
    task = bind(task, ds)
    keep = task.select(ds)
    if max_speakers:
        chosen = list(dict.fromkeys(ds.speakers[keep].tolist()))[:max_speakers]
        keep &= np.isin(ds.speakers, chosen)
    clips = [c for c, k in zip(ds.clips, keep, strict=True) if k]
    key = hashlib.sha1(
        json.dumps(
            [
                CACHE_FORMAT,
                ds.manifest_sha256,
                task.name,
                ctx.model.embedder_name,
                ctx.model.dim,
                ctx.model.rms_normalise,
                asdict(ctx.vad),
                max_speakers or 0,
            ]
        ).encode()
    ).hexdigest()[:16]
    path = CACHE / f"{corpus}-{key}.npz"
    if path.exists():
        with np.load(path) as blob:
            return {k: blob[k] for k in blob.files}
    rows: list[np.ndarray] = []
    pain: list[int] = []
    speakers: list[str] = []
    clip_index: list[int] = []
    speech_s: list[float] = []
    started = time.time()
    for b in range(0, len(clips), BATCH_CLIPS):
        batch_audio: list[np.ndarray] = []
        for i, clip in enumerate(clips[b : b + BATCH_CLIPS], start=b):
            x, sr = load_audio(clip.path)
            for u in cut_clip(telephone(x, sr), ctx.vad):
                batch_audio.append(u.samples)
                pain.append(int(task.pain(np.array([clip.label]))[0]))
                speakers.append(clip.speaker_id)
                clip_index.append(i)
                speech_s.append(u.speech_s)
        if batch_audio:
            rows.append(featurize(ctx, batch_audio).features)
        print(
            f"  {corpus}: {min(b + BATCH_CLIPS, len(clips))}/{len(clips)} clips, {len(pain)} utterances, "
            f"{time.time() - started:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    data: dict[str, np.ndarray] = {
        "X": np.vstack(rows).astype(np.float64),
        "pain": np.asarray(pain, dtype=np.int8),
        "speakers": np.asarray(speakers),
        "clip_index": np.asarray(clip_index),
        "speech_s": np.asarray(speech_s),
        "n_clips": np.asarray(len(clips)),
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)  # type: ignore[arg-type]  # the stub types **kwds like allow_pickle
    return data


def run_corpus(model: PainModel, data: dict[str, np.ndarray], orders: int) -> dict[str, Any]:
    """The three conditions over ``orders`` seeded arrival orders, plus fixed-population references.

    Seeding uses a fresh random half of the speakers per order (grouped, so no seeding speaker is
    ever scored), which puts the split's own variability into the spread as well.
    """
    X, pain, speakers, speech = data["X"], data["pain"].astype(bool), data["speakers"], data["speech_s"]
    thr = model.threshold
    runs: dict[str, list[Any]] = {c: [] for c in CONDITIONS}
    overall: dict[str, list[dict[str, float | None]]] = {c: [] for c in CONDITIONS}
    calls: dict[str, list[dict[str, Any]]] = {c: [] for c in CONDITIONS}
    seeded_sizes: list[int] = []
    for seed in range(orders):
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(X))
        names = rng.permutation(np.unique(speakers))
        seeders = set(names[: len(names) // 2].tolist())
        is_seed = np.array([s in seeders for s in speakers])
        live_order = rng.permutation(np.flatnonzero(~is_seed))
        seeded_sizes.append(int(is_seed.sum()))
        plans = {
            "unseeded": (order, None, score_shrunk),
            "seeded": (live_order, X[is_seed], score_shrunk),
            "old_rule": (order, None, score_old),
        }
        for cond, (ordr, seed_rows, scorer) in plans.items():
            probs = replay(model, X, ordr.tolist(), seed_rows=seed_rows, scorer=scorer)
            runs[cond].append(window_rates(probs, pain[ordr], thr))
            overall[cond].append(overall_rates(probs, pain[ordr], thr))
            calls[cond].append(
                call_specificity(probs, pain[ordr], speakers[ordr], speech[ordr], thr, per_call=CALL_UTTERANCES)
            )
    from analysis.baseline import RunningStats

    references = {
        "training_population": overall_rates(model.predict_proba(X), pain, thr),
        "whole_corpus_population": overall_rates(
            model.predict_proba(X, population=RunningStats.from_array(X)), pain, thr
        ),
    }
    return {
        "n_utterances": len(X),
        "n_negative": int((~pain).sum()),
        "n_positive": int(pain.sum()),
        "n_speakers": len(np.unique(speakers)),
        "n_clips": int(data["n_clips"]),
        "clips_without_utterance": int(data["n_clips"]) - len(np.unique(data["clip_index"])),
        "seed_utterances": spread(seeded_sizes),
        "conditions": {
            c: {
                "windows": summarise(runs[c]),
                "overall": {k: spread([o[k] for o in overall[c]]) for k in ("specificity", "sensitivity")},
                "calls": {
                    "utterances_per_call": CALL_UTTERANCES,
                    "n_calls": spread([x["calls"] for x in calls[c]]),
                    "specificity": spread([x["specificity"] for x in calls[c]]),
                },
            }
            for c in CONDITIONS
        },
        "references": references,
    }


def _pct(s: dict[str, Any]) -> str:
    """A spread as 'mean ± sd' in percent, or '-'."""
    if s["mean"] is None:
        return "-"
    return f"{100 * s['mean']:.1f} ± {100 * s['sd']:.1f}"


def markdown(result: dict[str, Any]) -> str:
    """The docs section: one table per corpus, then the conclusion against the target."""
    meta = result["meta"]
    lines = [
        BEGIN,
        "## Specificity as the live population grows",
        "",
        f"The shipped model ({meta['model_version']}, threshold {meta['threshold']:.3f}, chosen for 90% specificity "
        f"on ravdess+nemo) replayed on corpora it was not trained on: every task clip through the telephone "
        f"channel, cut by the call VAD and featurized by the worker's own code; the utterances arrive in a "
        f"seeded random order, unlabelled, each scored against the population statistics as they stood and "
        f"then folded in. Conditions: *unseeded* (training population shrunk toward the live one, prior "
        f"weight {meta['population_prior_n']} utterances), *seeded* (half the speakers folded in before go-live "
        f"and never scored; the other half arrive), *old rule* (training population until "
        f"{meta['old_rule_min_n']} utterances, then the live one alone). Specificity / sensitivity at the "
        f"threshold in percent, mean ± sd over {meta['orders']} orders (and speaker splits for seeded). The seeding "
        f"half holds pain and no-pain clips alike, as a hotline's recordings would. The calls row: a no-pain "
        f"call is {CALL_UTTERANCES} successive no-pain arrivals of one speaker, scored by the call rule "
        f"(speech-weighted log-odds, ``analysis.aggregate``) at the same threshold.",
        "",
    ]
    for corpus, r in result["corpora"].items():
        c = r["conditions"]
        lines += [
            f"**{corpus}** ({r['n_utterances']} utterances from {r['n_clips']} clips, {r['n_speakers']} speakers; "
            f"seeded: about {r['seed_utterances']['mean']:.0f} utterances folded in before go-live)",
            "",
            "| arrivals | unseeded spec | seeded spec | old rule spec | unseeded sens | seeded sens | old rule sens |",
            "|---|---|---|---|---|---|---|",
        ]
        n_rows = max(len(c[k]["windows"]) for k in CONDITIONS)
        for i in range(n_rows):
            cells = [next(c[k]["windows"][i]["window"] for k in CONDITIONS if len(c[k]["windows"]) > i)]
            for metric in ("specificity", "sensitivity"):
                for k in CONDITIONS:
                    w = c[k]["windows"]
                    cells.append(_pct(w[i][metric]) if i < len(w) else "")
            lines.append("| " + " | ".join(cells) + " |")
        cells = ["all"] + [_pct(c[k]["overall"][m]) for m in ("specificity", "sensitivity") for k in CONDITIONS]
        lines.append("| " + " | ".join(cells) + " |")
        calls = [_pct(c[k]["calls"]["specificity"]) for k in CONDITIONS]
        lines.append(f"| calls of {CALL_UTTERANCES} no-pain utterances | " + " | ".join(calls) + " | | | |")
        ref = r["references"]
        lines += [
            "",
            f"Fixed-population references (all {r['n_utterances']} utterances): training population only "
            f"{100 * ref['training_population']['specificity']:.1f} / "
            f"{100 * ref['training_population']['sensitivity']:.1f}; the whole corpus's own statistics "
            f"{100 * ref['whole_corpus_population']['specificity']:.1f} / "
            f"{100 * ref['whole_corpus_population']['sensitivity']:.1f}.",
            "",
        ]
    lines += [result["conclusion"], END]
    return "\n".join(lines) + "\n"


def _mean(s: dict[str, Any]) -> float:
    """A spread's mean in percent."""
    return 100 * float(s["mean"])


def conclusion(result: dict[str, Any]) -> str:
    """The paragraph stating the target's verdict per corpus and the early-window comparison.

    Generated from the numbers so the prose cannot drift from the table when the bench is re-run.
    """
    verdicts: list[str] = []
    ceilings: list[str] = []
    early: list[str] = []
    for corpus, r in result["corpora"].items():
        seeded = r["conditions"]["seeded"]
        s = seeded["overall"]["specificity"]
        gap = _mean(s) - 100 * TARGET_SPECIFICITY
        ok = abs(gap) <= TARGET_POINTS
        windows = [_mean(w["specificity"]) for w in seeded["windows"]]
        low = 100 * s["min"]
        split_note = f"the {s['n_orders']} speaker splits range {low:.1f}-{100 * s['max']:.1f}%" + (
            ""
            if abs(low - 100 * TARGET_SPECIFICITY) <= TARGET_POINTS
            else f", the lowest {abs(low - 100 * TARGET_SPECIFICITY) - TARGET_POINTS:.1f} points outside the band"
        )
        verdicts.append(
            f"{corpus} {_mean(s):.1f}% ({gap:+.1f} points; "
            + ("within" if ok else f"NOT within, {abs(gap) - TARGET_POINTS:.1f} points beyond")
            + f"; window means {min(windows):.1f}-{max(windows):.1f}%, {split_note})"
        )
        whole = 100 * r["references"]["whole_corpus_population"]["specificity"]
        ceilings.append(f"{corpus} {whole:.1f}%")
        pairs = []
        for new_w, old_w in zip(
            r["conditions"]["unseeded"]["windows"][:3], r["conditions"]["old_rule"]["windows"][:3], strict=True
        ):
            pairs.append(f"{new_w['window']} {_mean(new_w['specificity']):.1f} vs {_mean(old_w['specificity']):.1f}")
        early.append(f"{corpus} " + ", ".join(pairs))
    return (
        "**Against the target** (specificity at the threshold within 5 points of 90% on every corpus once the "
        "population is seeded), over all scored arrivals: " + "; ".join(verdicts) + ". "
        "With the corpus's own complete statistics (what every rule converges to as the population grows) "
        "specificity is " + ", ".join(ceilings) + ": what is left below 90% there is the model's transfer "
        "to that corpus, not the population statistics. **No-cliff vs old rule**, unseeded, specificity in the "
        "first windows (no-cliff vs old): " + "; ".join(early) + ". Each of these windows holds only about "
        "20-40 no-pain utterances, so a few points either way is counting noise (see the spread). Before 50 "
        "utterances the old rule stays on the training scale while shrinkage has started to move; after 50 "
        "the old rule uses the live statistics alone while shrinkage, with a prior worth "
        f"{result['meta']['population_prior_n']} utterances, is still about half on the training scale, so "
        "the no-cliff rule removes the jump but adapts more slowly."
    )


def write_doc(section: str, doc: Path = DOC) -> None:
    """Replace the marked section if present, else append it; the rest of the file is left byte for byte."""
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + section.rstrip("\n") + tail
    else:
        text = text + ("" if text.endswith("\n") or not text else "\n") + "\n" + section
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Featurize (or read from cache) each corpus, replay every condition, write JSON and the doc."""
    p = argparse.ArgumentParser(prog="python -m bench.population", description=__doc__)
    p.add_argument("--corpus", action="append", choices=sorted(CORPUS_TASKS), help="repeatable; default: all")
    p.add_argument("--max-speakers", type=int, help="only the first N speakers of each corpus (quick runs)")
    p.add_argument("--orders", type=int, default=5, help="seeded arrival orders per condition")
    p.add_argument("--no-doc", action="store_true", help="do not touch docs/detection.md")
    args = p.parse_args(argv)
    settings = Settings.from_env()
    ctx = build_context(settings, None, speaker=False)
    model = ctx.model
    started = time.time()
    corpora: dict[str, Any] = {}
    for corpus in args.corpus or sorted(CORPUS_TASKS):
        data = corpus_utterances(ctx, corpus, settings, args.max_speakers)
        corpora[corpus] = run_corpus(model, data, args.orders)
        print(f"{corpus}: done at {time.time() - started:.0f} s", file=sys.stderr, flush=True)
    result: dict[str, Any] = {
        "meta": {
            "model_version": model.version,
            "threshold": model.threshold,
            "trained_on": sorted(model.card.get("label_mapping", {})),
            "population_prior_n": POPULATION_PRIOR_N,
            "old_rule_min_n": OLD_RULE_MIN_N,
            "orders": args.orders,
            "max_speakers": args.max_speakers,
            "windows": [list(w) for w in WINDOWS],
            "target": {"specificity": TARGET_SPECIFICITY, "points": TARGET_POINTS},
            "python": platform.python_version(),
            "seconds": round(time.time() - started, 1),
        },
        "corpora": corpora,
    }
    result["conclusion"] = conclusion(result)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if not args.no_doc:
        write_doc(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
