"""The fault stack: the one set-up every fault test shares (see :class:`tests.faults.helpers.FaultStack`).

A fixture of this folder only: no other test needs the private services together with the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

from bench.soak.services import PrivatePostgres, PrivateRedis
from tests.faults.helpers import FaultStack


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
