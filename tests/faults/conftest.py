"""Fixtures of the fault tests only.

- ``private_redis`` / ``private_postgres``: a Redis and a PostgreSQL of the test's own, which a test may
  stop and start: other agents' tests share the services on 5432 and 6379, so a fault test must never
  take those down.
- ``fault_stack``: the one set-up every fault test shares (see :class:`tests.faults.helpers.FaultStack`):
  the private services together with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from bench.soak.services import PrivatePostgres, PrivateRedis, free_port
from tests.faults.helpers import FaultStack


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis server of this test's own on a free port (no persistence), stoppable at will."""
    server = PrivateRedis(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="session")
def private_postgres_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of this session's own (``initdb`` into a tmp dir, a free port)."""
    cluster = PrivatePostgres(tmp_path_factory.mktemp("private-pg"), free_port())
    cluster.init()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def private_postgres(private_postgres_cluster: PrivatePostgres) -> Iterator[PrivatePostgres]:
    """The private cluster, running, with a fresh migrated database for this test (``.url``).

    The test may stop and start the cluster; it is running again when the test ends.
    """
    private_postgres_cluster.start()
    private_postgres_cluster.new_database()
    try:
        yield private_postgres_cluster
    finally:
        private_postgres_cluster.start()
        private_postgres_cluster.drop_database()


@pytest.fixture
def fault_stack(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, pain_model_path: Path, tmp_path: Path
) -> Iterator[FaultStack]:
    """A private PostgreSQL (fresh migrated database) and Redis, the test model and this test's tmp dir;
    the processes the test starts through it are stopped, and its Redis client closed, afterwards."""
    stack = FaultStack(private_postgres, private_redis, pain_model_path, tmp_path, Redis.from_url(private_redis.url))
    try:
        yield stack
    finally:
        stack.close()
