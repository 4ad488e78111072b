"""What one worker process knows of the population statistics: the shard it writes, and the others' as last read.

Kept apart from :mod:`worker.population` because :class:`worker.context.WorkerContext` holds one per
process and that module imports the context. The maths and the database work are in
:mod:`worker.population`; the design is described there.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, field

from analysis.baseline import RunningStats

POPULATION_SHARDS = 64
"""Shard numbers a worker draws from. Enough that a deployment's workers rarely draw the same one
(a collision costs a locked write, then the worker moves on), few enough that re-reading every shard
of a model every few seconds stays small."""


@dataclass
class PopulationView:
    """This process's shard number, its exact statistics, and the merge of every other shard as last read.

    ``own`` is None until the first job loads it (or after :meth:`invalidate`); ``key`` is the
    (embedder, model version) it was loaded for, so a context switched to another model reloads.
    """

    shard: int = field(default_factory=lambda: secrets.randbelow(POPULATION_SHARDS))
    key: tuple[str, str] | None = None
    own: RunningStats | None = None
    others: RunningStats | None = None
    others_read_at: float = -math.inf

    def invalidate(self) -> None:
        """Forget what was read, so the next job re-reads every shard (after a seed, or a moved shard)."""
        self.own = None
        self.others_read_at = -math.inf

    def current(self) -> RunningStats | None:
        """The population a score is standardised by: every shard merged, None while empty."""
        if self.own is None or self.others is None:
            return None
        merged = self.others.merged(self.own) if self.others.n else self.own.copy()
        return merged if merged.n > 0 else None


__all__ = ["POPULATION_SHARDS", "PopulationView"]
