"""The speaker-check bench's statistics on constructed d-vectors: no corpus, no resemblyzer.

The bench's numbers decide whether the product changes its speaker rule, so its counting is checked
on cases whose answer is known by hand: identical vectors pass, orthogonal ones fail, impostors are
matched by sex only when the corpus gives one, and the two per-call rules differ where they should.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bench.speaker_check.__main__ import read_clips, table
from bench.speaker_check.measure import SWEEP, ClipInfo, Embeddings, evaluate, recommend, voiceprint_of

DIM = 8


def _e(k: int) -> np.ndarray:
    v = np.zeros(DIM)
    v[k] = 1.0
    return v


def _corpus(with_sex: bool = True) -> tuple[list[ClipInfo], dict[str, np.ndarray]]:
    """A and B male, C female with C's voice identical to A's (a cross-sex impostor nobody would test).

    A is e0 when neutral; two of A's four angry clips are e0 and two e2 (orthogonal: "voice changed").
    B is always e1. C has only two neutral clips, so it cannot be enrolled.
    """
    clips: list[ClipInfo] = []
    vec: dict[str, np.ndarray] = {}

    def add(speaker: str, label: str, n: int, vectors: list[np.ndarray], sex: str) -> None:
        for j in range(n):
            key = f"{speaker}/{label}{j}"
            clips.append(ClipInfo(key=key, speaker=speaker, label=label, sex=sex if with_sex else None))
            vec[key] = vectors[j % len(vectors)]

    add("A", "neutral", 4, [_e(0)], "m")
    add("A", "angry", 4, [_e(0), _e(0), _e(2), _e(2)], "m")
    add("B", "neutral", 4, [_e(1)], "m")
    add("B", "angry", 4, [_e(1)], "m")
    add("C", "neutral", 2, [_e(0)], "f")
    return clips, vec


def _embeddings(clips: list[ClipInfo], vec: dict[str, np.ndarray]) -> Embeddings:
    return Embeddings(
        utterances=lambda i: vec[clips[i].key][None, :],
        whole_clip=lambda i: vec[clips[i].key],
    )


def test_voiceprint_is_the_workers_mean_of_enrolment_vectors() -> None:
    D = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert np.allclose(voiceprint_of(D), [0.5, 0.5])


def test_identical_pass_orthogonal_fail_and_same_sex_impostors() -> None:
    clips, vec = _corpus()
    r = evaluate(clips, _embeddings(clips, vec), 0.70, seed=0)

    assert r["speakers_skipped"]["fewer_than_3_neutral_clips"] == ["C"]
    assert r["speakers_enrolled"] == 2
    assert r["impostors"] == "same sex"
    # neutral: one scored clip each for A and B, identical to the voiceprint
    assert r["own_pass_by_label"]["neutral"] == 1.0
    # angry: A 2 of 4 (two orthogonal), B 4 of 4
    assert r["own_pass_by_label"]["angry"] == pytest.approx(6 / 8)
    assert r["per_utterance"]["own_utterances_by_label"] == {"angry": 8, "neutral": 2}
    # A's voiceprint against B's 8 utterances and B's against A's 8: all orthogonal; C (same voice as
    # A but female) is never an impostor for A
    assert r["impostor_reject"] == 1.0
    assert r["impostor_pairs_total"] == r["impostor_pairs_used"] == 16
    # here a whole clip's d-vector is its utterance's, so the utterance-built voiceprint agrees
    alt = r["per_utterance_voiceprint_from_utterances"]
    assert alt["own_pass_by_label"] == r["own_pass_by_label"] and alt["impostor_reject"] == 1.0


def test_per_call_rules_differ_on_a_half_changed_call() -> None:
    clips, vec = _corpus()
    r = evaluate(clips, _embeddings(clips, vec), 0.70, seed=0)
    mean_sim, mean_dv = r["per_call"]["mean_similarity"], r["per_call"]["mean_dvector"]
    # A's angry call: similarities 1, 1, 0, 0 -> mean 0.5 (withdrawn); centroid (e0+e2)/2 -> cos 0.707 (kept)
    assert mean_sim["own_calls_by_label"] == {"angry": 2}
    assert mean_sim["own_pass_by_label"]["angry"] == 0.5
    assert mean_dv["own_pass_by_label"]["angry"] == 1.0
    assert mean_sim["own_mean_similarity_by_label"]["angry"] == pytest.approx(0.75)
    assert mean_dv["own_mean_similarity_by_label"]["angry"] == pytest.approx((1 + 2**-0.5) / 2)
    assert mean_sim["impostor_calls"] == mean_dv["impostor_calls"] == 2
    assert mean_sim["impostor_reject"] == mean_dv["impostor_reject"] == 1.0


def test_sweep_and_recommendation() -> None:
    clips, vec = _corpus()
    r = evaluate(clips, _embeddings(clips, vec), 0.70, seed=0)
    curve = r["per_call"]["mean_dvector"]["curve"]
    assert curve["thresholds"] == list(SWEEP) and SWEEP[0] == 0.5 and SWEEP[-1] == 0.95
    k = SWEEP.index(0.71)
    assert curve["own_pass_by_label"]["angry"][k] == 0.5  # 0.707 < 0.71
    at = r["per_call"]["mean_dvector"]["at_impostor_reject_0.90"]
    assert at["threshold"] == 0.5 and at["own_pass_by_label"]["angry"] == 1.0
    rec = recommend({"toy": r})
    assert rec["mean_dvector"]["feasible_thresholds"] == [t for t in SWEEP if t <= 0.70]
    assert rec["per_utterance"]["feasible_thresholds"] == []
    assert rec["per_utterance"]["own_pass_shortfall"] == pytest.approx(0.95 - 0.75)
    assert rec["per_utterance"]["worst_own_pass_at"] == "toy/angry"
    per = rec["per_utterance"]["per_corpus_at_impostor_reject_target"]["toy"]
    assert per["threshold"] == 0.5 and per["worst_label"] == "angry" and per["worst_own_pass"] == 0.75
    assert "| toy | per utterance @ 0.70 |" in table({"toy": r}, 0.70)


def test_without_sex_any_other_speaker_is_an_impostor() -> None:
    clips, vec = _corpus(with_sex=False)
    r = evaluate(clips, _embeddings(clips, vec), 0.70, seed=0)
    assert r["impostors"].startswith("any other speaker")
    # both voiceprints now also meet C's two utterances; those are identical to A, so 2 of 20 pass
    assert r["impostor_pairs_total"] == 20
    assert r["impostor_reject"] == pytest.approx(18 / 20)
    capped = evaluate(clips, _embeddings(clips, vec), 0.70, seed=0, max_impostor_pairs=5)
    assert capped["impostor_pairs_used"] == 5 and capped["impostor_pairs_total"] == 20


def test_a_clip_without_speech_counts_as_no_utterance(tmp_path: Path) -> None:
    clips, vec = _corpus()
    silent = {clips[i].key for i in range(4, 6)}  # two of A's angry clips: the VAD found nothing
    emb = Embeddings(
        utterances=lambda i: np.zeros((0, DIM)) if clips[i].key in silent else vec[clips[i].key][None, :],
        whole_clip=lambda i: vec[clips[i].key],
    )
    r = evaluate(clips, emb, 0.70, seed=0)
    assert r["clips_without_utterance"] == 2
    assert r["per_utterance"]["own_utterances_by_label"]["angry"] == 6


def test_read_clips_normalises_sex_and_limits_speakers(tmp_path: Path) -> None:
    (tmp_path / "manifest.csv").write_text(
        "path,label,speaker_id,sex\nb.flac,neutral,S2,female\na.flac,angry,S1,male\nc.flac,sad,S3,m\n",
        encoding="utf-8",
    )
    clips, paths = read_clips(tmp_path, max_speakers=2)
    assert [(c.speaker, c.sex) for c in clips] == [("S1", "m"), ("S2", "f")]
    assert paths == [tmp_path / "a.flac", tmp_path / "b.flac"]
