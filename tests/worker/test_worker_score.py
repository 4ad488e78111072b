"""score_utterance through a real RQ worker, on SQLite and PostgreSQL, with real Redis."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import numpy as np
import pytest
from rq import Queue, Retry
from rq.job import JobStatus
from sqlalchemy import func, select, text

from analysis.embedders.speaker import cosine_similarity, pooled_similarity
from analysis.model import PainModel
from painline.workers import PainlineWorker
from schema.models import (
    Baseline,
    Call,
    Flag,
    Patient,
    PopulationStats,
    Score,
    Utterance,
    UtteranceAudio,
    UtteranceStatus,
    Voiceprint,
)
from tests.worker_fixtures import add_utterance, calm, make_call, make_patient, pain, run_burst
from worker import jobs, scoring
from worker.baselines import enrol
from worker.context import WorkerContext
from worker.rows import from_bytes, to_bytes
from worker.scoring import ScoreOutcome

SCORE = "worker.jobs.score_utterance"


def _count(ctx: WorkerContext, model: Any, *where: Any) -> int:
    with ctx.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def _call_with(ctx: WorkerContext, clips: list[np.ndarray], *, patient: bool = True) -> tuple[int, list[int]]:
    with ctx.sessions.begin() as s:
        p = make_patient(s) if patient else None
        call = make_call(s, p)
        ids = [add_utterance(s, call, i, clip) for i, clip in enumerate(clips)]
        return call.id, ids


def test_score_end_to_end_through_rq(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    _, (uid,) = _call_with(worker_ctx, [calm(150.0, seed=3)])
    job = worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}")
    assert run_burst(worker_queue)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    with worker_ctx.sessions() as s:
        scores = s.scalars(select(Score).where(Score.utterance_id == uid)).all()
        assert len(scores) == 1
        score = scores[0]
        assert score.model_version == worker_ctx.model.version
        assert 0.0 <= score.probability <= 1.0
        assert score.baseline_applied is False and score.baseline_n == 0
        assert score.speaker_similarity is None  # no speaker embedder, no voiceprint
        assert from_bytes(score.embedding).shape == (worker_ctx.model.dim,)
        assert score.features is not None
        assert set(score.features["measures"]) >= {"pitch", "loudness", "jitter"}
        assert score.features["measures"]["pitch"] == pytest.approx(12 * np.log2(150 / 27.5), abs=0.6)
        assert s.get_one(Utterance, uid).status == UtteranceStatus.SCORED.value
        assert s.get(UtteranceAudio, uid) is None
        pop = s.scalars(select(PopulationStats)).one()
        assert (pop.embedder, pop.model_version, pop.count) == ("egemaps", worker_ctx.model.version, 1)
        np.testing.assert_allclose(pop.stats["mean"], from_bytes(score.embedding), rtol=1e-6)


def test_second_run_scores_once(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    _, (u1, u2) = _call_with(worker_ctx, [calm(seed=4), calm(seed=5)])
    for uid in (u1, u2):
        worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}")
    run_burst(worker_queue)
    # the outbox sweep or a retry runs the same job again
    again = worker_queue.enqueue(SCORE, u1, job_id=f"score-utterance-{u1}-again")
    run_burst(worker_queue)
    assert again.return_value(refresh=True) == ScoreOutcome.ALREADY_SCORED
    assert jobs.score_utterance(u1) == ScoreOutcome.ALREADY_SCORED
    assert _count(worker_ctx, Score) == 2
    with worker_ctx.sessions() as s:
        assert s.scalars(select(PopulationStats.count)).one() == 2


def test_crash_mid_job_is_retried_and_scores_once(
    worker_ctx: WorkerContext, worker_queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, (uid,) = _call_with(worker_ctx, [calm(seed=6)])
    real_embed = worker_ctx.embedder.embed
    calls = {"n": 0}

    def flaky(clips: Any, sr: int = 8000) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated crash while embedding")
        return real_embed(clips, sr)

    monkeypatch.setattr(worker_ctx.embedder, "embed", flaky)
    job = worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}", retry=Retry(max=2))
    run_burst(worker_queue)
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert calls["n"] >= 2  # the crash, then the retry's embedding (twice if evidence needs its own pass)
    assert _count(worker_ctx, Score, Score.utterance_id == uid) == 1
    with worker_ctx.sessions() as s:
        assert s.scalars(select(PopulationStats.count)).one() == 1
        assert s.get(UtteranceAudio, uid) is None


def test_failure_after_insert_rolls_everything_back(worker_ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A crash inside the write transaction leaves no score, no population update, the audio kept."""
    _, (uid,) = _call_with(worker_ctx, [calm(seed=7)])

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("simulated crash after the score insert")

    monkeypatch.setattr(scoring, "update_running_score", boom)  # the write step of score_utterance
    with pytest.raises(RuntimeError):
        jobs.score_utterance(uid)
    assert _count(worker_ctx, Score) == 0
    assert _count(worker_ctx, PopulationStats) == 0
    assert _count(worker_ctx, UtteranceAudio) == 1
    monkeypatch.undo()
    assert jobs.score_utterance(uid) == ScoreOutcome.SCORED
    with worker_ctx.sessions() as s:
        assert s.scalars(select(PopulationStats.count)).one() == 1


def test_missing_audio_marks_failed(worker_ctx: WorkerContext) -> None:
    _, (uid,) = _call_with(worker_ctx, [calm(seed=8)])
    with worker_ctx.sessions.begin() as s:
        s.delete(s.get(UtteranceAudio, uid))
    assert jobs.score_utterance(uid) == ScoreOutcome.NO_AUDIO
    with worker_ctx.sessions() as s:
        assert s.get_one(Utterance, uid).status == UtteranceStatus.FAILED.value
    assert jobs.score_utterance(10_000_000) == ScoreOutcome.MISSING


def _drain(pubsub: Any, timeout_s: float = 5.0) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is None:
            if out:
                break
            continue
        out.append(json.loads(message["data"]))
    return out


def test_flag_raised_and_published(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    assert worker_ctx.redis is not None
    pubsub = worker_ctx.redis.pubsub()
    pubsub.subscribe(worker_ctx.flag_channel)
    pubsub.get_message(timeout=1.0)  # subscription confirmation
    try:
        call_id, ids = _call_with(worker_ctx, [pain(130.0, seed=s) for s in (11, 12)])
        for uid in ids:
            worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}")
        run_burst(worker_queue)
        messages = _drain(pubsub)
    finally:
        pubsub.close()
    with worker_ctx.sessions() as s:
        call = s.get_one(Call, call_id)
        flag = s.scalars(select(Flag).where(Flag.call_id == call_id)).one()
        assert call.call_score is not None and call.call_score >= worker_ctx.threshold
        assert call.speech_s == pytest.approx(5.0)
        assert flag.status == "open" and flag.severity == pytest.approx(call.call_score)
    # one raise (the first utterance alone is too little speech); a later level change may follow
    assert messages and messages[0]["event"] == "flag.raised"
    first = messages[0]
    assert set(first) == {
        "event",
        "flag_id",
        "call_id",
        "level",
        "severity",
        "probability",
        "status",
        "utterance_id",
        "sent_at",
    }
    assert first["flag_id"] == flag.id and first["call_id"] == call_id
    assert first["utterance_id"] == ids[1]  # the utterance whose score pushed the call over
    raw = json.dumps(messages).lower()
    for forbidden in ("audio", "mulaw", "patient", "phone", "number", "caller", "+1"):
        assert forbidden not in raw


def test_calm_call_raises_no_flag(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    call_id, ids = _call_with(worker_ctx, [calm(130.0, seed=s) for s in (21, 22)])
    for uid in ids:
        worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}")
    run_burst(worker_queue)
    with worker_ctx.sessions() as s:
        call_score = s.get_one(Call, call_id).call_score
        assert call_score is not None and call_score < worker_ctx.threshold
    assert _count(worker_ctx, Flag) == 0


def test_too_little_speech_raises_no_flag(worker_ctx: WorkerContext) -> None:
    call_id, (uid,) = _call_with(worker_ctx, [pain(130.0, seed=31, seconds=1.5)])
    jobs.score_utterance(uid)
    with worker_ctx.sessions() as s:
        call_score = s.get_one(Call, call_id).call_score
        assert call_score is not None and call_score >= worker_ctx.threshold
    assert _count(worker_ctx, Flag) == 0


def test_baseline_applied_when_enrolled(worker_ctx: WorkerContext) -> None:
    with worker_ctx.sessions.begin() as s:
        patient_id = make_patient(s).id
    enrol(patient_id, [calm(170.0, seed=s) for s in (41, 42, 43)], "nurse1", ctx=worker_ctx)
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, s.get_one(Patient, patient_id))
        uid = add_utterance(s, call, 0, pain(170.0, seed=44))
    jobs.score_utterance(uid)
    with worker_ctx.sessions() as s:
        score = s.scalars(select(Score).where(Score.utterance_id == uid)).one()
        assert score.baseline_applied is True
        assert score.baseline_n == 3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_speaker_check_pools_the_calls_speech(worker_ctx: WorkerContext, speaker_embedder: Any) -> None:
    """The decision is made on the call's speech so far: an utterance unlike the enrolled voice is
    judged together with the call's earlier utterances, whose d-vectors are kept (encrypted) for it."""
    worker_ctx.speaker_embedder = speaker_embedder
    with worker_ctx.sessions.begin() as s:
        patient_id = make_patient(s).id
    enrol_clips = [calm(120.0, seed=s) for s in (61, 62)]
    enrol(patient_id, enrol_clips, "nurse1", ctx=worker_ctx)
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, s.get_one(Patient, patient_id))
        first = add_utterance(s, call, 0, enrol_clips[0])
        changed = add_utterance(s, call, 1, pain(210.0, seed=63))
    jobs.score_utterance(first)
    jobs.score_utterance(changed)
    with worker_ctx.sessions() as s:
        a = s.scalars(select(Score).where(Score.utterance_id == first)).one()
        b = s.scalars(select(Score).where(Score.utterance_id == changed)).one()
        voiceprint = from_bytes(s.scalars(select(Voiceprint.vector).where(Voiceprint.patient_id == patient_id)).one())
    assert a.speaker_vector is not None and b.speaker_vector is not None
    d_first, d_changed = from_bytes(a.speaker_vector), from_bytes(b.speaker_vector)
    assert a.speaker_similarity == pytest.approx(cosine_similarity(d_first, voiceprint), abs=1e-5)
    assert b.speaker_similarity == pytest.approx(pooled_similarity([d_first, d_changed], voiceprint), abs=1e-5)
    assert b.speaker_similarity is not None
    assert b.speaker_similarity > cosine_similarity(d_changed, voiceprint)  # the call's first words count too
    assert b.baseline_applied is (b.speaker_similarity >= worker_ctx.speaker_threshold)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_speaker_check_uses_voiceprint(worker_ctx: WorkerContext, speaker_embedder: Any) -> None:
    """Same voice: similarity near 1 and the baseline applies; someone else: population only."""
    worker_ctx.speaker_embedder = speaker_embedder
    with worker_ctx.sessions.begin() as s:
        patient = make_patient(s)
        patient_id = patient.id
    enrol_clips = [calm(120.0, seed=s) for s in (51, 52)]
    result = enrol(patient_id, enrol_clips, "nurse1", ctx=worker_ctx)
    assert result.voiceprint_n == 2
    with worker_ctx.sessions.begin() as s:
        call = make_call(s, s.get_one(Patient, patient_id))
        same = add_utterance(s, call, 0, enrol_clips[0])
        other = add_utterance(s, call, 1, calm(120.0, seed=53))
    jobs.score_utterance(same)
    # turn the voiceprint around: whoever speaks now is as unlike the patient as can be
    with worker_ctx.sessions.begin() as s:
        vp = s.scalars(select(Voiceprint).where(Voiceprint.patient_id == patient_id)).one()
        vp.vector = to_bytes(-from_bytes(vp.vector))
    jobs.score_utterance(other)
    with worker_ctx.sessions() as s:
        a = s.scalars(select(Score).where(Score.utterance_id == same)).one()
        b = s.scalars(select(Score).where(Score.utterance_id == other)).one()
    assert a.speaker_similarity is not None and a.speaker_similarity > 0.9
    assert a.baseline_applied is True
    assert b.speaker_similarity is not None and b.speaker_similarity < 0.0
    assert b.baseline_applied is False and b.baseline_n == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_forking_worker(worker_ctx: WorkerContext, worker_queue: Queue) -> None:
    """RQ's default Worker forks per job: the child must get its own connections, the parent keep its."""
    _, (uid,) = _call_with(worker_ctx, [calm(seed=61)])
    with worker_ctx.engine.connect() as conn:
        parent_pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
    job = worker_queue.enqueue(SCORE, uid, job_id=f"score-utterance-{uid}")
    PainlineWorker([worker_queue], connection=worker_queue.connection, job_class=worker_queue.job_class).work(
        burst=True, logging_level="WARNING"
    )
    assert job.get_status(refresh=True) == JobStatus.FINISHED
    assert _count(worker_ctx, Score, Score.utterance_id == uid) == 1
    # the parent's pooled connection is the same backend and still healthy
    with worker_ctx.engine.connect() as conn:
        assert conn.execute(text("SELECT pg_backend_pid()")).scalar_one() == parent_pid
        assert conn.execute(text("SELECT 1")).scalar_one() == 1
    assert os.getpid()  # still the test process


def test_model_mismatch_refused(pain_model_path: Any) -> None:
    from analysis.model import ModelMismatchError

    with pytest.raises(ModelMismatchError):
        PainModel.load(pain_model_path, expect_embedder="compare")


def test_context_build_loads_artifact(pain_model_path: Any, db_url: str, worker_redis: Any) -> None:
    ctx = WorkerContext.build(
        database_url=db_url,
        redis=worker_redis,
        model_path=pain_model_path,
        speaker=False,
        min_speech_s=4.0,
        flag_channel="painline:test-build:flags",
    )
    try:
        assert ctx.model.version == "test-egemaps-1"
        assert ctx.evidence_embedder is ctx.embedder  # egemaps model: evidence reuses it
        assert ctx.min_speech_s == 4.0 and ctx.threshold == pytest.approx(0.5)
        assert ctx.with_(flag_threshold=0.8).threshold == pytest.approx(0.8)
    finally:
        ctx.engine.dispose()


def test_baseline_row_not_created_by_scoring(worker_ctx: WorkerContext) -> None:
    _, (uid,) = _call_with(worker_ctx, [calm(seed=71)])
    jobs.score_utterance(uid)
    assert _count(worker_ctx, Baseline) == 0


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_runs_race_safely(worker_ctx: WorkerContext) -> None:
    """Two workers on the same utterance, and two on sibling utterances, at the same moment."""
    from concurrent.futures import ThreadPoolExecutor

    call_id, (u1, u2) = _call_with(worker_ctx, [pain(seed=81), pain(seed=82)])
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(jobs.score_utterance, [u1, u1, u2, u2]))
    assert sorted(outcomes) == [
        ScoreOutcome.ALREADY_SCORED,
        ScoreOutcome.ALREADY_SCORED,
        ScoreOutcome.SCORED,
        ScoreOutcome.SCORED,
    ]
    assert _count(worker_ctx, Score) == 2
    with worker_ctx.sessions() as s:
        assert s.scalars(select(PopulationStats.count)).one() == 2
        call = s.get_one(Call, call_id)
        probs = s.scalars(select(Score.probability)).all()
        from analysis.aggregate import call_probability

        # whichever job committed last saw both scores under the call's row lock
        assert call.call_score == pytest.approx(call_probability(probs, [2.5, 2.5]))
        assert call.speech_s == pytest.approx(5.0)
        assert s.scalar(select(func.count()).select_from(Flag)) == 1
