"""Enrolment audio an admin uploaded: the body of ``worker.jobs.enrol_uploaded``.

The web UI puts the uploaded clips (mu-law) in Redis under :func:`schema.contract.enrol_upload_key`
and enqueues the job; the audio is passed through Redis rather than job arguments or the database,
and kept there at most for the upload's expiry. It is read and removed in one pipeline, so a retried
job never enrols the same upload twice; if it has expired the job says so and does nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import select

from analysis.channel import mulaw_decode
from schema.contract import enrol_upload_key
from schema.db import session_scope
from schema.models import User
from worker.baselines import EnrolmentResult, enrol
from worker.context import WorkerContext


class UploadOutcome(StrEnum):
    """What :func:`enrol_upload` did with one upload."""

    ENROLLED = "enrolled"
    EXPIRED = "expired"  # the clips were gone from Redis (expiry passed, or an earlier run took them)
    NO_SPEECH = "no speech"  # the VAD found no utterance in any clip: nothing a retry could change


@dataclass(frozen=True)
class UploadEnrolment:
    """The job's result: the outcome, and the enrolment's counts when there was one."""

    outcome: UploadOutcome
    enrolment: EnrolmentResult | None = None


def enrol_upload(ctx: WorkerContext, patient_id: int, token: str, actor: int | str) -> UploadEnrolment:
    """Enrol the clips uploaded under ``token`` for ``patient_id``, removing them from Redis.

    ``actor`` is the uploading user's id, resolved to a username here for the audit trail: job
    arguments are stored in Redis and printed in RQ's log lines, so they carry ids, never names.
    (A username string, from a job queued before this changed, is still accepted.)
    """
    if ctx.redis is None:
        raise RuntimeError("enrol_uploaded needs the worker's Redis connection")
    key = enrol_upload_key(token)
    pipe = ctx.redis.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    payloads, _ = pipe.execute()
    if not payloads:
        return UploadEnrolment(UploadOutcome.EXPIRED)
    clips = [mulaw_decode(bytes(p)) for p in payloads]
    try:
        result = enrol(patient_id, clips, _actor_name(ctx, actor), ctx=ctx)
    except ValueError:  # no speech in any clip
        return UploadEnrolment(UploadOutcome.NO_SPEECH)
    return UploadEnrolment(UploadOutcome.ENROLLED, result)


def _actor_name(ctx: WorkerContext, actor: int | str) -> str:
    """The username for a user id (``user:<id>`` if the account is gone); strings pass through."""
    if isinstance(actor, str):
        return actor
    with session_scope(ctx.sessions) as session:
        name = session.scalar(select(User.username).where(User.id == actor))
    return name or f"user:{actor}"


__all__ = ["UploadEnrolment", "UploadOutcome", "enrol_upload"]
