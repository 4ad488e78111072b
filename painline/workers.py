"""Starting RQ workers: the worker context built once per process, then the right RQ worker class.

A worker process loads the model and its embedders once (:func:`build_context`), installs the
context (``worker.context.install``) and only then starts taking jobs, so no job pays for a model
load. Which RQ worker class runs the jobs:

- :class:`rq.SimpleWorker` (the default): jobs run in the worker process itself, reusing its
  database and Redis connections. ``python -m bench.worker`` (``docs/scaling.md``) put RQ's
  bookkeeping at 2-5% of a scoring job's CPU this way, in two quiet runs;
- :class:`rq.Worker` (``--fork``): every job runs in a forked child, so a job that crashes or
  leaks cannot take the worker down; the child inherits the loaded model copy-on-write and opens
  fresh database connections. The fork and the reconnect cost 8-13% of the job in the same runs,
  over the 10% budget, so it is opt-in. Without it a crashed worker process is restarted by its
  supervisor (docker-compose ``restart``, systemd) and its interrupted job recovered by the sweep,
  which runs RQ's abandoned-job cleanup and re-enqueues any utterance still pending;
- :class:`ThreadWorker`: a SimpleWorker that can run in a non-main thread (the demo and the tests
  run one next to the web server): no signal handlers, and job timeouts by timer instead of SIGALRM.

Interval retries (``Retry(interval=[...])``, used by the finalise job) are parked in RQ's scheduled
registry; only a worker started with the scheduler moves them back to the queue, so
:func:`run_worker` starts it by default.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.timeouts import TimerDeathPenalty

from painline import redis_conn
from painline.config import Settings

log = logging.getLogger(__name__)


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that runs outside the main thread (Python only allows signals there)."""

    death_penalty_class = TimerDeathPenalty

    def _install_signal_handlers(self) -> None:
        """Leave signals to the main thread; stop this worker through :class:`BackgroundWorker`."""


def default_worker_class(fork: bool = False) -> type[Worker] | type[SimpleWorker]:
    """:class:`rq.SimpleWorker`, or the forking :class:`rq.Worker` when asked and the platform can fork."""
    if fork and hasattr(os, "fork"):
        return Worker
    return SimpleWorker


def build_context(settings: Settings, connection: Redis | None, *, speaker: bool = True) -> Any:
    """A ``worker.context.WorkerContext`` for ``settings``: model, embedders, engine, Redis.

    Raises ``FileNotFoundError`` (with a hint to train) if the model artifact is missing and
    ``analysis.model.ModelMismatchError`` if it does not fit the configured embedder.
    """
    from painline.datakeys import install_data_keys
    from worker.context import WorkerContext

    install_data_keys(settings)  # before the engine: jobs read and write the encrypted columns
    return WorkerContext.build(
        database_url=settings.resolved_database_url,
        redis=connection,
        model_path=settings.model_path,
        embedder=settings.embedder,
        speaker=speaker,
        flag_threshold=settings.flag_threshold,
        min_speech_s=settings.min_speech_s,
        flag_webhook_url=settings.flag_webhook_url,
        flag_webhook_secret=settings.flag_webhook_secret,
    )


def install_context(ctx: Any) -> Any:
    from worker.context import install

    return install(ctx)


def run_worker(
    settings: Settings,
    *,
    fork: bool = False,
    burst: bool = False,
    with_scheduler: bool = True,
    speaker: bool = True,
    name: str | None = None,
    logging_level: str = "INFO",
) -> bool:
    """Build and install the context, then work the configured queue; True if any job ran.

    RQ's worker quits when Redis goes away under it (a restart, a failover). Exiting would make the
    supervisor restart the process and reload the model, and a SimpleWorker's interrupted job would
    wait out its lease, so instead this waits for Redis to answer again and starts a fresh RQ worker
    on the same loaded context. It returns only for a burst run or a requested stop (SIGTERM).
    """
    connection = redis_conn.connect(settings, for_worker=True)
    ctx = build_context(settings, connection, speaker=speaker)
    install_context(ctx)
    worker_class = default_worker_class(fork)
    queue = Queue(settings.queue_name, connection=connection)
    worked = False
    try:
        while True:
            worker = worker_class([queue], connection=connection, name=name)
            name = None  # a restarted worker takes a new name: the lost one may still be registered
            log.info("worker %s (%s) on queue %s, model %s", worker.name, worker_class.__name__,
                     settings.queue_name, ctx.model.version)
            try:
                worked = worker.work(burst=burst, with_scheduler=with_scheduler,
                                     logging_level=logging_level) or worked
            except (RedisError, OSError) as exc:  # raised from RQ's teardown while Redis is down
                log.warning("worker %s: Redis unavailable (%s)", worker.name, type(exc).__name__)
            # a SIGTERM/SIGINT (warm shutdown) records when it came, idle or busy
            if burst or worker._stop_requested or worker._shutdown_requested_date is not None:
                return worked
            _wait_for_redis(connection)
    finally:
        ctx.engine.dispose()


def _wait_for_redis(connection: Redis, *, max_wait_s: float = 30.0) -> None:
    """Block until Redis answers PING, backing off from 0.5 s to ``max_wait_s`` between tries."""
    delay = 0.5
    time.sleep(delay)  # also paces restarts if the worker quit for a reason other than Redis
    while True:
        try:
            connection.ping()
            log.warning("Redis is back: starting a new RQ worker")
            return
        except (RedisError, OSError):
            time.sleep(delay)
            delay = min(delay * 2, max_wait_s)


class BackgroundWorker:
    """Work a queue from a daemon thread until :meth:`stop`: short burst passes, one after another.

    Each pass is a fresh :class:`ThreadWorker` in burst mode with the scheduler, so jobs that are
    due for a retry are moved back to the queue between passes. The installed worker context is
    whatever the process installed before :meth:`start`.
    """

    def __init__(self, queue: Queue, *, job_class: type[Job] | None = None, idle_s: float = 0.2,
                 logging_level: str = "WARNING") -> None:
        self.queue = queue
        self.job_class = job_class or queue.job_class
        self.idle_s = idle_s
        self.logging_level = logging_level
        self.passes = 0
        self.busy_passes = 0  # passes that ran at least one job
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="painline-worker", daemon=True)

    def start(self) -> BackgroundWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                worker = ThreadWorker([self.queue], connection=self.queue.connection,
                                      job_class=self.job_class)
                if worker.work(burst=True, with_scheduler=True, logging_level=self.logging_level):
                    self.busy_passes += 1
                self.passes += 1
                self._stop.wait(self.idle_s)
        except BaseException as exc:  # reported by stop(); a daemon thread must not die silently
            self.error = exc
            log.exception("background worker stopped with an error")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Finish the current pass (a running job completes), then return."""
        self._stop.set()
        self._thread.join(timeout_s)


__all__ = [
    "BackgroundWorker",
    "ThreadWorker",
    "build_context",
    "default_worker_class",
    "install_context",
    "run_worker",
]
