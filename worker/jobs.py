"""The RQ jobs: thin entry points that load the worker's context, run a subject module, return the outcome.

Each job is enqueued by name (``schema.contract.JobName``), takes database ids only, and reads its
resources from :func:`worker.context.current`; the work itself lives in the module named beside it,
where it can be called with an explicit context (the CLI, the live-path evaluation, tests). Each is
safe to run twice: RQ retries a job that raised, and the outbox sweep may re-enqueue one whose
first run died with its worker. What a job returns is an enum or a typed result, kept by RQ as the
job's result and logged.

- ``score_utterance``: score one utterance, refresh the call's flag (:mod:`worker.scoring`);
- ``finalise_call``: the verdict, score and evidence of an ended call (:mod:`worker.finalise`);
- ``grow_baseline_from_call``: add a call resolved as no_pain to the patient's baseline
  (:mod:`worker.baselines`);
- ``rebuild_baseline``: re-derive a baseline after an admin's change (:mod:`worker.baselines`);
- ``enrol_uploaded``: enrol clips an admin uploaded (:mod:`worker.uploads`); ``enroll_uploaded``,
  its old name, stays for jobs enqueued under it.

The baseline library functions the CLI and tools call directly (``enrol``,
``grow_from_resolved_call``, ``start_for_model``) are in :mod:`worker.baselines`, not here.
"""

from __future__ import annotations

import logging

from schema.db import session_scope
from worker import baselines
from worker.baselines import CallNotReady, GrowthOutcome, GrowthResult
from worker.context import current
from worker.finalise import FinaliseOutcome, finalise
from worker.scoring import ScoreOutcome, score
from worker.uploads import UploadEnrolment, UploadOutcome, enrol_upload

log = logging.getLogger(__name__)


def score_utterance(utterance_id: int) -> ScoreOutcome:
    """Score one utterance with the process's model (:func:`worker.scoring.score`)."""
    return score(current(), utterance_id)


def finalise_call(call_id: int) -> FinaliseOutcome:
    """Finalise an ended call (:func:`worker.finalise.finalise`).

    Raises :class:`CallNotReady` while utterances are pending, which RQ's Retry turns into a later
    attempt.
    """
    return finalise(current(), call_id)


def grow_baseline_from_call(call_id: int) -> GrowthResult:
    """Enqueued when a nurse resolves a flag: apply the baseline policy to the call.

    See :mod:`worker.baselines`; only calls resolved with label ``no_pain`` add anything.
    Raises :class:`CallNotReady` while the call is not finalised.
    """
    result = baselines.grow_from_resolved_call(current(), call_id)
    if result.outcome is not GrowthOutcome.APPLIED:
        log.info("call %s: baseline unchanged (%s)", call_id, result.reason)
    else:
        log.info("call %s: %d utterances added to baseline %s", call_id, result.added, result.baseline_id)
    return result


def rebuild_baseline(baseline_id: int) -> int:
    """Re-derive a baseline after an admin excluded or re-included a contribution; returns its count.

    The dashboard that enqueued it has written the audit event (it knows who decided and why).
    """
    with session_scope(current().sessions) as session:
        return baselines.rebuild(session, baseline_id).n


def enrol_uploaded(patient_id: int, token: str, actor: int | str) -> UploadEnrolment:
    """Enrol clips an admin uploaded, read from (and then removed from) Redis (:mod:`worker.uploads`)."""
    done = enrol_upload(current(), patient_id, token, actor)
    result = done.enrolment
    if done.outcome is UploadOutcome.ENROLLED and result is not None:
        log.info(
            "patient %s: enrolled %d clip(s) as %d utterance(s), %d refused by the speaker check, %d without speech",
            patient_id,
            result.accepted,
            result.utterances,
            len(result.rejected_speaker),
            len(result.no_speech),
        )
    else:
        log.info("patient %s: upload not enrolled (%s)", patient_id, done.outcome.value)
    return done


enroll_uploaded = enrol_uploaded
"""The job's name before it was spelt ``enrol``: RQ finds a job's function by its dotted name, so an
upload a dashboard enqueued as ``worker.jobs.enroll_uploaded`` before the upgrade (or a failed one
requeued later) still runs. Nothing enqueues this name any more."""


__all__ = [
    "CallNotReady",
    "enrol_uploaded",
    "finalise_call",
    "grow_baseline_from_call",
    "rebuild_baseline",
    "score_utterance",
]
