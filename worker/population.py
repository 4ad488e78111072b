"""The deployment's population statistics: what every scored utterance folds into, and seeding them.

Unlabelled traffic is how painline learns its callers' scale (their phone network, their language);
``analysis.model`` blends these statistics with the training population's, weighted by how many
utterances they hold, so a new hotline moves onto its own scale as it is heard. Seeding gives it that
scale before go-live: from recordings of the hotline's callers (cut and embedded exactly as a call's
utterances) or from the stored embeddings of past calls, for instance after a model change, whose
new version starts with empty statistics. Seeding reads no labels and keeps no audio.

Shards, not one row. One row updated under a lock by every scored utterance serialised all the
workers (docs/scaling.md). The statistics of a model are therefore kept as shards, one
``population_stats`` row per shard number, and the population is their merge (Chan's formula,
:meth:`RunningStats.merge_in`), which is exact whatever the order. Each worker process holds one
shard (:class:`PopulationView`) and is the only writer of it in the ordinary case, so:

- it knows its own shard exactly, with no read: it wrote every utterance in it;
- it writes the shard in the same statement as the score (``worker.scoring``), guarded by the count
  it expects, so the score and its contribution still commit or roll back together and a retried
  job still counts once. No statistics wait in memory to be flushed, and none are lost in a crash;
- the other workers' shards are re-read at most every :data:`REFRESH_S` seconds. What a score is
  standardised by is therefore this worker's own contributions up to the last utterance plus the
  others' up to a few seconds ago, then shrunk toward the training population exactly as before
  (:func:`analysis.model.shrunk_population`). With one worker it is exactly the old single row.

If the guard finds the shard written by someone else (two processes drew the same shard, or a seed
ran), the write falls back to a locked read-modify-write of that shard, and the worker draws another
shard for its next utterances, so collisions do not persist.
"""

from __future__ import annotations

import secrets
import time
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
from worker.shards import POPULATION_SHARDS, PopulationView

REFRESH_S = 5.0
"""How old the other workers' shards may be when a score reads them: a few seconds of other
workers' traffic is a negligible part of a population that counts thousands of utterances, and
re-reading every shard per utterance would cost a statement and its JSON each time."""


def fold(session: Session, model: PainModel, embeddings: np.ndarray, shard: int = 0) -> RunningStats:
    """Add embeddings (one row each) to one shard of the model's population statistics, under a row lock."""
    rows = np.atleast_2d(np.asarray(embeddings, dtype=np.float64))
    if rows.shape[1] != model.dim:
        raise ValueError(f"embedding dimension {rows.shape[1]} does not match model {model.version} ({model.dim})")
    row = get_or_create_locked(
        session,
        PopulationStats,
        {"embedder": model.embedder_name, "model_version": model.version, "shard": shard},
        {"stats": RunningStats.empty(model.dim).to_dict(), "count": 0, "updated_at": utcnow()},
    )
    stats = RunningStats.from_dict(row.stats).update(rows)
    row.stats = stats.to_dict()
    row.count = stats.n
    row.updated_at = utcnow()
    return stats


def shard_rows(session: Session, model: PainModel) -> dict[int, RunningStats]:
    """Every shard of the model's population statistics, by shard number (one statement)."""
    return {
        int(shard): RunningStats.from_dict(stats)
        for shard, stats in session.execute(
            select(PopulationStats.shard, PopulationStats.stats).where(
                PopulationStats.embedder == model.embedder_name, PopulationStats.model_version == model.version
            )
        )
    }


def merge_shards(shards: dict[int, RunningStats], dim: int) -> RunningStats:
    """The population the shards make together, merged in shard order (so every reader gets the same bits)."""
    total = RunningStats.empty(dim)
    for number in sorted(shards):
        total.merge_in(shards[number])
    return total


def merged_population(session: Session, model: PainModel) -> RunningStats | None:
    """The model's population statistics, all shards merged; None when nothing was ever folded in."""
    shards = shard_rows(session, model)
    return merge_shards(shards, model.dim) if shards else None


def refresh(view: PopulationView, session: Session, model: PainModel, *, now: float | None = None) -> None:
    """Load this worker's shard and re-read the others', if the view is cold, stale or for another model."""
    now = time.monotonic() if now is None else now
    key = (model.embedder_name, model.version)
    if view.key == key and view.own is not None and now - view.others_read_at < REFRESH_S:
        return
    shards = shard_rows(session, model)
    view.key = key
    view.own = shards.pop(view.shard, RunningStats.empty(model.dim))
    view.others = merge_shards(shards, model.dim)
    view.others_read_at = now


def move_on(view: PopulationView) -> None:
    """After a guarded write found the shard written by someone else: draw another shard.

    The new shard's contents are unknown, so the view goes cold and the next utterance reloads it.
    """
    view.shard = next_shard(view.shard)
    view.invalidate()


def next_shard(current: int) -> int:
    """A shard other than ``current``."""
    return (current + 1 + secrets.randbelow(POPULATION_SHARDS - 1)) % POPULATION_SHARDS


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
        fold(session, ctx.model, features, ctx.population.shard)
        total = merged_population(session, ctx.model)
    ctx.population.invalidate()  # its own shard changed under it
    return SeedResult(len(utterances), 0 if total is None else total.n, silent)


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
        fold(session, model, np.vstack(rows), ctx.population.shard)
        total = merged_population(session, model)
    ctx.population.invalidate()
    return SeedResult(len(rows), 0 if total is None else total.n)


def _population_n(ctx: WorkerContext) -> int:
    with session_scope(ctx.sessions) as session:
        total = merged_population(session, ctx.model)
        return 0 if total is None else total.n


__all__ = [
    "REFRESH_S",
    "PopulationView",
    "SeedResult",
    "fold",
    "merge_shards",
    "merged_population",
    "move_on",
    "next_shard",
    "refresh",
    "seed_from_audio",
    "seed_from_calls",
    "shard_rows",
]
