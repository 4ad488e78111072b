"""The contract between the web processes, the workers and the dashboard: the one home of every name
they share through Redis, and the one way work is handed to the queue.

``telephony``, ``worker`` and ``dashboard`` may not import each other, yet they must agree on which
job runs which function, what its id is, how often it is retried, which pub/sub channel flags travel
on and under which key uploaded audio waits. Each of those used to be spelt out in two places with a
test pinning the copies equal; now they live here, in the shared layer all three import.

**Job ids** are deterministic (``rebuild-baseline-<id>`` ...), so the live path, the dashboard and
``painline sweep`` can all ask for the same work without it piling up. Arguments are database ids
only: nothing about a caller ever sits in Redis.

**One enqueue.** :func:`enqueue` promises the caller that a run of the job *starting after the call*
will happen, which is what a caller that has just committed a change needs (a rebuild after an
exclusion must see the exclusion). For each state of the job already under that id:

- none, or dead (``finished``, ``failed``, ``stopped``, ``canceled``): the dead job is deleted and a
  fresh one enqueued. RQ keeps a finished job for ``result_ttl`` (500 s) and a failed one for
  ``failure_ttl``; treating those as "already there" silently dropped the second of two baseline
  changes made within minutes.
- ``queued``, ``scheduled`` (an interval retry) or ``deferred``: nothing is added. That job has not
  started, so when it does it reads the database as committed now.
- ``started``: it may have read the database before the caller's commit, so a *follow-up* is
  enqueued under the second id of the pair (``<id>-again``, :func:`follow_up_id`), depending on the
  running one (``allow_failure``): RQ defers it until the running job ends, then queues it. Further
  requests while the follow-up waits are satisfied by it; a request while the follow-up runs defers
  the first id behind it, and so on, alternating. So two runs for one object never overlap.

Why this is race-safe. Every enqueuer of an id holds a short Redis lock on it
(:data:`ENQUEUE_LOCK_S`) while it reads the job's state and writes the new job, so two enqueuers (two
web processes, the sweep) never both decide to replace a dead job or both add a follow-up. Workers do
not take the lock; they only move a job forward (queued -> started -> finished), and every such move
keeps the decision sound: a job seen ``queued`` that starts a moment later still starts after the
caller's commit (the caller commits before it enqueues); a job seen ``started`` that ends a moment
later makes RQ queue the follow-up at once (its dependency check runs under a Redis ``WATCH``); a job
seen ``finished`` stays finished. A follow-up whose dependency vanished or ended without releasing it
(stopped, or failed by RQ's abandoned-job cleanup) would wait forever, so a ``deferred`` job counts as
waiting only while what it waits for is itself live; otherwise it is dead and replaced. If the lock
cannot be had within :data:`ENQUEUE_LOCK_S`, or Redis is unreachable, :func:`enqueue` says so
(:attr:`Enqueued.UNAVAILABLE`) and ``painline sweep`` re-queues the work from what the database says
is unfinished. Every job is idempotent, so the worst case of any remaining race is one extra run.

**Flag channels** are namespaced per deployment (:func:`flag_channel`): Redis pub/sub ignores the
database number, so two painlines on one Redis server would otherwise hear each other's flags.

**Call channels** (:func:`call_channel`) carry the telephony layer's stream start and end
(:class:`LiveEvent`, :func:`announce_call`) to the dashboard's event stream, namespaced the same way.
The worker announces on them too, when a score lands and when a call is finalised.

**Dashboard sessions and sign-in counters** (:func:`session_key`, :func:`user_sessions_key`,
:func:`login_counter_key`, :func:`known_address_key`) live under the same per-deployment namespace.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from enum import Enum, StrEnum

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Dependency, Job, JobStatus

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# jobs


class JobName(StrEnum):
    """Every job the web side enqueues, by the dotted name of the worker function that runs it."""

    SCORE_UTTERANCE = "worker.jobs.score_utterance"
    FINALISE_CALL = "worker.jobs.finalise_call"
    GROW_BASELINE = "worker.jobs.grow_baseline_from_call"
    REBUILD_BASELINE = "worker.jobs.rebuild_baseline"
    ENROL_UPLOAD = "worker.jobs.enrol_uploaded"


@dataclass(frozen=True)
class JobOptions:
    """Retry and retention of enqueued jobs, from the deployment's settings (``painline.app.job_options``).

    Interval retries need a worker run with the scheduler (``painline worker`` runs one).
    """

    retries: int = 5
    retry_intervals: tuple[int, ...] = (5, 15, 60, 300)
    failure_ttl_s: int = 24 * 3600  # failed jobs keep their arguments: do not keep them a year

    def retry(self) -> Retry | None:
        return Retry(max=self.retries, interval=list(self.retry_intervals)) if self.retries else None


def score_job_id(utterance_id: int) -> str:
    return f"score-utterance-{utterance_id}"


def finalise_job_id(call_id: int) -> str:
    return f"finalise-call-{call_id}"


def grow_job_id(call_id: int) -> str:
    return f"grow-baseline-{call_id}"


def rebuild_job_id(baseline_id: int) -> str:
    return f"rebuild-baseline-{baseline_id}"


def enrol_job_id(token: str) -> str:
    return f"enrol-upload-{token}"


def follow_up_id(job_id: str) -> str:
    """The second id of a job's pair: the run requested while the first was running (and vice versa)."""
    return f"{job_id}-again"


# ---------------------------------------------------------------------------------------------------
# channels and keys

EVIDENCE_BASELINE_EMBEDDER = "evidence-measures"
"""The ``Baseline.embedder`` of each patient's plain-unit measure baseline (beside the model baselines)."""


def enrol_upload_key(token: str) -> str:
    """Redis list where the dashboard leaves uploaded enrolment audio (8 kHz mu-law, one clip an item)."""
    return f"painline:enrol-upload:{token}"


def _require_namespace(namespace: str, what: str) -> None:
    if not namespace:
        raise ValueError(f"{what} needs the deployment's namespace")


def session_key(namespace: str, session_digest: str) -> str:
    """The record of one dashboard sign-in session (``dashboard.sessions``).

    ``session_digest`` is the SHA-256 of the cookie's session id, never the id itself: whoever can read
    Redis (``SCAN``, a dump) learns which sessions exist but holds no cookie that would sign them in.
    Namespaced per deployment like :func:`flag_channel`, so two painlines sharing one Redis database
    (or one test run beside another) never honour each other's sessions.
    """
    _require_namespace(namespace, "a session key")
    return f"painline:{namespace}:session:{session_digest}"


def user_sessions_key(namespace: str, user_id: int) -> str:
    """Redis set of the session digests of one user, so sign-out, a password change or deactivation
    can revoke every session of that user at once, on every device."""
    _require_namespace(namespace, "a user-sessions key")
    return f"painline:{namespace}:user-sessions:{user_id}"


class LoginCounter(StrEnum):
    """What one sign-in limiter counter counts attempts of (``dashboard.limiter``)."""

    USER_AT_ADDRESS = "user-at-address"
    ADDRESS = "address"
    USER = "user"


def login_counter_key(namespace: str, counter: LoginCounter, digest: str) -> str:
    """A sign-in attempt counter; ``digest`` is an HMAC of the username and/or address, never them in clear."""
    _require_namespace(namespace, "a sign-in counter key")
    return f"painline:{namespace}:login:{counter.value}:{digest}"


def known_address_key(namespace: str, digest: str) -> str:
    """Marks an address a user has signed in from successfully (``digest``: HMAC of the pair)."""
    _require_namespace(namespace, "a known-address key")
    return f"painline:{namespace}:login:known:{digest}"


def flag_channel(namespace: str) -> str:
    """The pub/sub channel a deployment's flag raises, upgrades and nurse decisions are published on.

    ``namespace`` is ``Settings.channel_namespace``: pub/sub channels are server-wide, whatever the
    Redis database number, so without it every painline on one Redis server heard every other's flags.
    """
    if not namespace:
        raise ValueError("a flag channel needs the deployment's namespace")
    return f"painline:{namespace}:flags"


def call_channel(namespace: str) -> str:
    """The pub/sub channel a deployment's call lifecycle (:class:`LiveEvent` ``call.*``) is published on.

    Separate from :func:`flag_channel` because the hotline's flag webhook and other flag listeners
    care about flags only; the dashboard's event stream subscribes to both. Namespaced for the same
    reason as flags.
    """
    _require_namespace(namespace, "a call channel")
    return f"painline:{namespace}:calls"


class LiveEvent(StrEnum):
    """The ``event`` field of every message on the flag and call channels.

    The worker's flag messages (``worker.flags``) and the dashboard's flag changes spell the
    ``flag.*`` names; the telephony layer publishes the ``call.*`` ones when a Media Stream starts
    and ends, so a nurse's queue shows a call as soon as audio flows and drops its live badge as
    soon as it stops, instead of waiting for the first flag or the page's poll.
    """

    CALL_STARTED = "call.started"
    CALL_ENDED = "call.ended"
    # the worker's, after the commit: a call page then re-reads its chart and rows (or its verdict)
    # at once instead of on its fallback poll; ids only, like the rest, never the score itself
    CALL_SCORED = "call.scored"
    CALL_FINALISED = "call.finalised"
    FLAG_RAISED = "flag.raised"
    FLAG_UPGRADED = "flag.upgraded"
    FLAG_ACKNOWLEDGED = "flag.acknowledged"
    FLAG_RESOLVED = "flag.resolved"


@dataclass(frozen=True)
class CallEvent:
    """One call lifecycle message: ids only (nothing about the caller ever sits in Redis)."""

    event: LiveEvent
    call_id: int
    sent_at: int  # Unix seconds, when published

    def encode(self) -> bytes:
        doc = {"event": self.event.value, "call_id": self.call_id, "sent_at": self.sent_at}
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def announce_call(redis: Redis, channel: str, event: LiveEvent, call_id: int) -> bool:
    """Publish a call lifecycle event; False (logged) if Redis refused. Never raises.

    Best effort like the flag messages: the ``calls`` row is the record, the message only makes the
    nurse's screen change sooner (the queue also re-reads itself on a poll and on reconnect).
    """
    message = CallEvent(event=event, call_id=call_id, sent_at=int(time.time()))
    try:
        redis.publish(channel, message.encode())
    except (RedisError, OSError) as exc:
        log.warning("call %s: %s not announced (%s)", call_id, event.value, type(exc).__name__)
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# enqueue

ENQUEUE_LOCK_S = 5.0
"""Longest an enqueuer holds (and waits for) the per-id lock; the work under it is a few round trips."""

LIVE_STATES = frozenset({JobStatus.QUEUED, JobStatus.STARTED, JobStatus.SCHEDULED, JobStatus.DEFERRED})
"""A job in one of these states will still run, or is running."""


class Enqueued(Enum):
    """What :func:`enqueue` did."""

    NEW = "new"  # nothing live held the id: a fresh job is queued
    FOLLOW_UP = "follow-up"  # one was running: another run waits for it to end
    WAITING = "waiting"  # one had not started yet: it reads the database when it does
    RUNNING = "running"  # ``if_idle`` only: one is running, nothing was added
    UNAVAILABLE = "unavailable"  # Redis unreachable (logged): ``painline sweep`` re-queues the work

    @property
    def ok(self) -> bool:
        """True if a run that starts after the call is (already) in Redis, or ``if_idle`` found one live."""
        return self is not Enqueued.UNAVAILABLE


class _State(Enum):
    NONE = "none"  # missing, or dead and now deleted
    WAITING = "waiting"
    RUNNING = "running"


def _lock_name(queue: Queue, job_id: str) -> str:
    # the job's own key inside, so a queue with its own job namespace (tests) has its own locks
    return f"painline:enqueue-lock:{queue.job_class.key_for(job_id)}"


def _fetch(queue: Queue, job_id: str) -> Job | None:
    try:
        return queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
    except NoSuchJobError:
        return None


def _state(queue: Queue, job_id: str) -> tuple[_State, Job | None]:
    """The state of the job under ``job_id``; a dead one (see the module docstring) is deleted here."""
    job = _fetch(queue, job_id)
    if job is None:
        return _State.NONE, None
    status: JobStatus | None = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return _State.RUNNING, job
    if status == JobStatus.DEFERRED and not _waits_on_live_job(queue, job):
        status = None  # orphaned: what it waited for is gone or ended without releasing it
    if status in LIVE_STATES:
        return _State.WAITING, job
    log.info("job %s is %s; replacing it", job_id, status.value if status is not None else "orphaned")
    job.delete(remove_from_queue=True)
    return _State.NONE, None


def _waits_on_live_job(queue: Queue, job: Job) -> bool:
    for dependency_id in job.dependency_ids:
        dependency = _fetch(queue, dependency_id)
        if dependency is not None and dependency.get_status(refresh=False) in LIVE_STATES:
            return True
    return False


def _put(
    queue: Queue, name: JobName, args: tuple[int | str, ...], job_id: str, options: JobOptions, after: Job | None
) -> None:
    # the plain string, not the enum member: RQ pickles what it is given and workers resolve the name
    func = str(name.value)
    if after is None:
        try:
            queue.enqueue(
                func, *args, job_id=job_id, retry=options.retry(), failure_ttl=options.failure_ttl_s, unique=True
            )
        except DuplicateJobError:
            # only an enqueuer outside this contract could have put it there since our check; it has not
            # run yet, so it still reads the database after the caller's commit
            log.info("job %s appeared while enqueueing it; keeping that one", job_id)
        return
    # RQ refuses unique=True with a dependency; the lock held by every enqueuer makes it unique here
    queue.enqueue(
        func,
        *args,
        job_id=job_id,
        retry=options.retry(),
        failure_ttl=options.failure_ttl_s,
        depends_on=Dependency(jobs=[after], allow_failure=True),
    )


def _decide(
    queue: Queue, name: JobName, args: tuple[int | str, ...], job_id: str, options: JobOptions, if_idle: bool
) -> Enqueued:
    pair = (job_id, follow_up_id(job_id))
    states = [_state(queue, slot) for slot in pair]
    if any(state is _State.WAITING for state, _ in states):
        return Enqueued.WAITING
    running = [(slot, job) for slot, (state, job) in zip(pair, states, strict=True) if state is _State.RUNNING]
    if not running:
        _put(queue, name, args, job_id, options, after=None)
        return Enqueued.NEW
    if if_idle:
        return Enqueued.RUNNING
    if len(running) == 2:
        # only possible if something outside this contract started both; refusing is honest, and the
        # sweep re-queues the work once they have ended
        log.error("jobs %s and %s are both running; %s not queued again", *pair, job_id)
        return Enqueued.UNAVAILABLE
    ((running_slot, running_job),) = running
    other = pair[1] if running_slot == pair[0] else pair[0]
    _put(queue, name, args, other, options, after=running_job)
    return Enqueued.FOLLOW_UP


def enqueue(
    queue: Queue | None,
    name: JobName,
    *args: int | str,
    job_id: str,
    options: JobOptions,
    if_idle: bool = False,
    new_id: bool = False,
) -> Enqueued:
    """Hand ``name(*args)`` to the queue under ``job_id``, per the module docstring; never raises for Redis.

    ``if_idle`` (the sweep): add nothing while a run is in progress either, only replace what is
    missing or dead; the sweep asks because the database says work is unfinished, not because it
    changed anything, so a running job already covers it.

    ``new_id``: the caller has just created what the id names (a saved utterance, a call that just
    ended), so neither id of the pair can be held yet. That is every utterance of every live call, so
    it skips the lock and the state reads: one atomic ``unique`` enqueue. Should the id be held after
    all (a retried enqueue whose first attempt reached Redis), the full decision above runs.
    """
    if queue is None:
        return Enqueued.UNAVAILABLE
    if new_id and not if_idle:
        try:
            queue.enqueue(
                str(name.value),
                *args,
                job_id=job_id,
                retry=options.retry(),
                failure_ttl=options.failure_ttl_s,
                unique=True,
            )
            return Enqueued.NEW
        except DuplicateJobError:
            pass  # held after all: decide under the lock
        except (RedisError, OSError) as exc:
            log.warning("enqueue of %s failed (%s); the outbox sweep will retry", job_id, type(exc).__name__)
            return Enqueued.UNAVAILABLE
    lock = queue.connection.lock(_lock_name(queue, job_id), timeout=ENQUEUE_LOCK_S, blocking_timeout=ENQUEUE_LOCK_S)
    try:
        if not lock.acquire():
            log.warning("enqueue of %s: its lock stayed taken; the outbox sweep will retry", job_id)
            return Enqueued.UNAVAILABLE
        try:
            return _decide(queue, name, args, job_id, options, if_idle)
        finally:
            # the decision is made and written; a lock that expired meanwhile or a lost connection only
            # means the lock lapses by itself
            with contextlib.suppress(RedisError, OSError):
                lock.release()
    except (RedisError, OSError) as exc:
        log.warning("enqueue of %s failed (%s); the outbox sweep will retry", job_id, type(exc).__name__)
    return Enqueued.UNAVAILABLE


__all__ = [
    "ENQUEUE_LOCK_S",
    "EVIDENCE_BASELINE_EMBEDDER",
    "LIVE_STATES",
    "CallEvent",
    "Enqueued",
    "JobName",
    "JobOptions",
    "LiveEvent",
    "LoginCounter",
    "announce_call",
    "call_channel",
    "enqueue",
    "enrol_job_id",
    "enrol_upload_key",
    "finalise_job_id",
    "flag_channel",
    "follow_up_id",
    "grow_job_id",
    "known_address_key",
    "login_counter_key",
    "rebuild_job_id",
    "score_job_id",
    "session_key",
    "user_sessions_key",
]
