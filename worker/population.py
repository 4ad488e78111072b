"""The deployment's population statistics: what every scored utterance folds into, and seeding them.

Unlabelled traffic is how painline learns its callers' scale (their phone network, their language);
``analysis.model`` blends these statistics with the training population's, weighted by how many
utterances they hold, so a new hotline moves onto its own scale as it is heard. Seeding gives it that
scale before go-live: from recordings of the hotline's callers (cut and embedded exactly as a call's
utterances) or from the stored embeddings of past calls, for instance after a model change, whose
new version starts with empty statistics. Seeding reads no labels and keeps no audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats
from analysis.model import PainModel
from analysis.segmentation import cut_clip
from schema.db import session_scope
from schema.models import PopulationStats, Score, utcnow
from worker.context import WorkerContext
from worker.featurize import featurize
from worker.rows import from_bytes, get_or_create_locked


def fold(session: Session, model: PainModel, embeddings: np.ndarray) -> RunningStats:
    """Add embeddings (one row each) to the model's population statistics, under a row lock."""
    rows = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    if rows.shape[1] != model.dim:
        raise ValueError(f"embedding dimension {rows.shape[1]} does not match model {model.version} ({model.dim})")
    row = get_or_create_locked(
        session,
        PopulationStats,
        {"embedder": model.embedder_name, "model_version": model.version},
        {"stats": RunningStats.empty(model.dim).to_dict(), "count": 0, "updated_at": utcnow()},
    )
    stats = RunningStats.from_dict(row.stats).update(rows)
    row.stats = stats.to_dict()
    row.count = stats.n
    row.updated_at = utcnow()
    return stats


@dataclass(frozen=True)
class SeedResult:
    """Counts only: what was folded in and what the statistics now hold."""

    utterances: int
    population_n: int
    clips_without_speech: int = 0


def seed_from_audio(ctx: WorkerContext, clips_8k: Sequence[np.ndarray]) -> SeedResult:
    """Fold recordings (8 kHz float audio as heard on the line) in, cut into utterances as calls are."""
    pieces = [cut_clip(np.asarray(clip, dtype=np.float32), ctx.vad) for clip in clips_8k]
    utterances = [u.samples for cut in pieces for u in cut]
    silent = sum(1 for cut in pieces if not cut)
    if not utterances:
        return SeedResult(0, _population_n(ctx), silent)
    features = featurize(ctx, utterances).features
    with session_scope(ctx.sessions) as session:
        stats = fold(session, ctx.model, features)
    return SeedResult(len(utterances), stats.n, silent)


def seed_from_calls(ctx: WorkerContext) -> SeedResult:
    """Fold in the stored embeddings of past calls scored by any model with the current model's embedder.

    Each utterance counts once, however many model versions scored it; the current model's own scores
    are skipped, since they are in its statistics already.
    """
    model = ctx.model
    with session_scope(ctx.sessions) as session:
        versions = set(
            session.scalars(
                select(PopulationStats.model_version).where(PopulationStats.embedder == model.embedder_name)
            )
        ) - {model.version}
        already = set(session.scalars(select(Score.utterance_id).where(Score.model_version == model.version)))
        seen: set[int] = set()
        rows: list[np.ndarray] = []
        if versions:
            for utterance_id, blob in session.execute(
                select(Score.utterance_id, Score.embedding)
                .where(Score.model_version.in_(versions))
                .order_by(Score.utterance_id)
            ):
                if utterance_id in seen or utterance_id in already:
                    continue
                vector = from_bytes(blob)
                if vector.shape != (model.dim,):
                    continue
                seen.add(utterance_id)
                rows.append(vector)
        if not rows:
            return SeedResult(0, _population_n(ctx))
        stats = fold(session, model, np.vstack(rows))
    return SeedResult(len(rows), stats.n)


def _population_n(ctx: WorkerContext) -> int:
    with session_scope(ctx.sessions) as session:
        row = session.scalars(
            select(PopulationStats).where(
                PopulationStats.embedder == ctx.model.embedder_name, PopulationStats.model_version == ctx.model.version
            )
        ).one_or_none()
        return 0 if row is None else int(row.count)


__all__ = ["SeedResult", "fold", "seed_from_audio", "seed_from_calls"]
