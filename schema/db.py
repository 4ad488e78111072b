"""Engines and sessions, configured the same way for the web process, the workers and the CLI.

SQLite is the embedded default, so it gets what it needs to survive a web process and RQ workers
writing at once: WAL (readers never block the writer), a busy timeout (a writer waits for the lock
instead of failing at once) and foreign keys switched on (SQLite ignores them otherwise, which would
silently disable every ``ON DELETE CASCADE`` in :mod:`schema.models`). SQLite transactions are left
to the sqlite3 driver's default handling, which starts the real transaction at the first write: a
transaction that reads first and writes later then never needs a read-to-write lock upgrade, the case
in which WAL gives up with "database is locked" without honouring the busy timeout.

PostgreSQL gets ``pool_pre_ping`` so a connection dropped by a database restart or an idle timeout
is replaced instead of failing the next request.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from schema.models import Base

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long a SQLite writer waits for another writer's lock before raising."""


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def sqlite_file(url: str | URL) -> Path | None:
    """The database file a SQLite URL names, or None for in-memory databases."""
    parsed = make_url(url)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _on_sqlite_connect(foreign_keys: bool) -> Callable[[Any, Any], None]:
    def configure(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            # WAL makes NORMAL durable against application crashes; only power loss can lose the
            # last transactions, which the hotline's own systems would resend anyway
            cursor.execute("PRAGMA synchronous = NORMAL")
            cursor.execute(f"PRAGMA foreign_keys = {'ON' if foreign_keys else 'OFF'}")
        finally:
            cursor.close()

    return configure


def make_engine(url: str | URL, **options: Any) -> Engine:
    """An :class:`~sqlalchemy.Engine` for ``url`` with painline's connection settings.

    For a SQLite file the parent directory is created, so the embedded default works on a fresh
    checkout. ``options`` go to :func:`sqlalchemy.create_engine` and win over the defaults.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = sqlite_file(parsed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed, **options)
        event.listen(engine, "connect", _on_sqlite_connect(foreign_keys=True))
        return engine
    options.setdefault("pool_pre_ping", True)
    if parsed.get_backend_name() == "postgresql":
        # an unreachable server (not a refused connection) would otherwise hold a socket's thread
        # for the kernel's TCP timeout; a stream must keep reading, so give up after a few seconds
        options.setdefault("connect_args", {"connect_timeout": 5})
    return create_engine(parsed, **options)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to ``engine``.

    ``expire_on_commit=False`` so objects stay readable after the commit that ends a request or a
    job (rendering a template, building a log line) without a second round trip.
    """
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(factory: Callable[[], Session]) -> Iterator[Session]:
    """One unit of work: commit if the block finishes, roll back if it raises, always close."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def delete_all_rows(url: str | URL) -> None:
    """Delete every row of every painline table, children before parents; sequences keep counting.

    For throw-away databases only: the tests empty the shared test database after each test with it,
    and ``python -m bench.stream`` empties its bench database before each run.
    """
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()


__all__ = [
    "SQLITE_BUSY_TIMEOUT_MS",
    "delete_all_rows",
    "is_sqlite",
    "make_engine",
    "session_factory",
    "session_scope",
    "sqlite_file",
]
