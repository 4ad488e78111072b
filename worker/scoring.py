"""Scoring one utterance against the caller's own voice: the body of ``worker.jobs.score_utterance``.

:func:`score` in three steps, so no database transaction stays open while audio is embedded:

1. read: skip if this model already scored the utterance; load audio, patient, voiceprint, the
   live population statistics and the patient's baseline;
2. compute (no transaction): decode mu-law, RMS-normalise if the model card says so, embed, compute
   eGeMAPS evidence measures, check the speaker, predict;
3. write, in one transaction: insert the Score, fold the raw embedding into the population
   statistics (row-locked), mark the utterance scored and delete its audio, refresh the call's
   running score and raise or upgrade its flag. Flag notifications go out after the commit.

Idempotency rests on the unique constraint on ``scores (utterance_id, model_version)``: step 1
exits if a Score exists; two runs racing past step 1 both reach the insert, the loser gets an
IntegrityError and rolls back everything, population statistics and flag included.

Speaker check at scoring time, per call: the speaker d-vector is computed only when the patient has
a voiceprint to compare with, stored encrypted with the score (``Score.speaker_vector``), and the
decision is made on the call's speech so far: this utterance's d-vector pooled with those of the
call's earlier utterances (``analysis.embedders.speaker.pooled_similarity``), stored as
``Score.speaker_similarity``. Deciding per utterance withdrew the baseline exactly when a caller's
voice changed (an angry or crying utterance of the right caller fell below the threshold alone);
``bench.speaker_check`` measures both rules. A call whose pooled voice is clearly someone else's is
scored against the population alone. Without resemblyzer the check is skipped and the similarity
left empty.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats
from analysis.channel import mulaw_decode
from analysis.embedders import EmbedderUnavailable
from analysis.embedders.fusion import ConcatEmbedder
from analysis.embedders.speaker import pooled_similarity
from analysis.evidence import EVIDENCE_VERSION
from schema.db import session_scope
from schema.models import (
    Baseline,
    Call,
    CallStatus,
    PopulationStats,
    Score,
    Utterance,
    UtteranceAudio,
    UtteranceStatus,
    Voiceprint,
    utcnow,
)
from worker.calls import update_running_score
from worker.context import WorkerContext
from worker.featurize import featurize
from worker.flags import FlagChange, announce_from
from worker.population import fold as fold_into_population
from worker.rows import from_bytes, to_bytes

log = logging.getLogger(__name__)


class ScoreOutcome(StrEnum):
    """What :func:`score` did; ``worker.jobs.score_utterance`` returns it, so RQ keeps it as the job's result."""

    SCORED = "scored"
    ALREADY_SCORED = "already scored"  # by an earlier or concurrent run of the same job
    MISSING = "missing"  # the utterance was deleted before it could be scored
    NO_AUDIO = "no audio"  # its audio is gone (retention, or a failed save): marked failed


@dataclass
class _Inputs:
    """What step 1 read: plain values, so step 2 runs with no session open."""

    utterance_id: int
    call_id: int
    patient_id: int | None
    speech_s: float
    mulaw: bytes
    population: RunningStats | None
    baseline: RunningStats | None
    voiceprint: np.ndarray | None
    voiceprint_embedder: str | None
    call_speaker_vectors: list[np.ndarray]  # d-vectors of the call's utterances this model scored before


def score(ctx: WorkerContext, utterance_id: int) -> ScoreOutcome:
    """Score one utterance with ``ctx``'s model; see the module docstring."""
    inputs = _read_inputs(ctx, utterance_id)
    if isinstance(inputs, ScoreOutcome):
        return inputs
    model = ctx.model
    x = mulaw_decode(inputs.mulaw)
    featurized = featurize(ctx, [x])
    embedding, measures = featurized.features[0], featurized.measures[0]
    d_vector = _speaker_vector(ctx, inputs, x, embedding)
    similarity = (
        None
        if d_vector is None or inputs.voiceprint is None
        else pooled_similarity([*inputs.call_speaker_vectors, d_vector], inputs.voiceprint)
    )

    same_speaker = similarity is None or similarity >= ctx.speaker_threshold
    baseline = inputs.baseline if same_speaker and inputs.baseline is not None and inputs.baseline.n > 0 else None
    probability = float(model.predict_proba(embedding[None, :], population=inputs.population, baseline=baseline)[0])
    applied = baseline is not None and model.caller_weight(baseline.n) > 0

    change: FlagChange | None = None
    try:
        with session_scope(ctx.sessions) as session:
            session.add(
                Score(
                    utterance_id=utterance_id,
                    model_version=model.version,
                    probability=min(max(probability, 0.0), 1.0),
                    baseline_applied=applied,
                    baseline_n=baseline.n if applied and baseline is not None else 0,
                    speaker_similarity=similarity,
                    speaker_vector=None if d_vector is None else to_bytes(d_vector),
                    embedding=to_bytes(embedding),
                    features={"evidence_version": EVIDENCE_VERSION, "measures": measures},
                    created_at=utcnow(),
                )
            )
            session.flush()  # a duplicate fails here, before anything shared is touched
            fold_into_population(session, model, embedding)
            utterance = session.get(Utterance, utterance_id)
            if utterance is not None:
                utterance.status = UtteranceStatus.SCORED.value
            session.execute(delete(UtteranceAudio).where(UtteranceAudio.utterance_id == utterance_id))
            call = session.scalars(select(Call).where(Call.id == inputs.call_id).with_for_update()).one_or_none()
            if call is not None and call.status != CallStatus.FINALISED.value:
                change = update_running_score(session, ctx, call)
    except IntegrityError:
        if _already_scored(ctx, utterance_id, model.version):
            log.info("utterance %s: scored concurrently by another job", utterance_id)
            return ScoreOutcome.ALREADY_SCORED
        raise
    if change is not None:
        announce_from(ctx, dataclasses.replace(change, utterance_id=utterance_id))
    log.info("utterance %s scored (baseline %s)", utterance_id, "applied" if applied else "not applied")
    return ScoreOutcome.SCORED


def _read_inputs(ctx: WorkerContext, utterance_id: int) -> _Inputs | ScoreOutcome:
    model = ctx.model
    with session_scope(ctx.sessions) as session:
        if _score_exists(session, utterance_id, model.version):
            return ScoreOutcome.ALREADY_SCORED
        utterance = session.get(Utterance, utterance_id)
        if utterance is None:
            log.warning("utterance %s: gone before scoring", utterance_id)
            return ScoreOutcome.MISSING
        audio = session.get(UtteranceAudio, utterance_id)
        if audio is None:
            if utterance.status == UtteranceStatus.PENDING.value:
                utterance.status = UtteranceStatus.FAILED.value
            log.warning("utterance %s: no audio to score", utterance_id)
            return ScoreOutcome.NO_AUDIO
        call = session.get(Call, utterance.call_id)
        patient_id = call.patient_id if call is not None else None
        pop_row = session.scalars(
            select(PopulationStats).where(
                PopulationStats.embedder == model.embedder_name,
                PopulationStats.model_version == model.version,
            )
        ).one_or_none()
        baseline: RunningStats | None = None
        voiceprint: np.ndarray | None = None
        voiceprint_embedder: str | None = None
        if patient_id is not None:
            row = session.scalars(
                select(Baseline).where(
                    Baseline.patient_id == patient_id,
                    Baseline.embedder == model.embedder_name,
                    Baseline.model_version == model.version,
                )
            ).one_or_none()
            if row is not None and row.count > 0:
                baseline = RunningStats.from_dict(row.stats)
            vp = session.scalars(select(Voiceprint).where(Voiceprint.patient_id == patient_id)).one_or_none()
            if vp is not None and vp.count > 0:
                voiceprint, voiceprint_embedder = from_bytes(vp.vector), vp.embedder
        earlier = session.scalars(
            select(Score.speaker_vector)
            .join(Utterance, Utterance.id == Score.utterance_id)
            .where(
                Utterance.call_id == utterance.call_id,
                Score.model_version == model.version,
                Score.speaker_vector.is_not(None),
                Utterance.id != utterance_id,
            )
        ).all()
        return _Inputs(
            utterance_id=utterance_id,
            call_id=utterance.call_id,
            patient_id=patient_id,
            speech_s=float(utterance.speech_s),
            mulaw=bytes(audio.mulaw),
            population=RunningStats.from_dict(pop_row.stats) if pop_row is not None else None,
            baseline=baseline,
            voiceprint=voiceprint,
            voiceprint_embedder=voiceprint_embedder,
            call_speaker_vectors=[from_bytes(v) for v in earlier if v is not None],
        )


def _speaker_vector(ctx: WorkerContext, inputs: _Inputs, x: np.ndarray, embedding: np.ndarray) -> np.ndarray | None:
    """The utterance's speaker embedding, or None when there is no voiceprint to compare it with.

    When the model's own features already contain the d-vector (``egemaps+speaker``) that slice is
    reused rather than computed twice.
    """
    speaker = ctx.speaker_embedder
    if inputs.voiceprint is None or speaker is None or inputs.voiceprint_embedder != speaker.name:
        return None
    parts = ctx.embedder.part_slices() if isinstance(ctx.embedder, ConcatEmbedder) else {}
    if speaker.name in parts:
        return np.asarray(embedding[parts[speaker.name]], dtype=np.float32)
    try:
        return np.asarray(speaker.embed([x])[0], dtype=np.float32)
    except EmbedderUnavailable as exc:
        log.warning("utterance %s: speaker check skipped (%s)", inputs.utterance_id, type(exc).__name__)
        return None


def _score_exists(session: Session, utterance_id: int, model_version: str) -> bool:
    return (
        session.scalar(select(Score.id).where(Score.utterance_id == utterance_id, Score.model_version == model_version))
        is not None
    )


def _already_scored(ctx: WorkerContext, utterance_id: int, model_version: str) -> bool:
    with session_scope(ctx.sessions) as session:
        return _score_exists(session, utterance_id, model_version)


__all__ = ["ScoreOutcome", "score"]
