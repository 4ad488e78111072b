"""Starting RQ workers: the worker context built once per process, then the right RQ worker class.

A worker process loads the model and its embedders once (:func:`build_context`), installs the
context (``worker.context.install``) and only then starts taking jobs, so no job pays for a model
load. Which RQ worker class runs the jobs:

- :class:`PainlineSimpleWorker` (the default): jobs run in the worker process itself, reusing its
  database and Redis connections, so RQ's bookkeeping stays a small share of a job
  (``python -m bench.worker``; figures in ``docs/scaling.md``);
- :class:`PainlineWorker` (``--fork``): every job runs in a forked child, so a job that crashes or
  leaks cannot take the worker down; the child inherits the loaded model copy-on-write and opens
  fresh database connections. The fork and the reconnect cost more than the overhead budget
  (``docs/scaling.md``), so it is opt-in. Without it a crashed worker process is restarted by its
  supervisor (docker-compose ``restart``, systemd) and its interrupted job recovered by the sweep,
  which runs RQ's abandoned-job cleanup and re-enqueues any utterance still pending;
- :class:`ThreadWorker`: a long-lived SimpleWorker that can run in a non-main thread (the demo and
  the tests run one next to the web server): no signal handlers, job timeouts by timer instead of
  SIGALRM, stopped by an event.

Interval retries (``Retry(interval=[...])``, used by the finalise job) are parked in RQ's scheduled
registry; only a worker started with the scheduler moves them back to the queue, so
:func:`run_worker` starts it by default.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker, Worker
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from rq.worker import BaseWorker

from analysis.embedders import EmbedderSources
from analysis.segmentation import VadConfig
from painline import redis_conn
from painline.config import Settings
from painline.metrics import install as install_metrics
from painline.metrics import serve_worker_metrics
from schema.contract import call_channel, flag_channel
from worker.metrics import job_failed

if TYPE_CHECKING:  # for the annotations only; the functions below import it when they run
    from worker.context import WorkerContext

log = logging.getLogger(__name__)


# How often RQ's command-channel thread wakes up, in seconds. RQ polls every 60 s, and redis-py 8.2
# joins that thread without a time limit when a worker tears down: a teardown that lost the race
# with the channel's (un)subscribe confirmation then took a minute (the hang seen on fresh installs).
COMMAND_POLL_S = 1.0


class _PromptTeardown:
    """Subscribe to RQ's command channel with a short poll, so teardown never waits a minute."""

    def subscribe(self: Any) -> None:
        """RQ's own ``subscribe`` with the poll interval as the only change."""
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(
            sleep_time=COMMAND_POLL_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )


class PainlineWorker(_PromptTeardown, Worker):
    """RQ's forking worker (``painline worker --fork``): one work-horse child per job."""


class PainlineSimpleWorker(_PromptTeardown, SimpleWorker):
    """RQ's in-process worker, painline's default: jobs reuse the worker's connections."""


class ThreadWorker(PainlineSimpleWorker):
    """A long-lived in-process worker for a non-main thread, stopped by an :class:`threading.Event`.

    Python allows signal handlers only in the main thread, so this installs none and times jobs
    out by timer. While idle it blocks on the queue for at most a second at a time, then checks
    its stop event and moves retries that have come due back to the queue (the work a scheduler
    process would do; a fork from a thread of a web server is not safe). A job is picked up as soon
    as it is enqueued: the blocking pop returns at once.
    """

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, stop_event: threading.Event, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.stop_event = stop_event
        self.jobs_run = 0
        self._due: RQScheduler | None = None

    def _install_signal_handlers(self) -> None:
        """Leave signals to the main thread; this worker stops through its stop event."""

    def _enqueue_due_jobs(self) -> None:
        """Move due retries to the queue while this worker holds (or refreshes) the scheduler lock."""
        if self._due is None:
            self._due = RQScheduler(
                self.queues,
                connection=self.connection,
                serializer=self.serializer,
                logging_level=self.log.getEffectiveLevel(),
            )
        if self._due.acquire_locks():
            self._due.enqueue_scheduled_jobs()

    def teardown(self) -> None:
        super().teardown()
        if self._due is not None:
            self._due.release_locks()

    def dequeue_job_and_maintain_ttl(self, timeout: int | None, max_idle_time: int | None = None) -> Any:
        while not self.stop_event.is_set():
            self._enqueue_due_jobs()
            # returns None after about a second with nothing to do (RQ's idle limit, in whole seconds)
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time=1)
            if result is not None:
                return result
        self._stop_requested = True  # RQ's loop then tears the worker down and returns
        return None

    def execute_job(self, job: Job, queue: Queue) -> Any:
        self.jobs_run += 1
        return super().execute_job(job, queue)


def count_failed_job(job: Job, *_exc_info: object) -> bool:
    """RQ exception handler: count the failure as retried or failed.

    RQ calls its exception handlers before it retries or fails the job, so the decision is read the
    way RQ will take it (``should_retry``: retries left). Returns True so RQ goes on to its next
    handler; the failure itself is RQ's to record.
    """
    name = (job.func_name or "unknown").rsplit(".", 1)[-1]
    job_failed(name, will_retry=job.should_retry)
    return True


def default_worker_class(fork: bool = False) -> type[BaseWorker]:
    """:class:`PainlineSimpleWorker`, or the forking :class:`PainlineWorker` when asked and the platform can fork."""
    if fork and hasattr(os, "fork"):
        return PainlineWorker
    return PainlineSimpleWorker


def build_context(settings: Settings, connection: Redis | None, *, speaker: bool = True) -> WorkerContext:
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
        flag_channel=flag_channel(settings.channel_namespace),
        call_channel=call_channel(settings.channel_namespace),
        sources=embedder_sources(settings),
        vad=VadConfig(aggressiveness=settings.vad_aggressiveness),
    )


def embedder_sources(settings: Settings) -> EmbedderSources:
    """Where embedders with local weights find them, from the deployment's settings."""
    return EmbedderSources(hear_path=settings.hear_path if str(settings.hear_path) else None)


def install_context(ctx: WorkerContext) -> WorkerContext:
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
    metrics_port: int = 0,
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
    install_metrics(queue)
    if metrics_port:
        serve_worker_metrics(metrics_port)
    worked = False
    try:
        while True:
            worker = worker_class([queue], connection=connection, name=name, exception_handlers=[count_failed_job])
            name = None  # a restarted worker takes a new name: the lost one may still be registered
            log.info(
                "worker %s (%s) on queue %s, model %s",
                worker.name,
                worker_class.__name__,
                settings.queue_name,
                ctx.model.version,
            )
            try:
                worked = worker.work(burst=burst, with_scheduler=with_scheduler, logging_level=logging_level) or worked
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
    """Work a queue from a daemon thread until :meth:`stop`, with one long-lived :class:`ThreadWorker`.

    One worker for the whole run, never torn down between jobs: a teardown per pass is what made
    the in-process worker hang on redis-py 8.2. If RQ gives up (Redis went away under it), a fresh
    worker is started once Redis answers. The installed worker context is whatever the process
    installed before :meth:`start`.
    """

    def __init__(self, queue: Queue, *, job_class: type[Job] | None = None, logging_level: str = "WARNING") -> None:
        self.queue = queue
        self.job_class = job_class or queue.job_class
        self.logging_level = logging_level
        self.error: BaseException | None = None
        self._jobs_before = 0
        self._worker: ThreadWorker | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="painline-worker", daemon=True)

    @property
    def jobs_run(self) -> int:
        """Jobs this background worker has started, across restarts."""
        return self._jobs_before + (self._worker.jobs_run if self._worker is not None else 0)

    def start(self) -> BackgroundWorker:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._worker is not None:
                    self._jobs_before += self._worker.jobs_run
                self._worker = ThreadWorker(
                    [self.queue],
                    connection=self.queue.connection,
                    job_class=self.job_class,
                    stop_event=self._stop,
                    exception_handlers=[count_failed_job],
                )
                self._worker.work(logging_level=self.logging_level)
                if not self._stop.is_set():
                    log.warning("background worker: RQ stopped working the queue; starting a new worker")
                    self._stop.wait(1.0)
        except BaseException as exc:  # reported by stop(); a daemon thread must not die silently
            self.error = exc
            log.exception("background worker stopped with an error")

    def stop(self, timeout_s: float = 30.0) -> None:
        """Let a running job complete, tear the worker down, then return."""
        self._stop.set()
        self._thread.join(timeout_s)


__all__ = [
    "COMMAND_POLL_S",
    "BackgroundWorker",
    "PainlineSimpleWorker",
    "PainlineWorker",
    "ThreadWorker",
    "build_context",
    "default_worker_class",
    "embedder_sources",
    "install_context",
    "run_worker",
]
