"""Starting RQ workers: the worker context built once per process, then the right RQ worker class.

A worker process loads the model and its embedders once (:func:`build_context`), installs the
context (``worker.context.install``) and only then starts taking jobs, so no job pays for a model
load. Which RQ worker class runs the jobs:

- :class:`rq.Worker` (the default where ``os.fork`` exists): every job runs in a forked child, so a
  job that crashes or leaks cannot take the worker down; the child inherits the loaded model
  copy-on-write, and ``worker.context`` gives it fresh database connections after the fork;
- :class:`rq.SimpleWorker` (``--simple``): jobs run in the worker process itself; faster per job,
  and the only choice where there is no ``fork``;
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
from typing import Any

from redis import Redis
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


def default_worker_class(simple: bool = False) -> type[Worker] | type[SimpleWorker]:
    """The forking :class:`rq.Worker` where the platform can fork, else :class:`rq.SimpleWorker`."""
    if simple or not hasattr(os, "fork"):
        return SimpleWorker
    return Worker


def build_context(settings: Settings, connection: Redis | None, *, speaker: bool = True) -> Any:
    """A ``worker.context.WorkerContext`` for ``settings``: model, embedders, engine, Redis.

    Raises ``FileNotFoundError`` (with a hint to train) if the model artifact is missing and
    ``analysis.model.ModelMismatchError`` if it does not fit the configured embedder.
    """
    from worker.context import WorkerContext

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
    simple: bool = False,
    burst: bool = False,
    with_scheduler: bool = True,
    speaker: bool = True,
    name: str | None = None,
    logging_level: str = "INFO",
) -> bool:
    """Build and install the context, then work the configured queue; True if any job ran."""
    connection = redis_conn.connect(settings, for_worker=True)
    ctx = build_context(settings, connection, speaker=speaker)
    install_context(ctx)
    worker_class = default_worker_class(simple)
    queue = Queue(settings.queue_name, connection=connection)
    worker = worker_class([queue], connection=connection, name=name)
    log.info("worker %s (%s) on queue %s, model %s", worker.name, worker_class.__name__,
             settings.queue_name, ctx.model.version)
    try:
        return worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level)
    finally:
        ctx.engine.dispose()


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
