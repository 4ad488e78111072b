"""Fixtures of the schema tests only (the shared database fixtures are in ``tests/db_fixtures.py``).

- ``db_session``: a session on ``migrated_engine``, rolled back and closed after the test.
- ``fresh_db_url``: a brand-new empty database per test (both backends), for tests that must see a
  database nobody has migrated yet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from schema.db import session_factory
from tests.db_fixtures import BACKENDS, temporary_postgres_database


@pytest.fixture(params=BACKENDS)
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database of each backend in turn, just for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.sqlite'}"
        return
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture
def db_session(migrated_engine: Engine) -> Iterator[Session]:
    session = session_factory(migrated_engine)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
