"""Population statistics: every score folds in, and seeding gives a hotline its scale before go-live."""

from __future__ import annotations

import numpy as np
import pytest
from sqlalchemy import select

from analysis.baseline import RunningStats
from analysis.segmentation import cut_clip
from schema.models import Call, CallStatus, PopulationStats, utcnow
from tests.rows import add_score_row, add_utterance_row
from tests.worker_fixtures import calm, pain
from worker.context import WorkerContext
from worker.featurize import featurize
from worker.population import fold, seed_from_audio, seed_from_calls
from worker.rows import to_bytes


def _population(ctx: WorkerContext, version: str | None = None) -> PopulationStats | None:
    with ctx.sessions() as session:
        return session.scalars(
            select(PopulationStats).where(PopulationStats.model_version == (version or ctx.model.version))
        ).one_or_none()


def test_seeding_from_recordings_folds_what_calls_would_fold(worker_ctx: WorkerContext) -> None:
    clips = [calm(120.0, seed=1, seconds=3.0), pain(180.0, seed=2, seconds=3.0), np.zeros(8000, np.float32)]
    result = seed_from_audio(worker_ctx, clips)
    utterances = [u.samples for clip in clips for u in cut_clip(clip, worker_ctx.vad)]
    assert result.utterances == len(utterances) >= 2 and result.clips_without_speech == 1
    row = _population(worker_ctx)
    assert row is not None and row.count == result.population_n == len(utterances)
    expected = RunningStats.from_array(featurize(worker_ctx, utterances).features)
    np.testing.assert_allclose(RunningStats.from_dict(row.stats).mean, expected.mean, rtol=1e-6)
    # a second seeding adds to the same statistics
    assert seed_from_audio(worker_ctx, clips[:1]).population_n > len(utterances)


def test_seeding_from_past_calls_reuses_embeddings_of_the_same_embedder(worker_ctx: WorkerContext) -> None:
    old_version = "oldmodel0001"
    dim = worker_ctx.model.dim
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(3, dim)).astype(np.float32)
    with worker_ctx.sessions.begin() as session:
        # an older model version with the same embedder, whose statistics the new version lacks
        session.add(
            PopulationStats(
                embedder=worker_ctx.model.embedder_name,
                model_version=old_version,
                stats=RunningStats.empty(dim).to_dict(),
                count=0,
                updated_at=utcnow(),
            )
        )
        call = Call(call_sid="CA" + "0" * 32, status=CallStatus.FINALISED.value, started_at=utcnow())
        session.add(call)
        session.flush()
        for seq, vector in enumerate(vectors):
            utterance = add_utterance_row(session, call.id, seq, step_ms=1000, length_ms=900, created_at=utcnow())
            for version in (old_version, worker_ctx.model.version) if seq == 2 else (old_version,):
                add_score_row(
                    session,
                    utterance.id,
                    model_version=version,
                    probability=0.5,
                    embedding=to_bytes(vector),
                    baseline_applied=False,
                    baseline_n=0,
                    features={},
                    created_at=utcnow(),
                )
    result = seed_from_calls(worker_ctx)
    # utterance 2 was scored by the current model already: its embedding is in the statistics
    assert result.utterances == 2
    row = _population(worker_ctx)
    assert row is not None and row.count == 2
    np.testing.assert_allclose(
        RunningStats.from_dict(row.stats).mean, vectors[:2].astype(np.float64).mean(axis=0), rtol=1e-5
    )


def test_fold_takes_one_row_or_many(worker_ctx: WorkerContext) -> None:
    dim = worker_ctx.model.dim
    with worker_ctx.sessions.begin() as session:
        assert fold(session, worker_ctx.model, np.ones(dim)).n == 1
        assert fold(session, worker_ctx.model, np.zeros((3, dim))).n == 4


def test_fold_refuses_embeddings_of_another_dimension(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as session, pytest.raises(ValueError, match="dimension"):
        fold(session, worker_ctx.model, np.ones(worker_ctx.model.dim + 1))
    assert _population(worker_ctx) is None
