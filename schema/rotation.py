"""Key rotation: re-encrypt every encrypted column under the newest data key, in batches, audited.

Run by ``painline keys rotate`` after the new key has been put first in ``PAINLINE_DATA_KEYS`` on
*every* process (web, workers, CLI) and they have restarted; only then is the old key removed. The
order matters: a process still on the old ring would write values the new-only ring cannot read.

Values are read and written as stored bytes (markers and tokens, not the plaintext types), so the
walk needs no model classes and never holds more than one batch in memory. Each batch is its own
transaction. A row is rewritten only if it still holds the value read (``WHERE column = old``): a job
that updated a baseline between the read and the write wins, and its value, written by a process
that already has the new key first, needs no rotation. ``plain:`` values (written before keys were
configured) are encrypted for the first time, so the same command turns an unencrypted deployment
into an encrypted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, Integer, LargeBinary, column, select, table, update
from sqlalchemy.orm import Session

from schema.audit import record
from schema.crypto import ENCRYPTED_COLUMNS, PLAIN_MARKER, KeyRing

DEFAULT_BATCH = 500


@dataclass
class RotationResult:
    """Counts per ``table.column``; no values, no keys."""

    rotated: dict[str, int] = field(default_factory=dict)
    first_encrypted: dict[str, int] = field(default_factory=dict)  # were "plain:" before
    skipped_changed: dict[str, int] = field(default_factory=dict)  # rewritten concurrently

    @property
    def total(self) -> int:
        return sum(self.rotated.values())


def rotate_keys(engine: Engine, ring: KeyRing, *, actor: str, batch_size: int = DEFAULT_BATCH) -> RotationResult:
    """Re-encrypt every value of every encrypted column with ``ring``'s newest key; audit the counts.

    Raises :class:`schema.crypto.DataKeyError` on the first value no key in ``ring`` opens (nothing of
    that batch is written; earlier batches stay rotated, which is harmless: run it again once the
    right keys are configured).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    result = RotationResult()
    for table_name, primary_key, column_name in ENCRYPTED_COLUMNS:
        name = f"{table_name}.{column_name}"
        pk = primary_key[0]
        t = table(table_name, column(pk, Integer), column(column_name, LargeBinary))
        rotated = first = skipped = 0
        last: int | None = None
        while True:
            with engine.begin() as connection:
                query = (
                    select(t.c[pk], t.c[column_name])
                    .where(t.c[column_name].is_not(None))
                    .order_by(t.c[pk])
                    .limit(batch_size)
                )
                if last is not None:
                    query = query.where(t.c[pk] > last)
                rows = connection.execute(query).all()
                if not rows:
                    break
                for key, stored in rows:
                    stored = bytes(stored)
                    fresh = ring.rotate(stored)
                    changed = connection.execute(
                        update(t).where(t.c[pk] == key, t.c[column_name] == stored).values({column_name: fresh})
                    ).rowcount
                    if changed:
                        rotated += 1
                        first += stored.startswith(PLAIN_MARKER)
                    else:
                        skipped += 1
                last = rows[-1][0]
        result.rotated[name] = rotated
        result.first_encrypted[name] = first
        result.skipped_changed[name] = skipped
    with Session(engine) as session, session.begin():
        record(
            session,
            actor,
            "keys.rotate",
            "data_keys",
            "all",
            keys=ring.size,
            rotated=result.rotated,
            first_encrypted=result.first_encrypted,
            skipped_changed=result.skipped_changed,
        )
    return result


__all__ = ["DEFAULT_BATCH", "RotationResult", "rotate_keys"]
