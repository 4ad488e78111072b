"""Fault-injection fixtures (loaded through ``pytest_plugins`` in conftest).

- ``reliability``: the session's :class:`tests.reliability.ReliabilityRecorder`; call
  ``reliability.record_outcome(name, category, detail, survived, lost=0, **counts)``. The rows are
  merged into ``bench/results/reliability.json`` when the session ends (see ``tests/reliability.py``).

The private-service fixtures (a Redis and a PostgreSQL of the test's own, which a test may stop and
start) follow below: other agents' tests share the services on 5432 and 6379, so a fault test must
never take those down.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak.services import PrivatePostgres, PrivateRedis, free_port
from tests.reliability import RECORDER, ReliabilityRecorder


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[ReliabilityRecorder]:
    """The session recorder, with the current test's node id stamped on the rows it records."""
    RECORDER.current_test = request.node.nodeid
    try:
        yield RECORDER
    finally:
        RECORDER.current_test = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability rows once, at the end (merged by name into the existing file)."""
    path = RECORDER.write()
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reliability table: {len(RECORDER.outcomes)} row(s) merged into {path}")


# ---------------------------------------------------------------------------------------------------
# private services


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
