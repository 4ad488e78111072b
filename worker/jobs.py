"""The RQ jobs, plus the baseline library functions the CLI and web UI call directly.

Jobs take database ids only and read their resources from :func:`worker.context.current`. Each is
safe to run twice: RQ retries a job that raised, and the outbox sweep may re-enqueue one whose
first run died with its worker.

``score_utterance`` in three steps, so no database transaction stays open while audio is embedded:

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
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
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
from analysis.model import PainModel
from schema.audit import record
from schema.contract import enrol_upload_key
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
from worker import baselines
from worker.baselines import CallNotReady, EnrolmentResult, GrowthResult
from worker.calls import pending_utterances, update_running_score, verdict_and_evidence
from worker.context import WorkerContext, current
from worker.featurize import featurize
from worker.flags import FlagChange, announce, raise_or_update_flag
from worker.population import fold as fold_into_population
from worker.rows import from_bytes, to_bytes

log = logging.getLogger(__name__)


class ScoreOutcome(StrEnum):
    """What :func:`score_utterance` did (RQ keeps it as the job's result)."""

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


# ---------------------------------------------------------------------------------------------------
# score_utterance


def score_utterance(utterance_id: int) -> ScoreOutcome:
    """Score one utterance with the process's model; see the module docstring."""
    ctx = current()
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
        _announce(ctx, dataclasses.replace(change, utterance_id=utterance_id))
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


def _announce(ctx: WorkerContext, change: FlagChange) -> None:
    announce(
        change,
        ctx.redis,
        channel=ctx.flag_channel,
        webhook_url=ctx.flag_webhook_url,
        webhook_secret=ctx.flag_webhook_secret,
        webhook_timeout_s=ctx.webhook_timeout_s,
    )


# ---------------------------------------------------------------------------------------------------
# finalise_call


def finalise_call(call_id: int) -> str:
    """Give an ended call its verdict, score and evidence; status ``finalised``. Idempotent.

    While utterances are still pending it raises :class:`CallNotReady`, which RQ's Retry turns into a
    later attempt (enqueued through ``schema.contract.enqueue``, whose ``JobOptions`` give it interval
    retries; the worker must run with the scheduler). Once ``finalise_grace_s`` has passed since
    hang-up it stops waiting and finalises on what was scored, recording how many utterances were left
    out.
    """
    ctx = current()
    change: FlagChange | None = None
    with session_scope(ctx.sessions) as session:
        call = session.scalars(select(Call).where(Call.id == call_id).with_for_update()).one_or_none()
        if call is None:
            log.warning("call %s: gone before finalisation", call_id)
            return "missing"
        if call.status == CallStatus.FINALISED.value:
            return "already finalised"
        if call.status == CallStatus.STREAMING.value:
            # a new stream on the same call: its own end enqueues finalisation again
            log.info("call %s: streaming again, not finalised", call_id)
            return "streaming"
        pending = pending_utterances(session, call_id)
        if pending:
            ended = call.ended_at or call.started_at
            if utcnow() - ended < timedelta(seconds=ctx.finalise_grace_s):
                raise CallNotReady(f"call {call_id}: {pending} utterances not scored yet")
            log.warning("call %s: finalising with %d utterances unscored", call_id, pending)
        verdict, probability, speech_s, evidence = verdict_and_evidence(session, ctx, call, unscored=pending)
        call.verdict = verdict.value
        call.call_score = probability
        call.speech_s = speech_s
        call.evidence = evidence
        call.status = CallStatus.FINALISED.value
        if verdict.value == "pain_likely" and probability is not None:
            change = raise_or_update_flag(session, call, probability, ctx.threshold)
        record(
            session,
            "worker",
            "call.finalise",
            "call",
            call_id,
            verdict=verdict.value,
            utterances=evidence["utterances_scored"],
            unscored=pending,
            model_version=ctx.model.version,
        )
    if change is not None:
        _announce(ctx, change)
    log.info("call %s finalised: %s", call_id, verdict.value)
    return verdict.value


# ---------------------------------------------------------------------------------------------------
# baselines


def grow_baseline_from_call(call_id: int) -> str:
    """RQ job, enqueued when a nurse resolves a flag: apply the baseline policy to the call.

    See :mod:`worker.baselines`; only calls resolved with label ``no_pain`` add anything.
    Raises :class:`CallNotReady` while the call is not finalised.
    """
    ctx = current()
    with session_scope(ctx.sessions) as session:
        result = baselines.grow_from_call(session, ctx, call_id)
    if result.reason:
        log.info("call %s: baseline unchanged (%s)", call_id, result.reason)
        return "unchanged"
    log.info("call %s: %d utterances added to baseline %s", call_id, result.added, result.baseline_id)
    return f"added {result.added}"


def grow_baseline(call_id: int, *, ctx: WorkerContext | None = None) -> GrowthResult:
    """Library form of :func:`grow_baseline_from_call`, returning the details."""
    ctx = ctx or current()
    with session_scope(ctx.sessions) as session:
        return baselines.grow_from_call(session, ctx, call_id)


def enroll(
    patient_id: int,
    clips_8k: Sequence[np.ndarray],
    actor: str,
    *,
    ctx: WorkerContext | None = None,
    check_speaker: bool = True,
) -> EnrolmentResult:
    """Enrol normal-voice clips for a patient (library function for the CLI and API, not a job)."""
    return baselines.enroll(patient_id, clips_8k, actor, ctx=ctx or current(), check_speaker=check_speaker)


def enroll_uploaded(patient_id: int, token: str, actor: int | str) -> str:
    """RQ job: enrol clips an admin uploaded, read from (and then removed from) Redis.

    The audio is passed through Redis rather than job arguments or the database, and kept there
    at most for the upload's expiry; if it has expired the job says so and does nothing.

    ``actor`` is the uploading user's id, resolved to a username here for the audit trail: job
    arguments are stored in Redis and printed in RQ's log lines, so they carry ids, never names.
    (A username string, from a job queued before this changed, is still accepted.)
    """
    ctx = current()
    if ctx.redis is None:
        raise RuntimeError("enroll_uploaded needs the worker's Redis connection")
    key = enrol_upload_key(token)
    pipe = ctx.redis.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    payloads, _ = pipe.execute()
    if not payloads:
        return "expired"
    clips = [mulaw_decode(bytes(p)) for p in payloads]
    try:
        result = enroll(patient_id, clips, _actor_name(ctx, actor), ctx=ctx)
    except ValueError:  # no speech in any clip: nothing to retry
        return "no speech found in the uploaded audio"
    return (
        f"enrolled {result.accepted} clip(s) as {result.utterances} utterance(s), "
        f"{len(result.rejected_speaker)} refused by the speaker check, {len(result.no_speech)} without speech"
    )


def _actor_name(ctx: WorkerContext, actor: int | str) -> str:
    """The username for a user id (``user:<id>`` if the account is gone); strings pass through."""
    if isinstance(actor, str):
        return actor
    from schema.models import User

    with session_scope(ctx.sessions) as session:
        name = session.scalar(select(User.username).where(User.id == actor))
    return name or f"user:{actor}"


def rebuild_baseline(baseline_id: int, *, ctx: WorkerContext | None = None) -> int:
    """Re-derive a baseline after an admin excluded or re-included a contribution; returns its count.

    The caller writes the audit event (it knows who decided and why).
    """
    ctx = ctx or current()
    with session_scope(ctx.sessions) as session:
        return baselines.rebuild(session, baseline_id).n


def derive_baseline_for_model(patient_id: int, new_model: PainModel, *, ctx: WorkerContext | None = None) -> int | None:
    """Start ``new_model``'s baseline for a patient from their baseline under an older model.

    Returns the new baseline's id, or None if the patient has no baseline in the same embedder's
    space (then they must re-enrol). See :func:`worker.baselines.derive_for_model`.
    """
    ctx = ctx or current()
    with session_scope(ctx.sessions) as session:
        baseline = baselines.derive_for_model(session, patient_id, new_model)
        return baseline.id if baseline is not None else None


__all__ = [
    "CallNotReady",
    "derive_baseline_for_model",
    "enroll",
    "finalise_call",
    "grow_baseline",
    "grow_baseline_from_call",
    "rebuild_baseline",
    "score_utterance",
]
