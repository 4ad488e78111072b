"""baseline_contributions.speech_s: how much speech each contribution holds

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06 02:45:00

Written by hand. The baseline page shows each contribution's length so an admin can tell one
enrolment utterance from another before excluding it. A call's utterance has its length on its
``utterances`` row, but an enrolment utterance has no row and its audio is discarded once enrolled,
so the length must be kept with the contribution. Nullable: rows written before this have none.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("baseline_contributions") as batch:
        batch.add_column(sa.Column("speech_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("baseline_contributions") as batch:
        batch.drop_column("speech_s")
