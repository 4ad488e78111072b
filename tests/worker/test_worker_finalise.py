"""finalise_call: verdicts, evidence, waiting for pending utterances, idempotency."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from sqlalchemy import func, select

from schema.models import AuditEvent, Call, CallStatus, Flag, Patient, Verdict
from tests.worker_fixtures import add_utterance, calm, make_call, make_patient, pain, run_burst
from worker import jobs
from worker.baselines import CallNotReady, enrol
from worker.context import WorkerContext
from worker.finalise import FinaliseOutcome


def _scored_call(ctx: WorkerContext, clips: list, patient_id: int | None = None, **kw: object) -> int:
    with ctx.sessions.begin() as s:
        patient = s.get_one(Patient, patient_id) if patient_id is not None else make_patient(s)
        call = make_call(s, patient)
        ids = [add_utterance(s, call, i, clip, **kw) for i, clip in enumerate(clips)]  # type: ignore[arg-type]
        call_id = call.id
    for uid in ids:
        jobs.score_utterance(uid)
    return call_id


def test_inconclusive_with_too_little_speech(worker_ctx: WorkerContext) -> None:
    call_id = _scored_call(worker_ctx, [pain(seed=1, seconds=1.0), pain(seed=2, seconds=1.0)])
    assert jobs.finalise_call(call_id) == FinaliseOutcome.INCONCLUSIVE
    with worker_ctx.sessions() as s:
        call = s.get_one(Call, call_id)
        assert call.status == CallStatus.FINALISED.value
        assert call.verdict == Verdict.INCONCLUSIVE.value
        assert call.speech_s == pytest.approx(2.0)
        assert call.evidence is not None
        assert call.evidence["utterances_scored"] == 2
        assert call.call_score is not None  # the number is kept; only the verdict abstains


def test_pain_likely_with_evidence_against_baseline(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as s:
        patient_id = make_patient(s).id
    enrol(patient_id, [calm(125.0, seed=k) for k in (10, 11, 12, 13)], "nurse1", ctx=worker_ctx)
    call_id = _scored_call(worker_ctx, [calm(125.0, seed=14), pain(125.0, seed=15), pain(125.0, seed=16)], patient_id)
    assert jobs.finalise_call(call_id) == FinaliseOutcome.PAIN_LIKELY
    with worker_ctx.sessions() as s:
        call = s.get_one(Call, call_id)
        flag = s.scalars(select(Flag).where(Flag.call_id == call_id)).one()
    ev = call.evidence
    assert ev is not None and call.call_score is not None
    assert call.verdict == Verdict.PAIN_LIKELY.value and flag.severity >= call.call_score - 1e-9
    probs = [u["probability"] for u in ev["top_utterances"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    assert {u["seq"] for u in ev["top_utterances"][:2]} == {1, 2}  # the pain utterances drove it
    assert ev["baseline"] == {"n": 4}
    moved = {m["measure"]: m for m in ev["moved"]}
    assert moved, "something must have moved against a calm baseline"
    # two of three utterances are 5 semitones up and 8 dB louder: the speech-weighted call mean
    # moves by two thirds of that
    assert len(ev["moved"]) == 3
    assert [abs(m["z"]) for m in ev["moved"]] == sorted((abs(m["z"]) for m in ev["moved"]), reverse=True)
    assert moved["pitch"]["delta"] == pytest.approx(5.0 * 2 / 3, abs=0.7)
    assert moved["pitch"]["text"].startswith("pitch +3.")
    call_pitch = next(m["value"] for m in ev["measures"] if m["measure"] == "pitch")
    assert moved["pitch"]["value"] == pytest.approx(call_pitch, abs=0.01)
    assert moved["pitch"]["baseline"] == pytest.approx(12 * np.log2(125.0 / 27.5), abs=0.5)
    assert moved["jitter"]["delta"] > 0.5 and moved["syllable_rate"]["delta"] > 1.0
    assert all("value" in m for m in ev["measures"])


def test_waits_for_pending_utterances_then_gives_up_after_grace(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        scored = add_utterance(s, call, 0, calm(seed=20))
        add_utterance(s, call, 1, calm(seed=21))  # never scored
        call_id = call.id
    jobs.score_utterance(scored)
    with pytest.raises(CallNotReady):
        jobs.finalise_call(call_id)
    with worker_ctx.sessions.begin() as s:
        call = s.get_one(Call, call_id)
        assert call.status == CallStatus.ENDED.value
        assert call.ended_at is not None
        call.ended_at = call.ended_at - timedelta(seconds=worker_ctx.finalise_grace_s + 1)
    assert jobs.finalise_call(call_id) == FinaliseOutcome.INCONCLUSIVE  # 2.5 s scored < 3 s
    with worker_ctx.sessions() as s:
        call = s.get_one(Call, call_id)
        assert call.status == CallStatus.FINALISED.value
        assert call.evidence is not None
        assert call.evidence["utterances_unscored"] == 1
        assert call.evidence["utterances_scored"] == 1


def test_not_ready_is_retried_by_rq(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    """Pending utterance: the finalise job fails and RQ re-queues it; once scored, it finalises."""
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, make_patient(s))
        uid = add_utterance(s, call, 0, calm(seed=30, seconds=4.0))
        call_id = call.id
    job = worker_queue.enqueue(
        "worker.jobs.finalise_call", call_id, job_id=f"finalise-call-{call_id}", retry=Retry(max=1)
    )
    worker_queue.enqueue("worker.jobs.score_utterance", uid, job_id=f"score-utterance-{uid}")
    run_burst(worker_queue)  # finalise fails first (pending), scoring runs, the retry finalises
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert job.return_value() in {FinaliseOutcome.NO_PAIN, FinaliseOutcome.PAIN_LIKELY}
    with worker_ctx.sessions() as s:
        assert s.get_one(Call, call_id).status == CallStatus.FINALISED.value


def test_finalise_is_idempotent(worker_ctx: WorkerContext) -> None:
    call_id = _scored_call(worker_ctx, [calm(seed=40), calm(seed=41)])
    first = jobs.finalise_call(call_id)
    assert first == FinaliseOutcome.NO_PAIN
    with worker_ctx.sessions() as s:
        evidence = s.get_one(Call, call_id).evidence
    assert jobs.finalise_call(call_id) == FinaliseOutcome.ALREADY_FINALISED
    with worker_ctx.sessions() as s:
        assert s.get_one(Call, call_id).evidence == evidence
        events = s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "call.finalise"))
        assert events == 1
    assert jobs.finalise_call(999_999) == FinaliseOutcome.MISSING


def test_streaming_call_is_not_finalised(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as s:
        call_id = make_call(s, None, status=CallStatus.STREAMING).id
    assert jobs.finalise_call(call_id) == FinaliseOutcome.STREAMING
    with worker_ctx.sessions() as s:
        assert s.get_one(Call, call_id).status == CallStatus.STREAMING.value
