"""encrypt biometric and health columns at rest

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 04:30:00

Written by hand (see :mod:`schema.crypto` for the design). Every value of the encrypted columns gets
a storage marker: ``fernet:`` + a Fernet token when this process has data keys installed
(``painline migrate`` installs ``PAINLINE_DATA_KEYS`` before upgrading), else ``plain:`` + the value
as it was, which ``painline keys rotate`` encrypts later. Bytes columns keep their ``LargeBinary``
type; the two JSON columns (``baselines.stats``, ``scores.features``) become ``LargeBinary``, since a
ciphertext is not JSON: a new column is filled from the old one in batches, the old one dropped and
the new one renamed (batch mode, so SQLite rebuilds the table the same way).

The downgrade reverses it and needs the keys for values that are encrypted. Offline SQL
(``alembic upgrade --sql``) renders the DDL only: moving data needs Python, so migrate online.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from schema.crypto import seal, unseal

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500
BYTES_COLUMNS = (
    ("utterance_audio", "utterance_id", "mulaw"),
    ("scores", "id", "embedding"),
    ("baseline_contributions", "id", "embedding"),
    ("voiceprints", "id", "vector"),
)
JSON_COLUMNS = (("baselines", "id", "stats", False), ("scores", "id", "features", True))
JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def _rewrite(table: str, pk: str, source: str, source_type: Any, target: str, target_type: Any,
             convert: Callable[[Any], Any]) -> None:
    """``target = convert(source)`` for every row with a non-null ``source``, BATCH rows at a time by key."""
    if op.get_context().as_sql:
        return  # offline (--sql) output is DDL for review or an empty database: there are no rows to move
    bind = op.get_bind()
    t = sa.table(table, sa.column(pk, sa.Integer), sa.column(source, source_type),
                 *([sa.column(target, target_type)] if target != source else []))
    last = None
    while True:
        query = sa.select(t.c[pk], t.c[source]).where(t.c[source].is_not(None)).order_by(t.c[pk]).limit(BATCH)
        if last is not None:
            query = query.where(t.c[pk] > last)
        rows = bind.execute(query).all()
        if not rows:
            return
        for key, value in rows:
            bind.execute(sa.update(t).where(t.c[pk] == key).values({target: convert(value)}))
        last = rows[-1][0]


def _to_stored_json(value: Any) -> bytes:
    if isinstance(value, str):  # a driver that hands JSON back as text
        value = json.loads(value)
    return seal(json.dumps(value, separators=(",", ":")).encode("utf-8"))


def upgrade() -> None:
    for table, pk, column in BYTES_COLUMNS:
        _rewrite(table, pk, column, sa.LargeBinary, column, sa.LargeBinary, lambda v: seal(bytes(v)))
    for table, pk, column, nullable in JSON_COLUMNS:
        sealed = f"{column}_sealed"
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(sealed, sa.LargeBinary(), nullable=True))
        _rewrite(table, pk, column, JSON_TYPE, sealed, sa.LargeBinary, _to_stored_json)
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
            batch.alter_column(sealed, new_column_name=column, existing_type=sa.LargeBinary(), nullable=nullable)


def downgrade() -> None:
    for table, pk, column, nullable in JSON_COLUMNS:
        opened = f"{column}_opened"
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column(opened, JSON_TYPE, nullable=True))
        _rewrite(table, pk, column, sa.LargeBinary, opened, JSON_TYPE, lambda v: json.loads(unseal(v)))
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
            batch.alter_column(opened, new_column_name=column, existing_type=JSON_TYPE, nullable=nullable)
    for table, pk, column in BYTES_COLUMNS:
        _rewrite(table, pk, column, sa.LargeBinary, column, sa.LargeBinary, lambda v: unseal(v))
