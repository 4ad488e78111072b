"""The speaker-check measurement on embeddings: no audio, no corpus, so a test can feed it vectors.

Everything that decides a number is taken from the product rather than re-implemented, so the bench
measures the check a deployment runs and not a look-alike:

- the voiceprint is :func:`worker.baselines._fold_into_voiceprint` applied to the enrolment d-vectors
  (on a transient ``Voiceprint`` row that never touches a database);
- similarity is :func:`analysis.embedders.speaker.cosine_similarity`, the one ``_speaker_similarity``
  uses, and the keep/withdraw decision is :func:`worker.baselines.speaker_passes`;
- bench calls are :func:`analysis.protocols._calls`: a speaker's clips of one label, seeded shuffle,
  consecutive disjoint groups, as the detection bench builds its ``call_k`` protocol.

The embedding functions are injected (:class:`Embeddings`) so the caller decides how audio becomes
d-vectors (and caches them), and a test can hand in constructed vectors.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from sqlalchemy.orm import Session

from analysis.embedders.speaker import cosine_similarity, pooled_similarity
from analysis.protocols import _calls
from schema.models import Voiceprint
from worker.baselines import _fold_into_voiceprint, speaker_passes
from worker.rows import from_bytes, to_bytes

ENROL_CLIPS = 3
ENROL_LABEL = "neutral"
CALL_CLIPS = 4
IMPOSTOR_REJECT_TARGET = 0.90
OWN_PASS_TARGET = 0.95
SWEEP = tuple(round(0.50 + 0.01 * i, 2) for i in range(46))  # 0.50 .. 0.95
RULES = ("per_utterance", "mean_similarity", "mean_dvector")
ALT_VOICEPRINT = "per_utterance_voiceprint_from_utterances"


@dataclass(frozen=True)
class ClipInfo:
    """One corpus clip: who, in which state, and (when the corpus says) which sex."""

    key: str
    speaker: str
    label: str
    sex: str | None = None


@dataclass(frozen=True)
class Embeddings:
    """How a clip becomes d-vectors, injected so tests need no audio and the bench can cache.

    ``utterances(i)``: one row per utterance the call's VAD cuts from clip ``i`` (possibly none);
    ``whole_clip(i)``: the d-vector of the whole enrolment clip, which is what enrolment embeds.
    """

    utterances: Callable[[int], np.ndarray]
    whole_clip: Callable[[int], np.ndarray]


def voiceprint_of(d_vectors: np.ndarray, embedder_name: str = "speaker") -> np.ndarray:
    """The voiceprint a first enrolment stores for these d-vectors, through the worker's own fold.

    The session is never used: it is only needed when no ``Voiceprint`` row is passed in.
    """
    row = Voiceprint(patient_id=0, embedder=embedder_name, vector=to_bytes(np.zeros(d_vectors.shape[1])), count=0)
    _fold_into_voiceprint(cast(Session, None), 0, row, d_vectors, embedder_name)
    return from_bytes(row.vector)


def speaker_rng(seed: int, speaker: str) -> np.random.Generator:
    """One generator per speaker, so a speaker's enrolment does not depend on which others are run."""
    return np.random.default_rng([seed, zlib.crc32(speaker.encode())])


def choose_enrolment(clips: Sequence[ClipInfo], seed: int) -> tuple[dict[str, list[int]], list[str]]:
    """Pick each speaker's enrolment clips; return them and the speakers with too few neutral clips."""
    neutral: dict[str, list[int]] = defaultdict(list)
    speakers = sorted({c.speaker for c in clips})
    for i, c in enumerate(clips):
        if c.label == ENROL_LABEL:
            neutral[c.speaker].append(i)
    chosen: dict[str, list[int]] = {}
    skipped: list[str] = []
    for s in speakers:
        pool = sorted(neutral.get(s, []), key=lambda i: clips[i].key)
        if len(pool) < ENROL_CLIPS:
            skipped.append(s)
            continue
        pick = speaker_rng(seed, s).choice(len(pool), size=ENROL_CLIPS, replace=False)
        chosen[s] = sorted(pool[int(j)] for j in pick)
    return chosen, skipped


def rate(flags: Sequence[bool] | np.ndarray) -> float | None:
    """Share of True, or None when there is nothing to count (so an empty cell is not a 0)."""
    arr = np.asarray(flags, dtype=bool)
    return float(arr.mean()) if arr.size else None


def _by_label(values: dict[str, list[float]], threshold: float) -> dict[str, float | None]:
    return {lab: rate([speaker_passes(v, True, threshold) for v in vals]) for lab, vals in sorted(values.items())}


def _sweep(own: dict[str, list[float]], impostor: Sequence[float]) -> dict[str, Any]:
    """Own-pass per label and impostor reject at every sweep threshold, and the 0.90-reject point.

    Reject rises with the threshold and own-pass falls, so the lowest threshold that rejects enough
    impostors is the one that keeps the most own utterances.
    """
    imp = np.asarray(impostor, dtype=np.float64)
    own_arr = {lab: np.asarray(v, dtype=np.float64) for lab, v in sorted(own.items())}
    curve: dict[str, Any] = {"thresholds": list(SWEEP), "impostor_reject": [], "own_pass_by_label": {}}
    for lab in own_arr:
        curve["own_pass_by_label"][lab] = []
    for t in SWEEP:
        curve["impostor_reject"].append(float(np.mean(imp < t)) if imp.size else None)
        for lab, arr in own_arr.items():
            curve["own_pass_by_label"][lab].append(float(np.mean(arr >= t)) if arr.size else None)
    at: dict[str, Any] = {"threshold": None, "impostor_reject": None, "own_pass_by_label": None}
    for k, t in enumerate(SWEEP):
        r = curve["impostor_reject"][k]
        if r is not None and r >= IMPOSTOR_REJECT_TARGET:
            at = {
                "threshold": t,
                "impostor_reject": r,
                "own_pass_by_label": {lab: v[k] for lab, v in curve["own_pass_by_label"].items()},
            }
            break
    return {"curve": curve, f"at_impostor_reject_{IMPOSTOR_REJECT_TARGET:.2f}": at}


def _rule_summary(own: dict[str, list[float]], impostor: list[float], threshold: float, unit: str) -> dict[str, Any]:
    return {
        "own_pass_by_label": _by_label(own, threshold),
        f"own_{unit}_by_label": {lab: len(v) for lab, v in sorted(own.items())},
        "own_mean_similarity_by_label": {lab: float(np.mean(v)) if v else None for lab, v in sorted(own.items())},
        "impostor_reject": rate([not speaker_passes(v, True, threshold) for v in impostor]),
        f"impostor_{unit}": len(impostor),
        "impostor_mean_similarity": float(np.mean(impostor)) if impostor else None,
        **_sweep(own, impostor),
    }


def _impostors_of(speaker: str, sex: dict[str, str | None], candidates: Sequence[str], by_sex: bool) -> list[str]:
    return [o for o in candidates if o != speaker and (not by_sex or sex[o] == sex[speaker])]


def _subsample(pairs: list[tuple[str, int, int]], cap: int | None, seed: int) -> list[tuple[str, int, int]]:
    """A seeded subset of impostor pairs when the cross product is too big to score in full."""
    if cap is None or len(pairs) <= cap:
        return pairs
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=cap, replace=False))
    return [pairs[int(i)] for i in keep]


def evaluate(
    clips: Sequence[ClipInfo],
    emb: Embeddings,
    threshold: float,
    *,
    seed: int = 0,
    max_impostor_pairs: int | None = 500_000,
) -> dict[str, Any]:
    """Per-utterance and per-call speaker check for one corpus.

    Impostors are other speakers of the same sex when every clip states a sex, otherwise any other
    speaker: a cross-sex impostor is an easy reject, so mixing them in flatters the check, and the
    output says which was done.
    """
    by_sex = all(c.sex for c in clips)
    sex = {c.speaker: c.sex for c in clips}
    enrol, skipped_neutral = choose_enrolment(clips, seed)
    utt = [np.atleast_2d(np.asarray(emb.utterances(i), dtype=np.float64)) for i in range(len(clips))]
    utt = [u if u.size else np.zeros((0, 1)) for u in utt]

    voiceprints: dict[str, np.ndarray] = {}
    skipped_no_speech: list[str] = []
    enrol_without_speech = 0
    for s, idx in enrol.items():
        # enrolment keeps only clips in which the call VAD finds speech (``no_speech`` is refused)
        accepted = [i for i in idx if len(utt[i])]
        enrol_without_speech += len(idx) - len(accepted)
        if not accepted:
            skipped_no_speech.append(s)
            continue
        voiceprints[s] = voiceprint_of(np.vstack([emb.whole_clip(i) for i in accepted]))
    enrolled = sorted(voiceprints)
    enrol_set = {i for s in enrolled for i in enrol[s]}
    scored = [i for i, c in enumerate(clips) if c.speaker in voiceprints and i not in enrol_set]

    all_speakers = sorted({c.speaker for c in clips})
    clips_of: dict[str, list[int]] = defaultdict(list)
    for i, c in enumerate(clips):
        clips_of[c.speaker].append(i)
    # impostor pairs: every utterance of another (same-sex) speaker against each voiceprint
    pairs = [
        (s, i, k)
        for s in enrolled
        for o in _impostors_of(s, sex, all_speakers, by_sex)
        for i in clips_of[o]
        for k in range(len(utt[i]))
    ]
    used = _subsample(pairs, max_impostor_pairs, seed)

    def per_utterance(vps: dict[str, np.ndarray]) -> tuple[dict[str, list[float]], list[float], dict[str, list[float]]]:
        own: dict[str, list[float]] = defaultdict(list)
        for i in scored:
            own[clips[i].label] += [cosine_similarity(d, vps[clips[i].speaker]) for d in utt[i]]
        imp: list[float] = []
        imp_by_label: dict[str, list[float]] = defaultdict(list)
        for s, i, k in used:
            v = cosine_similarity(utt[i][k], vps[s])
            imp.append(v)
            imp_by_label[clips[i].label].append(v)
        return own, imp, imp_by_label

    own_utt, impostor_utt, impostor_utt_by_label = per_utterance(voiceprints)
    # what the check would give if enrolment folded the d-vectors of the utterances it cuts from its
    # clips (the pieces it already uses for the baseline) instead of whole-clip d-vectors
    alt_vps = {s: voiceprint_of(np.vstack([utt[i] for i in enrol[s] if len(utt[i])])) for s in enrolled}
    alt_own, alt_imp, _ = per_utterance(alt_vps)

    # per call: 4 non-enrolment clips of one speaker in one label
    rng = np.random.default_rng(seed)
    calls: list[tuple[str, str, np.ndarray]] = []
    empty_calls = 0
    for s in enrolled:
        mine = [i for i in clips_of[s] if i not in enrol_set]
        for lab in sorted({clips[i].label for i in mine}):
            pool = np.array([i for i in mine if clips[i].label == lab], dtype=int)
            for call in _calls(pool, CALL_CLIPS, rng):
                pieces = [utt[int(i)] for i in call if len(utt[int(i)])]
                if not pieces:
                    empty_calls += 1
                    continue
                calls.append((s, lab, np.vstack(pieces)))

    def call_values(D: np.ndarray, vp: np.ndarray) -> tuple[float, float]:
        mean_sim = float(np.mean([cosine_similarity(d, vp) for d in D]))
        return mean_sim, pooled_similarity(list(D), vp)  # the worker's own per-call rule

    own_call: dict[str, dict[str, list[float]]] = {rule: defaultdict(list) for rule in RULES[1:]}
    imp_call: dict[str, list[float]] = {rule: [] for rule in RULES[1:]}
    for s, lab, D in calls:
        a, b = call_values(D, voiceprints[s])
        own_call["mean_similarity"][lab].append(a)
        own_call["mean_dvector"][lab].append(b)
        for o in _impostors_of(s, sex, enrolled, by_sex):
            a, b = call_values(D, voiceprints[o])
            imp_call["mean_similarity"].append(a)
            imp_call["mean_dvector"].append(b)

    per_utt = _rule_summary(own_utt, impostor_utt, threshold, "utterances")
    per_utt["impostor_reject_by_label"] = _by_label_reject(impostor_utt_by_label, threshold)
    return {
        "own_pass_by_label": per_utt["own_pass_by_label"],
        "impostor_reject": per_utt["impostor_reject"],
        "impostors": "same sex" if by_sex else "any other speaker (the corpus gives no sex)",
        "speakers": len(all_speakers),
        "speakers_enrolled": len(enrolled),
        "speakers_skipped": {
            f"fewer_than_{ENROL_CLIPS}_{ENROL_LABEL}_clips": skipped_neutral,
            "no_speech_in_enrolment": skipped_no_speech,
        },
        "enrolment_clips_without_speech": enrol_without_speech,
        "clips": len(clips),
        "clips_without_utterance": sum(1 for u in utt if not len(u)),
        "utterances": int(sum(len(u) for u in utt)),
        "impostor_pairs_total": len(pairs),
        "impostor_pairs_used": len(used),
        "per_utterance": per_utt,
        ALT_VOICEPRINT: _rule_summary(alt_own, alt_imp, threshold, "utterances"),
        "per_call": {
            "clips_per_call": CALL_CLIPS,
            "calls_without_utterance": empty_calls,
            **{rule: _rule_summary(own_call[rule], imp_call[rule], threshold, "calls") for rule in own_call},
        },
    }


def _by_label_reject(values: dict[str, list[float]], threshold: float) -> dict[str, float | None]:
    return {lab: rate([not speaker_passes(v, True, threshold) for v in vals]) for lab, vals in sorted(values.items())}


def rule_curve(result: dict[str, Any], rule: str) -> dict[str, Any]:
    """The sweep curve of ``rule`` (a per-utterance variant or a per-call rule) in one corpus's result."""
    block = result[rule] if rule in ("per_utterance", ALT_VOICEPRINT) else result["per_call"][rule]
    return cast(dict[str, Any], block["curve"])


def recommend(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """For each rule, one threshold for all corpora: does any meet both targets, and if not, how close.

    Feasible means impostor reject >= the target in every corpus and own-pass >= the target for every
    label of every corpus. When none is, the best threshold is the one with the highest worst-case
    own-pass among those that reject enough impostors everywhere (or, if no threshold does that, the
    one with the highest worst-case impostor reject), and the shortfalls are reported at it.
    """
    out: dict[str, Any] = {}
    for rule in (*RULES, ALT_VOICEPRINT):
        rows = []
        for k, t in enumerate(SWEEP):
            worst_reject = min(_num(rule_curve(r, rule)["impostor_reject"][k], 0.0) for r in results.values())
            own = {
                f"{name}/{lab}": _num(v[k])
                for name, r in results.items()
                for lab, v in rule_curve(r, rule)["own_pass_by_label"].items()
            }
            worst_own_key = min(own, key=lambda key: own[key])
            rows.append((t, worst_reject, own[worst_own_key], worst_own_key))
        feasible = [r for r in rows if r[1] >= IMPOSTOR_REJECT_TARGET and r[2] >= OWN_PASS_TARGET]
        reject_ok = [r for r in rows if r[1] >= IMPOSTOR_REJECT_TARGET]
        best = max(reject_ok, key=lambda r: (r[2], -r[0])) if reject_ok else max(rows, key=lambda r: (r[1], r[2]))
        out[rule] = {
            "per_corpus_at_impostor_reject_target": {name: _corpus_best(r, rule) for name, r in results.items()},
            "feasible_thresholds": [r[0] for r in feasible],
            "best_threshold": best[0],
            "worst_impostor_reject": best[1],
            "worst_own_pass": best[2],
            "worst_own_pass_at": best[3],
            "own_pass_shortfall": max(0.0, OWN_PASS_TARGET - best[2]),
            "impostor_reject_shortfall": max(0.0, IMPOSTOR_REJECT_TARGET - best[1]),
        }
    return out


def _corpus_best(result: dict[str, Any], rule: str) -> dict[str, Any]:
    """A threshold chosen for this corpus alone: the most a per-corpus tuning could give."""
    block = result[rule] if rule in ("per_utterance", ALT_VOICEPRINT) else result["per_call"][rule]
    at = block[f"at_impostor_reject_{IMPOSTOR_REJECT_TARGET:.2f}"]
    if at["threshold"] is None:
        return {"threshold": None}
    own = {lab: v for lab, v in at["own_pass_by_label"].items() if v is not None}
    worst = min(own, key=lambda lab: own[lab])
    return {
        "threshold": at["threshold"],
        "impostor_reject": at["impostor_reject"],
        "worst_label": worst,
        "worst_own_pass": own[worst],
        "own_pass_shortfall": max(0.0, OWN_PASS_TARGET - own[worst]),
    }


def _num(v: float | None, missing: float = 1.0) -> float:
    """A missing rate (no items): a label with no clips never decides a worst case, but a corpus with
    no impostors cannot show that it rejects them (``missing=0.0``)."""
    return missing if v is None else float(v)
