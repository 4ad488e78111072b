"""The in-process RQ workers (``painline.workers``) against the installed redis-py and rq.

On a fresh machine, redis-py 8.2 with rq 3.0 made every teardown of an RQ worker wait up to a
minute for RQ's command-channel thread, and the demo and tests tore a burst worker down after every
pass. These tests run against a real Redis and fail if either returns.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis as redis_py
import rq
from redis import Redis
from rq import Queue

from painline.workers import BackgroundWorker, PainlineSimpleWorker

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"

STARTED: dict[str, float] = {}


def record_start(key: str) -> str:
    """The job: note when a worker started it."""
    STARTED[key] = time.monotonic()
    return key


@pytest.fixture
def queue() -> Iterator[Queue]:
    connection = Redis.from_url(os.environ.get("PAINLINE_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL)
    q = Queue(f"painline-test-workers-{uuid.uuid4().hex[:8]}", connection=connection)
    yield q
    q.empty()
    q.delete(delete_jobs=True)
    connection.close()


def test_background_worker_picks_up_a_job_within_a_second(queue: Queue) -> None:
    worker = BackgroundWorker(queue).start()
    try:
        time.sleep(1.5)  # idle: blocked on the queue, past its first poll
        key = uuid.uuid4().hex
        enqueued = time.monotonic()
        job = queue.enqueue(record_start, key)
        deadline = enqueued + 5.0
        while key not in STARTED and time.monotonic() < deadline:
            time.sleep(0.01)
        versions = f"redis {redis_py.__version__}, rq {rq.__version__}"
        assert key in STARTED, f"job {job.id} not started within 5 s ({versions})"
        assert STARTED[key] - enqueued < 1.0
        # a second job right after the first: the worker is not torn down between jobs
        second = uuid.uuid4().hex
        enqueued = time.monotonic()
        queue.enqueue(record_start, second)
        while second not in STARTED and time.monotonic() < enqueued + 5.0:
            time.sleep(0.01)
        assert STARTED.get(second, float("inf")) - enqueued < 1.0
    finally:
        stopping = time.monotonic()
        worker.stop(timeout_s=30.0)
        stop_s = time.monotonic() - stopping
    assert worker.error is None
    assert worker.jobs_run == 2
    assert stop_s < 5.0, f"stopping the background worker took {stop_s:.1f} s"
    assert not worker._thread.is_alive()


def test_worker_teardown_does_not_wait_for_the_command_channel(queue: Queue) -> None:
    """The race that hung fresh installs, forced: the command channel has seen its unsubscribe
    confirmation before RQ's teardown stops the thread, which then waits for a new subscription."""
    worker = PainlineSimpleWorker([queue], connection=queue.connection)
    worker.subscribe()
    deadline = time.monotonic() + 5
    while not worker.pubsub.subscribed and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.pubsub.unsubscribe()
    time.sleep(0.5)  # the thread reads the confirmation and waits to be subscribed again
    started = time.monotonic()
    worker.unsubscribe()
    assert time.monotonic() - started < 3.0
    assert not worker.pubsub_thread.is_alive()


def test_burst_passes_end_promptly(queue: Queue) -> None:
    """A burst pass on an empty queue (what the tests' helpers run) returns in well under a minute."""
    for _ in range(3):
        started = time.monotonic()
        PainlineSimpleWorker([queue], connection=queue.connection).work(burst=True, logging_level="WARNING")
        assert time.monotonic() - started < 5.0


def test_background_worker_stops_while_a_job_runs(queue: Queue) -> None:
    """stop() lets the running job complete, then returns; the job is not abandoned."""
    worker = BackgroundWorker(queue).start()
    key = uuid.uuid4().hex
    job = queue.enqueue(time.sleep, 1.0)
    queue.enqueue(record_start, key)
    deadline = time.monotonic() + 5
    while job.get_status(refresh=True) != rq.job.JobStatus.STARTED and time.monotonic() < deadline:
        time.sleep(0.02)
    stopper = threading.Thread(target=worker.stop)
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive()
    assert job.get_status(refresh=True) == rq.job.JobStatus.FINISHED
    assert worker.error is None
