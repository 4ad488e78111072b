"""Finalising an ended call: the body of ``worker.jobs.finalise_call``.

The verdict, score and evidence come from :func:`worker.calls.verdict_and_evidence` (the rule the
evaluation's call-level protocol uses); this module decides *when* a call may be finalised and
records the result once. While utterances are still pending it raises :class:`CallNotReady`, which
RQ's Retry turns into a later attempt (enqueued through ``schema.contract.enqueue``, whose
``JobOptions`` give it interval retries; the worker must run with the scheduler). Once
``finalise_grace_s`` has passed since hang-up it stops waiting and finalises on what was scored,
recording how many utterances were left out: a verdict a little late is worth more than none.
After the commit it announces ``call.finalised`` on the call channel, so an open call page shows the
verdict and evidence at once.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from enum import StrEnum

from sqlalchemy import select

from analysis.aggregate import CallVerdict
from schema.audit import record
from schema.contract import LiveEvent
from schema.db import session_scope
from schema.models import Call, CallStatus, utcnow
from worker import metrics
from worker.baselines import CallNotReady
from worker.calls import announce, pending_utterances, verdict_and_evidence
from worker.context import WorkerContext
from worker.flags import FlagChange, announce_from, raise_or_update_flag

log = logging.getLogger(__name__)


class FinaliseOutcome(StrEnum):
    """What :func:`finalise` did; ``worker.jobs.finalise_call`` returns it as the job's result.

    A finalised call's outcome is its verdict (the same strings as :class:`CallVerdict`), so a
    caller reading the job result needs no second lookup; the others say why nothing was written.
    """

    PAIN_LIKELY = CallVerdict.PAIN_LIKELY.value
    NO_PAIN = CallVerdict.NO_PAIN.value
    INCONCLUSIVE = CallVerdict.INCONCLUSIVE.value
    MISSING = "missing"  # the call was deleted before it could be finalised
    ALREADY_FINALISED = "already finalised"  # an earlier run (or a re-enqueue) did it
    STREAMING = "streaming"  # a new stream on the same call: its own end enqueues finalisation again


def finalise(ctx: WorkerContext, call_id: int) -> FinaliseOutcome:
    """Give an ended call its verdict, score and evidence; status ``finalised``. Idempotent.

    Raises :class:`CallNotReady` while utterances are pending and the grace period is not over.
    """
    change: FlagChange | None = None
    with session_scope(ctx.sessions) as session:
        call = session.scalars(select(Call).where(Call.id == call_id).with_for_update()).one_or_none()
        if call is None:
            log.warning("call %s: gone before finalisation", call_id)
            return FinaliseOutcome.MISSING
        if call.status == CallStatus.FINALISED.value:
            return FinaliseOutcome.ALREADY_FINALISED
        if call.status == CallStatus.STREAMING.value:
            log.info("call %s: streaming again, not finalised", call_id)
            return FinaliseOutcome.STREAMING
        pending = pending_utterances(session, call_id)
        if pending:
            ended = call.ended_at or call.started_at
            if utcnow() - ended < timedelta(seconds=ctx.finalise_grace_s):
                raise CallNotReady(f"call {call_id}: {pending} utterances not scored yet")
            log.warning("call %s: finalising with %d utterances unscored", call_id, pending)
        verdict, probability, speech_s, evidence = verdict_and_evidence(session, ctx, call, unscored=pending)
        call.verdict = verdict.value
        call.call_score = probability
        call.speech_s = speech_s
        call.evidence = evidence
        call.status = CallStatus.FINALISED.value
        if verdict is CallVerdict.PAIN_LIKELY and probability is not None:
            change = raise_or_update_flag(session, call, probability, ctx.threshold)
        record(
            session,
            "worker",
            "call.finalise",
            "call",
            call_id,
            verdict=verdict.value,
            utterances=evidence["utterances_scored"],
            unscored=pending,
            model_version=ctx.model.version,
        )
    if change is not None:
        announce_from(ctx, change)
        metrics.flag_published(change.level, change.event, None)  # raised at hang-up: no one utterance
    announce(ctx, LiveEvent.CALL_FINALISED, call_id)
    log.info("call %s finalised: %s", call_id, verdict.value)
    return FinaliseOutcome(verdict.value)


__all__ = ["FinaliseOutcome", "finalise"]
