"""Hand persisted work to the RQ queue, and re-hand whatever a Redis outage left behind.

The database is the source of truth: an utterance is committed first (status ``pending``) and only
then enqueued, so a Redis outage can delay scoring but never lose audio. Job ids are deterministic
(``score-utterance-<id>``, ``finalise-call-<id>``) and enqueued with RQ's atomic ``unique`` check,
so the live path and the sweeper can both try without a job ever running twice side by side.
Job arguments are database ids only: nothing about the caller ever sits in Redis.

:func:`sweep` is meant to run periodically (the CLI or a scheduler calls it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.exceptions import RedisError
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError
from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.db import session_scope
from schema.models import Call, CallStatus, Utterance, UtteranceStatus

log = logging.getLogger(__name__)

SCORE_UTTERANCE = "worker.jobs.score_utterance"
FINALISE_CALL = "worker.jobs.finalise_call"


@dataclass(frozen=True)
class JobOptions:
    """Retry and retention for enqueued jobs. Interval retries need a worker run with the scheduler."""

    retries: int = 5
    retry_intervals: tuple[int, ...] = (5, 15, 60, 300)
    failure_ttl_s: int = 24 * 3600  # failed jobs keep their arguments: do not keep them a year

    @classmethod
    def from_settings(cls, settings: object) -> JobOptions:
        return cls(
            retries=int(getattr(settings, "job_retries", cls.retries)),
            failure_ttl_s=int(getattr(settings, "failure_ttl_s", cls.failure_ttl_s)),
        )


def score_job_id(utterance_id: int) -> str:
    return f"score-utterance-{utterance_id}"


def finalise_job_id(call_id: int) -> str:
    return f"finalise-call-{call_id}"


def _enqueue(queue: Queue, func: str, arg: int, job_id: str, options: JobOptions) -> bool:
    """Enqueue once; True if the job is (now or already) in Redis, False if Redis is unreachable."""
    retry = Retry(max=options.retries, interval=list(options.retry_intervals)) if options.retries else None
    try:
        queue.enqueue(func, arg, job_id=job_id, retry=retry, failure_ttl=options.failure_ttl_s, unique=True)
    except DuplicateJobError:
        return True
    except (RedisError, OSError) as exc:
        log.warning("enqueue of %s failed (%s); the outbox sweep will retry", job_id, type(exc).__name__)
        return False
    return True


def enqueue_score_utterance(queue: Queue | None, utterance_id: int, options: JobOptions) -> bool:
    if queue is None:
        return False
    return _enqueue(queue, SCORE_UTTERANCE, utterance_id, score_job_id(utterance_id), options)


def enqueue_finalise_call(queue: Queue | None, call_id: int, options: JobOptions) -> bool:
    if queue is None:
        return False
    return _enqueue(queue, FINALISE_CALL, call_id, finalise_job_id(call_id), options)


def _job_exists(queue: Queue, job_id: str) -> bool:
    return bool(queue.job_class.exists(job_id, connection=queue.connection))


def requeue_pending(
    session_factory: Callable[[], Session],
    queue: Queue,
    older_than_s: float,
    *,
    options: JobOptions | None = None,
    now: datetime | None = None,
) -> int:
    """Enqueue scoring for every pending utterance older than ``older_than_s`` whose job is gone.

    Returns how many jobs were enqueued. Safe to run concurrently with the live path and with
    itself: a job id that already exists is left alone.
    """
    options = options or JobOptions()
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    with session_scope(session_factory) as session:
        ids = session.scalars(
            select(Utterance.id)
            .where(Utterance.status == UtteranceStatus.PENDING.value, Utterance.created_at < cutoff)
            .order_by(Utterance.id)
        ).all()
    return _enqueue_missing(queue, ids, score_job_id, enqueue_score_utterance, options)


def requeue_unfinalised(
    session_factory: Callable[[], Session],
    queue: Queue,
    older_than_s: float,
    *,
    options: JobOptions | None = None,
    now: datetime | None = None,
) -> int:
    """Enqueue finalisation for ended calls whose finalise job is gone (a Redis outage at hang-up)."""
    options = options or JobOptions()
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than_s)
    with session_scope(session_factory) as session:
        ids = session.scalars(
            select(Call.id)
            .where(Call.status == CallStatus.ENDED.value, Call.ended_at < cutoff)
            .order_by(Call.id)
        ).all()
    return _enqueue_missing(queue, ids, finalise_job_id, enqueue_finalise_call, options)


def _enqueue_missing(
    queue: Queue,
    ids: Sequence[int],
    job_id: Callable[[int], str],
    enqueue: Callable[[Queue, int, JobOptions], bool],
    options: JobOptions,
) -> int:
    """Enqueue the jobs whose deterministic id is not in Redis; stop at the first failed enqueue."""
    enqueued = 0
    for object_id in ids:
        if _job_exists(queue, job_id(object_id)):
            continue
        if not enqueue(queue, object_id, options):
            break  # Redis is down again: the next sweep carries on
        enqueued += 1
    return enqueued


def sweep(
    session_factory: Callable[[], Session],
    queue: Queue,
    *,
    older_than_s: float = 60.0,
    options: JobOptions | None = None,
    now: datetime | None = None,
) -> dict[str, int]:
    """One outbox pass: re-enqueue pending scoring, then pending finalisation."""
    return {
        "utterances": requeue_pending(session_factory, queue, older_than_s, options=options, now=now),
        "calls": requeue_unfinalised(session_factory, queue, older_than_s, options=options, now=now),
    }
