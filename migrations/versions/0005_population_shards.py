"""population_stats.shard: the population statistics split into per-worker shards

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14 10:00:00

Written by hand. Every scored utterance used to update the one population row of its model under a
row lock, which serialised all scoring workers. Each worker now folds into a shard of its own and
readers merge the shards, so the unique key gains the shard number. Existing rows become shard 0,
which keeps what they hold.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("population_stats") as batch:
        batch.add_column(sa.Column("shard", sa.Integer(), server_default="0", nullable=False))
        batch.drop_constraint(op.f("uq_population_stats_embedder_model_version"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_population_stats_embedder_model_version_shard"), ["embedder", "model_version", "shard"]
        )
        batch.create_check_constraint(op.f("ck_population_stats_shard_nonnegative"), "shard >= 0")


def downgrade() -> None:
    # merging the shards back into one row needs the RunningStats maths, so a downgrade keeps shard 0
    # only; run `painline population seed` from past calls afterwards to restore the rest
    op.execute("DELETE FROM population_stats WHERE shard <> 0")
    with op.batch_alter_table("population_stats") as batch:
        batch.drop_constraint(op.f("ck_population_stats_shard_nonnegative"), type_="check")
        batch.drop_constraint(op.f("uq_population_stats_embedder_model_version_shard"), type_="unique")
        batch.create_unique_constraint(
            op.f("uq_population_stats_embedder_model_version"), ["embedder", "model_version"]
        )
        batch.drop_column("shard")
