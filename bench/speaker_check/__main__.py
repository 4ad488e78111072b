"""Measure the worker's speaker check on the speech corpora: ``python -m bench.speaker_check``.

Issue 11: the worker withdraws the caller's baseline from any utterance whose speaker similarity to
the voiceprint is below the threshold, and a voice changed by distress is exactly what the baseline
is for. This bench measures how often that happens per label, how often another person is caught,
and two per-call rules the product could use instead.

Each clip goes the deployment's way: ``telephone`` -> ``cut_clip`` with the default ``VadConfig`` ->
one d-vector per utterance from the worker's ``speaker`` embedder. Enrolment embeds whole clips, as
``worker.baselines.enrol`` does. d-vectors are cached under ``.cache/speaker_check/`` (keyed by
corpus, clip path and what produced them), so a re-run only recomputes the statistics.
"""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from analysis.audio import load_audio
from analysis.channel import telephone
from analysis.embedders import Embedder, get_embedder
from analysis.segmentation import VadConfig, cut_clip
from bench.speaker_check.measure import (
    ALT_VOICEPRINT,
    IMPOSTOR_REJECT_TARGET,
    OWN_PASS_TARGET,
    RULES,
    ClipInfo,
    Embeddings,
    evaluate,
    recommend,
)
from painline.config import Settings
from worker.context import DEFAULT_SPEAKER_THRESHOLD

ROOT = Path(__file__).resolve().parents[2]
CORPORA = ("ravdess", "nemo", "ased", "spanish")
OUT = ROOT / "bench" / "results" / "speaker_check.json"
CACHE = ROOT / ".cache" / "speaker_check"
CACHE_VERSION = 1  # bump when the channel, the VAD or the embedder's preprocessing changes
SAVE_EVERY = 200


def read_clips(folder: Path, max_speakers: int | None) -> tuple[list[ClipInfo], list[Path]]:
    """The manifest's clips (first ``max_speakers`` speakers in id order), with sex as ``m``/``f``."""
    with (folder / "manifest.csv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    speakers = sorted({r["speaker_id"] for r in rows})
    if max_speakers is not None:
        keep = set(speakers[:max_speakers])
        rows = [r for r in rows if r["speaker_id"] in keep]
    rows.sort(key=lambda r: (r["speaker_id"], r["path"]))
    clips = [
        ClipInfo(key=r["path"], speaker=r["speaker_id"], label=r["label"], sex=(r.get("sex") or "")[:1].lower() or None)
        for r in rows
    ]
    return clips, [folder / r["path"] for r in rows]


class CachedEmbeddings:
    """d-vectors of one corpus's clips, computed on first use and kept on disk."""

    def __init__(self, corpus: str, paths: Sequence[Path], keys: Sequence[str], embedder: Embedder) -> None:
        self.paths, self.keys, self.embedder = list(paths), list(keys), embedder
        self.vad = VadConfig()
        self.file = CACHE / f"{corpus}-{embedder.name}-v{CACHE_VERSION}.pkl"
        self.store: dict[tuple[str, str], np.ndarray] = {}
        if self.file.exists():
            with self.file.open("rb") as fh:
                self.store = pickle.load(fh)
        self._dirty = 0
        self.computed = 0

    def _audio(self, i: int) -> np.ndarray:
        samples, rate = load_audio(self.paths[i])
        return telephone(samples, rate)

    def utterances(self, i: int) -> np.ndarray:
        """The d-vector of every utterance a call would cut from clip ``i``, as the worker embeds them."""
        key = (self.keys[i], "utterances")
        if key not in self.store:
            pieces = [u.samples for u in cut_clip(self._audio(i), self.vad)]
            self._put(key, self.embedder.embed(pieces) if pieces else np.zeros((0, self.embedder.dim), np.float32))
        return self.store[key]

    def whole_clip(self, i: int) -> np.ndarray:
        """The d-vector of the whole telephone-channel clip: what enrolment folds into the voiceprint."""
        key = (self.keys[i], "whole_clip")
        if key not in self.store:
            self._put(key, self.embedder.embed([self._audio(i)])[0])
        return self.store[key]

    def _put(self, key: tuple[str, str], value: np.ndarray) -> None:
        self.store[key] = np.asarray(value, dtype=np.float32)
        self._dirty += 1
        self.computed += 1
        if self._dirty >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        if not self._dirty:
            return
        CACHE.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(self.store, fh)
        tmp.replace(self.file)
        self._dirty = 0


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def table(results: dict[str, dict[str, Any]], threshold: float) -> str:
    """A markdown table: one row per corpus and rule, own-pass per label, impostor reject, counts."""
    labels = sorted({lab for r in results.values() for lab in r["own_pass_by_label"]})
    head = ["corpus", "rule", *labels, "impostor reject", "n own / impostor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, r in results.items():
        blocks = [("per utterance", r["per_utterance"], "utterances")]
        if ALT_VOICEPRINT in r:
            blocks.append(("per utterance, voiceprint from utterances", r[ALT_VOICEPRINT], "utterances"))
        blocks += [(rule.replace("_", " ") + " (call)", r["per_call"][rule], "calls") for rule in RULES[1:]]
        for title, block, unit in blocks:
            own = block["own_pass_by_label"]
            n_own = sum(block[f"own_{unit}_by_label"].values())
            cells = [
                name,
                f"{title} @ {threshold:.2f}",
                *(_fmt(own.get(lab)) for lab in labels),
                _fmt(block["impostor_reject"]),
                f"{n_own} / {block[f'impostor_{unit}']}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
            at = block[f"at_impostor_reject_{IMPOSTOR_REJECT_TARGET:.2f}"]
            if at["threshold"] is not None:
                own_at = at["own_pass_by_label"]
                cells = [
                    name,
                    f"{title} @ {at['threshold']:.2f}",
                    *(_fmt(own_at.get(lab)) for lab in labels),
                    _fmt(at["impostor_reject"]),
                    "",
                ]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def recommendation_lines(rec: dict[str, Any]) -> str:
    lines = []
    for rule, r in rec.items():
        feasible = r["feasible_thresholds"]
        lines.append(
            f"{rule}: "
            + (
                f"meets both targets at {feasible}"
                if feasible
                else f"no threshold meets both; best {r['best_threshold']:.2f}: worst impostor reject "
                f"{r['worst_impostor_reject']:.3f}, worst own-pass {r['worst_own_pass']:.3f} "
                f"({r['worst_own_pass_at']}), short by {r['own_pass_shortfall']:.3f} own-pass / "
                f"{r['impostor_reject_shortfall']:.3f} reject"
            )
        )
        per = r["per_corpus_at_impostor_reject_target"]
        lines.append(
            "  own threshold per corpus: "
            + "; ".join(
                f"{name} {b['threshold']:.2f} worst {b['worst_label']} {b['worst_own_pass']:.2f}"
                if b["threshold"] is not None
                else f"{name} none"
                for name, b in per.items()
            )
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.speaker_check", description=__doc__.splitlines()[0])
    parser.add_argument("--max-speakers", type=int, default=None, help="first N speakers of each corpus (id order)")
    parser.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=CORPORA)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-impostor-pairs", type=int, default=500_000)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    data_dir = Settings.from_env().data_dir
    if not data_dir.is_absolute():
        data_dir = (ROOT / data_dir).resolve()
    threshold = DEFAULT_SPEAKER_THRESHOLD
    embedder = get_embedder("speaker")
    started = time.time()
    results: dict[str, dict[str, Any]] = {}
    for corpus in args.corpora:
        clips, paths = read_clips(data_dir / corpus, args.max_speakers)
        cache = CachedEmbeddings(corpus, paths, [c.key for c in clips], embedder)
        t0 = time.time()
        for i in range(len(clips)):  # fill the cache with progress, before the statistics
            cache.utterances(i)
            if (i + 1) % SAVE_EVERY == 0:
                print(f"{corpus}: {i + 1}/{len(clips)} clips, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        results[corpus] = evaluate(
            clips,
            Embeddings(cache.utterances, cache.whole_clip),
            threshold,
            seed=args.seed,
            max_impostor_pairs=args.max_impostor_pairs,
        )
        cache.save()
        print(f"{corpus}: done, {cache.computed} new d-vectors, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)

    rec = recommend(results)
    out = {
        "meta": {
            "threshold": threshold,
            "embedder": embedder.name,
            "embedder_detail": "resemblyzer VoiceEncoder (GE2E), CPU, 1 torch thread",
            "git_commit": git_commit(),
            "run_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "platform": platform.platform(),
            "seed": args.seed,
            "max_speakers": args.max_speakers,
            "vad": VadConfig().__dict__,
            "enrolment": "3 neutral clips per speaker, whole clips embedded, voiceprint = worker's "
            "_fold_into_voiceprint (mean d-vector)",
            "targets": {"own_pass": OWN_PASS_TARGET, "impostor_reject": IMPOSTOR_REJECT_TARGET},
            "seconds": round(time.time() - started, 1),
        },
        **results,
        "recommendation": rec,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.out)
    print(table(results, threshold))
    print(recommendation_lines(rec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
