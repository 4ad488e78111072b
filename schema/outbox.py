"""Hand persisted work to the RQ queue, and re-hand whatever a Redis outage left behind.

The database is the source of truth: an utterance is committed first (status ``pending``) and only
then enqueued, so a Redis outage can delay scoring but never lose audio. Job names, ids, the retry
policy and the one way to enqueue are the contract every layer shares (:mod:`schema.contract`), so
the live path, the dashboard and the sweeper can all ask for the same work without it piling up or
two runs of it overlapping. Job arguments are database ids only: nothing about the caller ever sits
in Redis.

It lives here, beside the contract, rather than in ``telephony``: the live path enqueues through it,
but the sweep re-hands work that any layer committed (a dashboard's baseline rebuild as much as a
stream's utterances), and it needs nothing but the schema, the contract and RQ.

:func:`sweep` runs periodically (``painline sweep --every 30``, a process of its own next to the
workers). It treats as pending work every row the database still calls unfinished (a ``pending``
utterance, an ``ended`` call, a *stale* baseline whose stored count differs from its included
contributions) whose job is no longer *live* in Redis (:func:`schema.contract.enqueue` with
``if_idle``):

- the job is gone (Redis was down at enqueue, or restarted without persistence);
- the job is dead: ``failed`` (it ran out of retries, e.g. through a long database outage, or its
  worker was killed with ``kill -9`` and RQ gave up on it), ``stopped`` or ``canceled``, or
  ``finished`` while the row is still unfinished. The dead job is deleted and a fresh one enqueued
  under the same id, with a fresh set of retries.

A job whose worker was SIGKILLed together with its work-horse stays ``started`` in RQ's
StartedJobRegistry until its heartbeat lease runs out (about 90 s for a forking rq.Worker, which
renews it; job timeout + 60 s, ~4 minutes, for an rq.SimpleWorker, which cannot); RQ only
notices at a worker's maintenance pass, every 10 minutes. So each sweep first runs RQ's own
abandoned-job cleanup (:meth:`rq.registry.StartedJobRegistry.cleanup`): an expired entry is
retried if it has retries left, otherwise moved to the failed registry, where this sweep finds it.
A job that is merely slow keeps renewing its lease and is never touched. Re-running a job that did
complete is harmless: every job is idempotent (``worker/jobs.py``).

Interval retries wait in RQ's ScheduledJobRegistry until a worker's scheduler moves them back to the
queue. Only one scheduler per queue runs (a Redis lock); if its worker was SIGKILLed, the lock
lingers for a minute and a new worker only tries to take it again at its maintenance pass, up to 10
minutes later. Meanwhile retries would sit there. So the sweep also promotes scheduled jobs that are
more than ``scheduler_grace_s`` overdue (a live scheduler moves them within a second): each is
claimed by removing it from the registry, so a scheduler coming back cannot enqueue it a second time.

A stream that ends while the database is down cannot mark its call ``ended`` (the socket handler
logs it and gives up), so the call would stay ``streaming`` forever and never be finalised. The
sweep ends such calls: ``streaming``, started more than ``stale_stream_s`` ago and with no utterance
saved for as long (the default is longer than any stream may last, ``StreamConfig.max_stream_s``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from schema.contract import (
    Enqueued,
    JobName,
    JobOptions,
    enqueue,
    finalise_job_id,
    rebuild_job_id,
    score_job_id,
)
from schema.db import session_scope
from schema.models import Baseline, Call, CallStatus, Utterance, UtteranceStatus

log = logging.getLogger(__name__)


def enqueue_score_utterance(queue: Queue | None, utterance_id: int, options: JobOptions) -> bool:
    """Hand a just-committed utterance to scoring; False if Redis is unreachable (the sweep retries)."""
    return enqueue(
        queue, JobName.SCORE_UTTERANCE, utterance_id, job_id=score_job_id(utterance_id), options=options, new_id=True
    ).ok


def enqueue_finalise_call(queue: Queue | None, call_id: int, options: JobOptions) -> bool:
    """Hand a just-ended call to finalisation; False if Redis is unreachable (the sweep retries)."""
    return enqueue(
        queue, JobName.FINALISE_CALL, call_id, job_id=finalise_job_id(call_id), options=options, new_id=True
    ).ok


def reap_abandoned(queue: Queue, now: datetime | None = None) -> None:
    """Run RQ's cleanup of the started registry: jobs whose worker died (lease expired) are retried or
    failed now, instead of at some worker's next maintenance pass (every 10 minutes)."""
    registry = StartedJobRegistry(
        queue.name, connection=queue.connection, job_class=queue.job_class, serializer=queue.serializer
    )
    registry.cleanup(timestamp=(now or datetime.now(UTC)).timestamp())


def promote_overdue(queue: Queue, grace_s: float, now: datetime | None = None) -> int:
    """Enqueue scheduled jobs due more than ``grace_s`` ago (no scheduler is running); returns how many.

    Removing the job id from the registry is the claim: whoever removes it (this sweep, another sweep
    or a returning scheduler) is the only one that enqueues it.
    """
    registry = ScheduledJobRegistry(
        queue.name, connection=queue.connection, job_class=queue.job_class, serializer=queue.serializer
    )
    cutoff = (now or datetime.now(UTC)).timestamp() - grace_s
    promoted = 0
    for job_id in registry.get_jobs_to_schedule(int(cutoff)):
        if not queue.connection.zrem(registry.key, job_id):
            continue  # a scheduler got there first
        try:
            job = queue.job_class.fetch(job_id, connection=queue.connection, serializer=queue.serializer)
        except NoSuchJobError:
            continue
        queue.enqueue_job(job)
        promoted += 1
    if promoted:
        log.warning(
            "outbox sweep: %d scheduled job(s) overdue by more than %s s (no RQ scheduler running?); enqueued",
            promoted,
            grace_s,
        )
    return promoted


def requeue_pending(
    session_factory: Callable[[], Session],
    queue: Queue,
    older_than_s: float,
    *,
    options: JobOptions | None = None,
    now: datetime | None = None,
) -> int:
    """Enqueue scoring for every pending utterance older than ``older_than_s`` whose job is not live.

    Returns how many jobs were enqueued. Safe to run concurrently with the live path and with
    itself: a queued, scheduled or running job is left alone; a missing or dead one is replaced.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    with session_scope(session_factory) as session:
        ids = session.scalars(
            select(Utterance.id)
            .where(Utterance.status == UtteranceStatus.PENDING.value, Utterance.created_at < cutoff)
            .order_by(Utterance.id)
        ).all()
    return _enqueue_missing(queue, JobName.SCORE_UTTERANCE, ids, score_job_id, options or JobOptions())


def requeue_unfinalised(
    session_factory: Callable[[], Session],
    queue: Queue,
    older_than_s: float,
    *,
    options: JobOptions | None = None,
    now: datetime | None = None,
) -> int:
    """Enqueue finalisation for ended calls whose finalise job is gone or dead (a Redis outage at
    hang-up, a killed worker, retries exhausted while utterances were pending)."""
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    with session_scope(session_factory) as session:
        ids = session.scalars(
            select(Call.id).where(Call.status == CallStatus.ENDED.value, Call.ended_at < cutoff).order_by(Call.id)
        ).all()
    return _enqueue_missing(queue, JobName.FINALISE_CALL, ids, finalise_job_id, options or JobOptions())


def requeue_stale_baselines(
    session_factory: Callable[[], Session],
    queue: Queue,
    *,
    options: JobOptions | None = None,
) -> int:
    """Enqueue a rebuild for every stale baseline whose rebuild job is not live; returns how many.

    A baseline is stale (:attr:`schema.models.Baseline.stale`) when an admin excluded, re-included
    or reset and the rebuild never ran (Redis was down when the dashboard enqueued it, or the job
    died). The dashboard says "being rebuilt" for as long, so without this the page would say so
    forever. No age cut-off: the dashboard enqueues only after its commit, so a baseline seen stale
    here already has its job in Redis unless it was lost, and a live one is left alone.
    """
    with session_scope(session_factory) as session:
        ids = session.scalars(select(Baseline.id).where(Baseline.stale).order_by(Baseline.id)).all()
    return _enqueue_missing(queue, JobName.REBUILD_BASELINE, ids, rebuild_job_id, options or JobOptions())


def end_stale_streams(
    session_factory: Callable[[], Session],
    stale_after_s: float,
    *,
    now: datetime | None = None,
) -> int:
    """Mark ``ended`` the calls still ``streaming`` with no activity for ``stale_after_s``; returns how many.

    ``ended_at`` is set to the call's last activity (its last utterance, else its start), so the
    finalisation pass that follows picks the call up at once.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=stale_after_s)
    last_utterance = select(func.max(Utterance.created_at)).where(Utterance.call_id == Call.id).scalar_subquery()
    with session_scope(session_factory) as session:
        rows = session.execute(
            select(Call, last_utterance)
            .where(
                Call.status == CallStatus.STREAMING.value,
                Call.started_at < cutoff,
                or_(last_utterance.is_(None), last_utterance < cutoff),
            )
            .with_for_update(of=Call, skip_locked=True)
        ).all()
        for call, last in rows:
            call.status = CallStatus.ENDED.value
            call.ended_at = last or call.started_at
            log.warning("call %s: still streaming after %s s without activity; marked ended", call.id, stale_after_s)
        return len(rows)


def _enqueue_missing(
    queue: Queue,
    name: JobName,
    ids: Sequence[int],
    job_id: Callable[[int], str],
    options: JobOptions,
) -> int:
    """Enqueue the jobs with nothing live under their deterministic id; stop at the first Redis error."""
    enqueued = 0
    for object_id in ids:
        outcome = enqueue(queue, name, object_id, job_id=job_id(object_id), options=options, if_idle=True)
        if outcome is Enqueued.UNAVAILABLE:
            log.warning("outbox sweep: Redis unavailable; the next sweep carries on")
            break
        if outcome is Enqueued.NEW:
            log.warning("outbox sweep: %s had no live job; enqueued", job_id(object_id))
            enqueued += 1
    return enqueued


def sweep(
    session_factory: Callable[[], Session],
    queue: Queue,
    *,
    older_than_s: float = 60.0,
    options: JobOptions | None = None,
    now: datetime | None = None,
    scheduler_grace_s: float = 30.0,
    stale_stream_s: float = 4 * 3600 + 600,
) -> dict[str, int]:
    """One outbox pass: reap abandoned jobs, promote overdue retries, end stale streams, then re-enqueue
    pending scoring, pending finalisation and stale baselines' rebuilds. Returns the counts
    (``promoted``, ``stale_streams``, ``utterances``, ``calls``, ``baselines``).

    Raises :class:`redis.exceptions.RedisError` if Redis is down at the start (the CLI loop logs it and
    tries again at the next interval).
    """
    reap_abandoned(queue, now)
    promoted = promote_overdue(queue, scheduler_grace_s, now)
    stale = end_stale_streams(session_factory, stale_stream_s, now=now)
    return {
        "promoted": promoted,
        "stale_streams": stale,
        "utterances": requeue_pending(session_factory, queue, older_than_s, options=options, now=now),
        "calls": requeue_unfinalised(session_factory, queue, older_than_s, options=options, now=now),
        "baselines": requeue_stale_baselines(session_factory, queue, options=options),
    }
