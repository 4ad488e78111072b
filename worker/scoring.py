"""Scoring one utterance against the caller's own voice: the body of ``worker.jobs.score_utterance``.

:func:`score` in three steps, so no database transaction stays open while audio is embedded:

1. read, in one statement (two when the caller has a voiceprint to check against): skip if this
   model already scored the utterance; load audio, patient, voiceprint and the patient's baseline.
   The population statistics come from the worker's own view (``worker.population``), re-read
   only every few seconds;
2. compute (no transaction): decode mu-law, RMS-normalise if the model card says so, embed, compute
   eGeMAPS evidence measures, check the speaker, predict;
3. write, in one transaction: insert the Score, fold the raw embedding into this worker's shard of
   the population statistics, mark the utterance scored, delete its audio and take the call's row
   lock (on PostgreSQL all five in one statement), then refresh the call's running score and raise
   or upgrade its flag. Flag notifications go out after the commit, then the call's
   ``call.scored`` event (ids only), so an open call page shows the new score at once rather than
   on its fallback poll.

Statements are the budget (issue 15: at most six per scored utterance, which
``tests/worker/test_worker_budget.py`` counts): every round trip is CPU in the worker, and the
scoring tier's throughput is what a deployment buys cores for (docs/scaling.md).

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
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats
from analysis.channel import mulaw_decode
from analysis.embedders import EmbedderUnavailable
from analysis.embedders.fusion import ConcatEmbedder
from analysis.embedders.speaker import pooled_similarity
from analysis.evidence import EVIDENCE_VERSION
from schema.contract import LiveEvent
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
from worker import metrics
from worker.calls import LockedCall, announce, update_running_score
from worker.context import WorkerContext
from worker.featurize import featurize
from worker.flags import FlagChange, announce_from
from worker.population import fold as fold_into_population
from worker.population import move_on
from worker.population import refresh as refresh_population
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
    created_at: datetime  # when the stream wrote the row (the VAD had just closed it): latency's start


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
    view = ctx.population
    own = view.own if view.own is not None else RunningStats.empty(model.dim)
    folded = own.copy().update(np.atleast_2d(np.asarray(embedding, dtype=np.float64)))
    score_row = {
        "utterance_id": utterance_id,
        "model_version": model.version,
        "probability": min(max(probability, 0.0), 1.0),
        "baseline_applied": applied,
        "baseline_n": baseline.n if applied and baseline is not None else 0,
        "speaker_similarity": similarity,
        "speaker_vector": None if d_vector is None else to_bytes(d_vector),
        "embedding": to_bytes(embedding),
        "features": {"evidence_version": EVIDENCE_VERSION, "measures": measures},
        "created_at": utcnow(),
    }

    change: FlagChange | None = None
    try:
        with session_scope(ctx.sessions) as session:
            # a duplicate Score fails the first statement, before anything shared is kept
            written = _write_score(session, ctx, score_row, own.n, folded, inputs.call_id)
            if written.population_n != folded.n:  # someone else wrote this shard: fold under its lock
                folded = fold_into_population(session, model, embedding, view.shard)
                moved = True
            else:
                moved = False
            if written.call is not None:
                change = update_running_score(session, ctx, written.call)
    except IntegrityError:
        if _already_scored(ctx, utterance_id, model.version):
            log.info("utterance %s: scored concurrently by another job", utterance_id)
            return ScoreOutcome.ALREADY_SCORED
        raise
    if moved:
        move_on(view)
    else:
        view.own = folded  # only now: a rolled-back write must not count
    metrics.scored(inputs.created_at)
    if change is not None:
        announce_from(ctx, dataclasses.replace(change, utterance_id=utterance_id))
        metrics.flag_published(change.level, change.event, inputs.created_at)
    announce(ctx, LiveEvent.CALL_SCORED, inputs.call_id)  # even for a finalised call: its rows changed
    log.info("utterance %s scored (baseline %s)", utterance_id, "applied" if applied else "not applied")
    return ScoreOutcome.SCORED


@dataclass(frozen=True)
class _Written:
    """What the write statement returned: the shard's new count (None: the guard refused) and the call."""

    population_n: int | None
    call: LockedCall | None  # None: the call is gone or finalised, its running score is left alone


def _write_score(
    session: Session,
    ctx: WorkerContext,
    score_row: dict[str, Any],
    expected_n: int,
    folded: RunningStats,
    call_id: int,
) -> _Written:
    """Insert the score, write this worker's shard (if it still holds ``expected_n``), mark the utterance
    scored, delete its audio and lock the call: one statement on PostgreSQL, five on SQLite."""
    model = ctx.model
    utterance_id = int(score_row["utterance_id"])
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as upsert_insert
    else:
        from sqlalchemy.dialects.sqlite import insert as upsert_insert  # type: ignore[assignment]
    values = upsert_insert(PopulationStats).values(
        embedder=model.embedder_name,
        model_version=model.version,
        shard=ctx.population.shard,
        stats=folded.to_dict(),
        count=folded.n,
        updated_at=utcnow(),
    )
    shard = values.on_conflict_do_update(
        index_elements=["embedder", "model_version", "shard"],
        set_={"stats": values.excluded.stats, "count": values.excluded.count, "updated_at": values.excluded.updated_at},
        where=PopulationStats.count == expected_n,
    ).returning(PopulationStats.count)
    new_score = insert(Score).values(**score_row).returning(Score.id)
    gone = (
        delete(UtteranceAudio).where(UtteranceAudio.utterance_id == utterance_id).returning(UtteranceAudio.utterance_id)
    )
    marked = (
        update(Utterance)
        .where(Utterance.id == utterance_id)
        .values(status=UtteranceStatus.SCORED.value)
        .returning(Utterance.id)
    )
    call_columns = (Call.id, Call.patient_id, Call.status, Call.call_score, Call.speech_s)
    if dialect == "postgresql":
        ctes = [new_score.cte("new_score"), shard.cte("shard"), gone.cte("gone"), marked.cte("marked")]
        row = session.execute(
            select(*call_columns, select(ctes[1].c.count).scalar_subquery().label("population_n"))
            .where(Call.id == call_id)
            .with_for_update(of=Call)
            .add_cte(*ctes)
        ).one_or_none()
        population_n = None if row is None else row.population_n
    else:
        session.execute(new_score)
        population_n = session.execute(shard).scalar_one_or_none()
        session.execute(gone)
        session.execute(marked)
        row = session.execute(select(*call_columns).where(Call.id == call_id).with_for_update()).one_or_none()
    call = (
        None
        if row is None or row.status == CallStatus.FINALISED.value
        else LockedCall(int(row.id), row.patient_id, row.call_score, float(row.speech_s or 0.0))
    )
    return _Written(None if population_n is None else int(population_n), call)


def _read_inputs(ctx: WorkerContext, utterance_id: int) -> _Inputs | ScoreOutcome:
    model = ctx.model
    with session_scope(ctx.sessions) as session:
        row = session.execute(
            select(
                Utterance.call_id,
                Utterance.status,
                Utterance.speech_s,
                Utterance.created_at,
                UtteranceAudio.mulaw,
                Call.patient_id,
                Score.id.label("score_id"),
                Baseline.stats.label("baseline_stats"),
                Baseline.count.label("baseline_count"),
                Voiceprint.vector.label("voiceprint"),
                Voiceprint.embedder.label("voiceprint_embedder"),
                Voiceprint.count.label("voiceprint_count"),
            )
            .outerjoin(UtteranceAudio, UtteranceAudio.utterance_id == Utterance.id)
            .outerjoin(Call, Call.id == Utterance.call_id)
            .outerjoin(Score, and_(Score.utterance_id == Utterance.id, Score.model_version == model.version))
            .outerjoin(
                Baseline,
                and_(
                    Baseline.patient_id == Call.patient_id,
                    Baseline.embedder == model.embedder_name,
                    Baseline.model_version == model.version,
                ),
            )
            .outerjoin(Voiceprint, Voiceprint.patient_id == Call.patient_id)
            .where(Utterance.id == utterance_id)
        ).one_or_none()
        if row is not None and row.score_id is not None:
            return ScoreOutcome.ALREADY_SCORED
        if row is None:
            log.warning("utterance %s: gone before scoring", utterance_id)
            return ScoreOutcome.MISSING
        if row.mulaw is None:
            if row.status == UtteranceStatus.PENDING.value:
                session.execute(
                    update(Utterance).where(Utterance.id == utterance_id).values(status=UtteranceStatus.FAILED.value)
                )
            log.warning("utterance %s: no audio to score", utterance_id)
            return ScoreOutcome.NO_AUDIO
        refresh_population(ctx.population, session, model)
        baseline = (
            RunningStats.from_dict(row.baseline_stats)
            if row.baseline_stats is not None and row.baseline_count > 0
            else None
        )
        has_voiceprint = row.voiceprint is not None and row.voiceprint_count > 0
        voiceprint = from_bytes(row.voiceprint) if has_voiceprint else None
        voiceprint_embedder = row.voiceprint_embedder if has_voiceprint else None
        earlier: list[bytes | None] = []
        speaker = ctx.speaker_embedder
        if voiceprint is not None and speaker is not None and voiceprint_embedder == speaker.name:
            # only then is a d-vector computed and pooled with the call's earlier ones
            earlier = list(
                session.scalars(
                    select(Score.speaker_vector)
                    .join(Utterance, Utterance.id == Score.utterance_id)
                    .where(
                        Utterance.call_id == row.call_id,
                        Score.model_version == model.version,
                        Score.speaker_vector.is_not(None),
                        Utterance.id != utterance_id,
                    )
                )
            )
        return _Inputs(
            utterance_id=utterance_id,
            call_id=int(row.call_id),
            patient_id=row.patient_id,
            speech_s=float(row.speech_s),
            mulaw=bytes(row.mulaw),
            population=ctx.population.current(),
            baseline=baseline,
            voiceprint=voiceprint,
            voiceprint_embedder=voiceprint_embedder,
            call_speaker_vectors=[from_bytes(v) for v in earlier if v is not None],
            created_at=row.created_at,
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
