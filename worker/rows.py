"""Small database helpers the jobs share: locked get-or-create, and vectors stored as bytes."""

from __future__ import annotations

from typing import Any, TypeVar

import numpy as np
from sqlalchemy import Executable, select
from sqlalchemy.orm import Session

T = TypeVar("T")


def to_bytes(vector: np.ndarray) -> bytes:
    """float32 little-endian bytes: how every embedding column stores a vector."""
    return np.asarray(vector, dtype="<f4").ravel().tobytes()


def from_bytes(blob: bytes) -> np.ndarray:
    """The float64 vector stored by :func:`to_bytes` (float64 for the statistics maths)."""
    return np.frombuffer(bytes(blob), dtype="<f4").astype(np.float64)


def get_or_create_locked(session: Session, model: type[T], keys: dict[str, Any], defaults: dict[str, Any]) -> T:
    """The row of ``model`` matching ``keys`` (a unique constraint), created if absent, row-locked.

    Two jobs may both find no row and both try to create it. ``INSERT ... ON CONFLICT DO NOTHING``
    (PostgreSQL and SQLite both support it) lets exactly one insert win without aborting the
    other's transaction; both then read the row with ``SELECT ... FOR UPDATE``, so the
    read-modify-write that follows is serialised on PostgreSQL. SQLite ignores ``FOR UPDATE`` but
    allows one writer at a time, and the caller's transaction has already written by then.
    """
    stmt = select(model).filter_by(**keys).with_for_update()
    row = session.scalars(stmt).one_or_none()
    if row is not None:
        return row
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        upsert: Executable = (
            postgresql_insert(model).values(**keys, **defaults).on_conflict_do_nothing(index_elements=list(keys))
        )
    elif dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        upsert = sqlite_insert(model).values(**keys, **defaults).on_conflict_do_nothing(index_elements=list(keys))
    else:  # pragma: no cover - painline supports exactly these two
        raise NotImplementedError(f"no upsert for dialect {dialect}")
    session.execute(upsert)
    return session.scalars(stmt.execution_options(populate_existing=True)).one()


__all__ = ["from_bytes", "get_or_create_locked", "to_bytes"]
