"""scores.speaker_vector: each utterance's d-vector, so the speaker check can pool a call's speech

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 20:50:00

Written by hand. A nullable encrypted column (``LargeBinary`` underneath, like the other encrypted
bytes columns): scores written before it, and scores of callers without a voiceprint, have none.
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("speaker_vector", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("scores") as batch:
        batch.drop_column("speaker_vector")
