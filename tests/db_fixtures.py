"""Database fixtures shared by every area's tests (loaded through ``pytest_plugins`` in conftest).

PostgreSQL tests run in a database of their own, ``painline_test_<random>``, created through the
shared ``test`` database and dropped at the end of the session, because other helpers' tests use the
same server at the same time. SQLite tests use a file under pytest's tmp directory.

Fixtures:

- ``pg_url`` / ``sqlite_url``: session-wide empty databases (not migrated).
- ``db_url``: parametrised over both backends (test ids ``sqlite`` and ``postgresql``).
- ``migrated_engine``: an engine on ``db_url`` migrated to head; emptied of rows after each test.

``db_session`` and ``fresh_db_url``, which only the schema tests use, are in ``tests/schema/conftest.py``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from schema.db import make_engine
from schema.migrate import upgrade
from schema.models import Base

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
BACKENDS = ("sqlite", "postgresql")


def postgres_admin_url() -> str:
    return os.environ.get("PAINLINE_TEST_POSTGRES_URL") or DEFAULT_TEST_POSTGRES_URL


@contextmanager
def temporary_postgres_database() -> Iterator[str]:
    """Create ``painline_test_<random>`` on the test server, yield its URL, then drop it."""
    admin_url = make_url(postgres_admin_url())
    name = f"painline_test_{secrets.token_hex(6)}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                # FORCE: a test that leaked a connection must not leave the database behind
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path: Path = tmp_path_factory.mktemp("sqlite") / "painline.sqlite"
    return f"sqlite:///{path}"


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """The session database of each backend in turn."""
    fixture = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return request.getfixturevalue(fixture)


def _delete_all_rows(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in reversed(Base.metadata.sorted_tables):
            conn.execute(table.delete())


@pytest.fixture
def migrated_engine(db_url: str) -> Iterator[Engine]:
    """An engine on ``db_url`` at the head revision, with no rows; rows are deleted afterwards."""
    upgrade(db_url)
    engine = make_engine(db_url)
    _delete_all_rows(engine)
    try:
        yield engine
    finally:
        engine.dispose()
        # a test may have downgraded: bring the shared database back to head before emptying it
        upgrade(db_url)
        cleanup = make_engine(db_url)
        try:
            _delete_all_rows(cleanup)
        finally:
            cleanup.dispose()
