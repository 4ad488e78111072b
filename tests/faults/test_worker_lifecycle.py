"""A worker stops when asked and only then: SIGTERM ends it, a Redis restart does not.

``painline.workers.run_worker`` starts a fresh RQ worker when RQ's quits because Redis went away;
it must still honour a warm shutdown, whether the worker is idle (RQ raises internally and sets no
stop flag) or busy.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from redis import Redis

from bench.soak.services import PrivatePostgres, PrivateRedis
from tests.faults.helpers import worker


@pytest.mark.parametrize("fork", [False, True], ids=["simple", "fork"])
def test_sigterm_stops_an_idle_worker(
    private_postgres: PrivatePostgres, private_redis: PrivateRedis, pain_model_path: Path, tmp_path: Path,
    fork: bool,
) -> None:
    connection = Redis.from_url(private_redis.url)
    process = worker(private_postgres.url, private_redis.url, pain_model_path, tmp_path, connection, "w", fork=fork)
    try:
        assert process.process is not None
        # RQ registers the worker a moment before it installs its signal handlers; give it that
        # moment so the warm-shutdown path is the one exercised (a SIGTERM before it simply kills)
        time.sleep(2.0)
        process.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15.0
        while process.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.process.poll() in (0, -signal.SIGTERM), "the worker did not stop on SIGTERM"
        assert "starting a new RQ worker" not in (tmp_path / "w.log").read_text()
    finally:
        process.stop()
        connection.close()
