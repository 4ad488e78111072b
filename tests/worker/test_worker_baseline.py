"""The baseline policy: enrolment, growth only from calls resolved as no_pain, speaker checks, rebuilds."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from sqlalchemy import select

from analysis.baseline import RunningStats
from analysis.segmentation import cut_clip
from schema.contract import EVIDENCE_BASELINE_EMBEDDER
from schema.models import (
    AuditEvent,
    Baseline,
    BaselineContribution,
    Flag,
    FlagLabel,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    utcnow,
)
from tests.worker_fixtures import add_utterance, calm, make_call, make_patient
from worker import baselines, jobs
from worker.baselines import CallNotReady, GrowthOutcome
from worker.context import WorkerContext
from worker.rows import from_bytes


def _patient(ctx: WorkerContext) -> int:
    with ctx.sessions.begin() as s:
        return make_patient(s).id


def _finalised_call(ctx: WorkerContext, patient_id: int, n: int = 3, seed: int = 0) -> tuple[int, list[int]]:
    with ctx.sessions.begin() as s:
        call = make_call(s, s.get_one(Patient, patient_id))
        ids = [add_utterance(s, call, i, calm(135.0, seed=seed + i)) for i in range(n)]
        call_id = call.id
    for uid in ids:
        jobs.score_utterance(uid)
    jobs.finalise_call(call_id)
    return call_id, ids


def _flag(ctx: WorkerContext, call_id: int, status: FlagStatus, label: FlagLabel | None) -> None:
    with ctx.sessions.begin() as s:
        flag = s.scalars(select(Flag).where(Flag.call_id == call_id)).one_or_none()
        if flag is None:
            flag = Flag(call_id=call_id, severity=0.6, level="low", raised_at=utcnow(), updated_at=utcnow())
            s.add(flag)
        flag.status = status.value
        flag.label = label.value if label else None


def _model_baseline(ctx: WorkerContext, patient_id: int) -> Baseline | None:
    with ctx.sessions() as s:
        return s.scalars(
            select(Baseline).where(Baseline.patient_id == patient_id, Baseline.model_version == ctx.model.version)
        ).one_or_none()


def test_enrolment_builds_baseline_and_audits(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    clips = [calm(110.0, seed=k) for k in range(3)]
    result = baselines.enrol(patient_id, clips, "nurse1", ctx=worker_ctx)
    # each clip is cut into utterances as a call would cut it, and each utterance is one contribution
    utterances = [u.samples for clip in clips for u in cut_clip(clip, worker_ctx.vad)]
    assert result.accepted == 3 and result.no_speech == [] and result.utterances == len(utterances) >= 3
    assert result.baseline_n == len(utterances) and result.evidence_n == len(utterances)
    assert result.voiceprint_n == 0  # no speaker embedder in this context
    baseline = _model_baseline(worker_ctx, patient_id)
    assert baseline is not None and baseline.count == len(utterances)
    expected = RunningStats.from_array(worker_ctx.embedder.embed(utterances).astype(np.float64))
    np.testing.assert_allclose(baseline.stats["mean"], expected.mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(baseline.stats["m2"], expected.m2, rtol=1e-4, atol=1e-4)
    with worker_ctx.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "baseline.enrol")).one()
    assert event.actor == "nurse1" and event.object_id == str(patient_id)
    assert event.detail["accepted"] == 3 and event.detail["utterances"] == len(utterances)
    with pytest.raises(LookupError):
        baselines.enrol(987654, clips, "nurse1", ctx=worker_ctx)
    with pytest.raises(ValueError):
        baselines.enrol(patient_id, [], "nurse1", ctx=worker_ctx)


def test_resolved_no_pain_grows_baseline_once(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    call_id, ids = _finalised_call(worker_ctx, patient_id)
    _flag(worker_ctx, call_id, FlagStatus.RESOLVED, FlagLabel.NO_PAIN)
    grown = jobs.grow_baseline_from_call(call_id)
    assert (grown.outcome, grown.added) == (GrowthOutcome.APPLIED, 3)
    baseline = _model_baseline(worker_ctx, patient_id)
    assert baseline is not None and baseline.count == 3
    with worker_ctx.sessions() as s:
        embeddings = [from_bytes(e) for e in s.scalars(select(Score.embedding).where(Score.utterance_id.in_(ids)))]
        sources = set(s.scalars(select(BaselineContribution.source)))
        evidence = s.scalars(select(Baseline).where(Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER)).one()
    np.testing.assert_allclose(baseline.stats["mean"], np.mean(embeddings, axis=0), rtol=1e-6)
    assert sources == {"resolved_call"} and evidence.count == 3
    # the job runs again (a retry, a second resolution click): nothing changes
    again = jobs.grow_baseline_from_call(call_id)
    assert (again.outcome, again.added) == (GrowthOutcome.APPLIED, 0)
    model_baseline = _model_baseline(worker_ctx, patient_id)
    assert model_baseline is not None and model_baseline.count == 3


def test_every_contribution_keeps_its_speech_length_for_the_baseline_page(worker_ctx: WorkerContext) -> None:
    """Issue 13, item 9: an enrolment utterance's audio is discarded, so its length is kept on the row."""
    patient_id = _patient(worker_ctx)
    clips = [calm(110.0, seed=k) for k in range(2)]
    baselines.enrol(patient_id, clips, "admin1", ctx=worker_ctx)
    expected = sorted(u.speech_s for clip in clips for u in cut_clip(clip, worker_ctx.vad))
    call_id, ids = _finalised_call(worker_ctx, patient_id, n=2, seed=7)
    _flag(worker_ctx, call_id, FlagStatus.RESOLVED, FlagLabel.NO_PAIN)
    jobs.grow_baseline_from_call(call_id)
    with worker_ctx.sessions() as s:
        rows = s.execute(
            select(BaselineContribution.source, BaselineContribution.utterance_id, BaselineContribution.speech_s)
        ).all()
        heard = {
            u.id: u.speech_s for u in s.execute(select(Utterance.id, Utterance.speech_s).where(Utterance.id.in_(ids)))
        }
    enrolled = sorted(r.speech_s for r in rows if r.source == "enrolment")
    assert len(enrolled) == 2 * len(expected)  # model and evidence baselines, one row each per utterance
    np.testing.assert_allclose(enrolled, sorted(expected * 2))
    assert all(r.speech_s == heard[r.utterance_id] for r in rows if r.source == "resolved_call")


@pytest.mark.parametrize(
    ("status", "label"),
    [
        (FlagStatus.OPEN, None),
        (FlagStatus.ACKNOWLEDGED, None),
        (FlagStatus.RESOLVED, FlagLabel.PAIN_CONFIRMED),
        (FlagStatus.RESOLVED, FlagLabel.UNSURE),
        (FlagStatus.ACKNOWLEDGED, FlagLabel.NO_PAIN),
    ],
)
def test_other_flags_never_grow_baseline(
    worker_ctx: WorkerContext, status: FlagStatus, label: FlagLabel | None
) -> None:
    patient_id = _patient(worker_ctx)
    call_id, _ = _finalised_call(worker_ctx, patient_id, n=2)
    _flag(worker_ctx, call_id, status, label)
    assert jobs.grow_baseline_from_call(call_id).outcome is GrowthOutcome.NOT_RESOLVED_NO_PAIN
    assert _model_baseline(worker_ctx, patient_id) is None


def test_unflagged_call_never_grows_baseline(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    call_id, _ = _finalised_call(worker_ctx, patient_id, n=2)
    result = baselines.grow_from_resolved_call(worker_ctx, call_id)
    assert result.added == 0 and "no flag" in result.reason


def test_unfinalised_call_waits(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, s.get_one(Patient, patient_id))
        uid = add_utterance(s, call, 0, calm(seed=5))
        call_id = call.id
    jobs.score_utterance(uid)
    _flag(worker_ctx, call_id, FlagStatus.RESOLVED, FlagLabel.NO_PAIN)
    with pytest.raises(CallNotReady):
        jobs.grow_baseline_from_call(call_id)


def test_speaker_mismatch_excluded(worker_ctx: WorkerContext) -> None:
    """With a voiceprint on file, only utterances verified as the patient are folded in."""
    patient_id = _patient(worker_ctx)
    call_id, ids = _finalised_call(worker_ctx, patient_id, n=3, seed=10)
    with worker_ctx.sessions.begin() as s:
        from schema.models import Voiceprint
        from worker.rows import to_bytes

        s.add(Voiceprint(patient_id=patient_id, embedder="speaker", vector=to_bytes(np.ones(4)), count=2))
        for uid, sim in zip(ids, [0.95, 0.30, None], strict=True):
            s.scalars(select(Score).where(Score.utterance_id == uid)).one().speaker_similarity = sim
    _flag(worker_ctx, call_id, FlagStatus.RESOLVED, FlagLabel.NO_PAIN)
    result = baselines.grow_from_resolved_call(worker_ctx, call_id)
    assert result.added == 1 and result.excluded_speaker == 2
    with worker_ctx.sessions() as s:
        included = s.scalars(select(BaselineContribution.utterance_id)).all()
    assert set(included) == {ids[0]}  # model and evidence twins of the verified utterance only


def test_exclusion_rebuild_mirrors_to_evidence(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    clips = [calm(150.0, seed=k) for k in range(20, 24)]
    result = baselines.enrol(patient_id, clips, "nurse1", ctx=worker_ctx)
    with worker_ctx.sessions.begin() as s:
        first = s.scalars(
            select(BaselineContribution)
            .where(BaselineContribution.baseline_id == result.baseline_id)
            .order_by(BaselineContribution.id)
        ).first()
        assert first is not None
        first.included = False
        kept = [
            from_bytes(c.embedding)
            for c in s.scalars(
                select(BaselineContribution).where(
                    BaselineContribution.baseline_id == result.baseline_id,
                    BaselineContribution.id != first.id,
                )
            )
        ]
    assert jobs.rebuild_baseline(result.baseline_id) == 3
    baseline = _model_baseline(worker_ctx, patient_id)
    assert baseline is not None
    np.testing.assert_allclose(baseline.stats["mean"], np.mean(kept, axis=0), rtol=1e-6)
    with worker_ctx.sessions() as s:
        evidence = s.scalars(select(Baseline).where(Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER)).one()
        excluded_twins = s.scalars(
            select(BaselineContribution).where(
                BaselineContribution.baseline_id == evidence.id, BaselineContribution.included.is_(False)
            )
        ).all()
    assert evidence.count == 3 and len(excluded_twins) == 1


def test_derive_baseline_for_new_model(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    old = baselines.enrol(patient_id, [calm(140.0, seed=k) for k in range(30, 33)], "nurse1", ctx=worker_ctx)
    new_model = replace(worker_ctx.model, card={**worker_ctx.model.card, "model_version": "test-egemaps-2"})
    new_id = baselines.start_for_model(worker_ctx, patient_id, new_model)
    assert new_id is not None and new_id != old.baseline_id
    with worker_ctx.sessions() as s:
        a = s.get_one(Baseline, old.baseline_id)
        b = s.get_one(Baseline, new_id)
    assert (b.model_version, b.count) == ("test-egemaps-2", 3)
    np.testing.assert_allclose(a.stats["mean"], b.stats["mean"])
    assert baselines.start_for_model(worker_ctx, patient_id, new_model) == new_id  # idempotent
    other = replace(new_model, card={**new_model.card, "embedder": {"name": "clap", "dim": 512}})
    assert baselines.start_for_model(worker_ctx, patient_id, other) is None  # another space: re-enrol


def test_audit_details_hold_no_caller_data(worker_ctx: WorkerContext) -> None:
    patient_id = _patient(worker_ctx)
    call_id, _ = _finalised_call(worker_ctx, patient_id, n=2, seed=40)
    _flag(worker_ctx, call_id, FlagStatus.RESOLVED, FlagLabel.NO_PAIN)
    jobs.grow_baseline_from_call(call_id)
    with worker_ctx.sessions() as s:
        details = [e.detail for e in s.scalars(select(AuditEvent))]
        assert s.scalars(select(Utterance)).all()
    blob = json.dumps(details).lower()
    assert "mulaw" not in blob and "audio" not in blob and "ref:" not in blob and "hmac:" not in blob
