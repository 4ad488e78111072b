"""Retention sweeps (worker.retention, ``painline retention``) on SQLite and PostgreSQL.

Old unscored audio and old per-utterance rows go; recent ones, calls, flags with their resolution,
baseline contributions and the audit trail stay; every sweep leaves one audit row of counts; a second
sweep finds nothing. (That scoring itself deletes the audio is checked in tests/worker/test_worker_score.py
and, through a whole replayed call, tests/painline/test_replay.py.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from painline import cli
from schema.audit import record
from schema.db import session_factory, session_scope
from schema.models import (
    AuditEvent,
    Baseline,
    BaselineContribution,
    Call,
    CallStatus,
    Flag,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    UtteranceAudio,
    UtteranceStatus,
    utcnow,
)
from tests.rows import add_flag_row, add_score_row, add_utterance_row
from worker.retention import sweep_retention

AUDIO = b"\x7f\x80" * 800


@dataclass
class Rows:
    old_call: int
    old_flag: int
    old_utterances: list[int]
    stale_audio: int  # pending, its audio 2 days old
    fresh_audio: int  # pending, its audio 1 hour old
    recent_scored: int  # scored 10 days ago
    contribution: int


def _utterance(s, call: Call, seq: int, age: timedelta, *, status: str, audio: bool, score: bool) -> int:
    at = utcnow() - age
    u = add_utterance_row(s, call.id, seq, step_ms=2000, length_ms=1500, status=status, created_at=at)
    if audio:
        s.add(UtteranceAudio(utterance_id=u.id, mulaw=AUDIO))
    if score:
        add_score_row(s, u.id, model_version="m1", probability=0.8, features={"measures": {}}, created_at=at)
    s.flush()
    return u.id


def _seed(engine: Engine) -> Rows:
    with session_scope(session_factory(engine)) as s:
        patient = Patient(key="ref:retention-test")
        s.add(patient)
        s.flush()
        long_ago = utcnow() - timedelta(days=400)
        old = Call(
            call_sid="CA" + "0" * 32,
            patient_id=patient.id,
            started_at=long_ago,
            ended_at=long_ago,
            status=CallStatus.FINALISED.value,
            verdict="pain_likely",
            call_score=0.8,
            evidence={"utterances_scored": 2},
        )
        recent = Call(
            call_sid="CA" + "9" * 32,
            patient_id=patient.id,
            status=CallStatus.ENDED.value,
            started_at=utcnow() - timedelta(days=10),
        )
        s.add_all([old, recent])
        s.flush()
        old_utterances = [
            _utterance(s, old, i, timedelta(days=400), status=UtteranceStatus.SCORED.value, audio=False, score=True)
            for i in range(2)
        ]
        flag = add_flag_row(
            s,
            call_id=old.id,
            patient_id=patient.id,
            severity=0.8,
            raised_at=long_ago,
            status=FlagStatus.RESOLVED.value,
            label="no_pain",
            note="fine",
            acknowledged_at=long_ago,
            acknowledged_by="nurse1",
            resolved_at=long_ago,
            resolved_by="nurse1",
        )
        record(s, "nurse1", "flag.resolve", "flag", flag.id, call_id=old.id, label="no_pain")
        baseline = Baseline(patient_id=patient.id, embedder="egemaps", model_version="m1", stats={"n": 1}, count=1)
        s.add(baseline)
        s.flush()
        contribution = BaselineContribution(
            baseline_id=baseline.id,
            utterance_id=old_utterances[0],
            call_id=old.id,
            source="resolved_call",
            embedding=b"\1" * 16,
        )
        s.add(contribution)
        s.flush()
        return Rows(
            old_call=old.id,
            old_flag=flag.id,
            old_utterances=old_utterances,
            stale_audio=_utterance(
                s, recent, 0, timedelta(days=2), status=UtteranceStatus.PENDING.value, audio=True, score=False
            ),
            fresh_audio=_utterance(
                s, recent, 1, timedelta(hours=1), status=UtteranceStatus.PENDING.value, audio=True, score=False
            ),
            recent_scored=_utterance(
                s, recent, 2, timedelta(days=10), status=UtteranceStatus.SCORED.value, audio=False, score=True
            ),
            contribution=contribution.id,
        )


def _sweeps(engine: Engine) -> list[AuditEvent]:
    with session_scope(session_factory(engine)) as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action == "retention.sweep").order_by(AuditEvent.id)))


def test_sweep_deletes_old_data_keeps_recent_data_and_the_record(migrated_engine: Engine) -> None:
    rows = _seed(migrated_engine)
    result = sweep_retention(session_factory(migrated_engine), audio_hours=24, score_days=365, batch_size=1)
    assert (result.audio_deleted, result.utterances_skipped) == (1, 1)
    assert (result.utterances_deleted, result.scores_deleted) == (2, 2)

    with session_scope(session_factory(migrated_engine)) as s:
        # unscored audio past 24 h is gone, its utterance no longer waits to be scored; fresh audio stays
        assert s.get(UtteranceAudio, rows.stale_audio) is None
        assert s.get(Utterance, rows.stale_audio).status == UtteranceStatus.SKIPPED.value  # type: ignore[union-attr]
        assert s.get(UtteranceAudio, rows.fresh_audio) is not None
        assert s.get(Utterance, rows.fresh_audio).status == UtteranceStatus.PENDING.value  # type: ignore[union-attr]
        # per-utterance rows past a year are gone, recent ones stay
        assert all(s.get(Utterance, u) is None for u in rows.old_utterances)
        assert s.scalars(select(Score.utterance_id)).all() == [rows.recent_scored]
        # the call's outcome, the flag's resolution, the baseline and the audit trail are kept
        call = s.get(Call, rows.old_call)
        assert call is not None and call.verdict == "pain_likely" and call.call_score == 0.8
        flag = s.get(Flag, rows.old_flag)
        assert flag is not None and (flag.label, flag.resolved_by, flag.acknowledged_by) == (
            "no_pain",
            "nurse1",
            "nurse1",
        )
        contribution = s.get(BaselineContribution, rows.contribution)
        assert contribution is not None and contribution.utterance_id is None and contribution.embedding == b"\1" * 16
        assert s.scalars(select(AuditEvent.action).where(AuditEvent.action == "flag.resolve")).all() == ["flag.resolve"]

    [event] = _sweeps(migrated_engine)
    assert event.actor == "retention" and event.object_type == "retention" and event.object_id == "-"
    assert event.detail == {
        "audio_deleted": 1,
        "utterances_skipped": 1,
        "utterances_deleted": 2,
        "scores_deleted": 2,
        "audio_hours": 24,
        "score_days": 365,
    }


def test_sweep_is_idempotent_and_audits_every_run(migrated_engine: Engine) -> None:
    _seed(migrated_engine)
    sessions = session_factory(migrated_engine)
    first = sweep_retention(sessions)
    second = sweep_retention(sessions)
    assert first.utterances_deleted == 2
    assert (second.audio_deleted, second.utterances_skipped, second.utterances_deleted, second.scores_deleted) == (
        0,
        0,
        0,
        0,
    )
    events = _sweeps(migrated_engine)
    assert len(events) == 2 and events[1].detail["utterances_deleted"] == 0
    # counts and limits only: no id of any deleted row
    assert set(events[0].detail) == {
        "audio_deleted",
        "utterances_skipped",
        "utterances_deleted",
        "scores_deleted",
        "audio_hours",
        "score_days",
    }


def test_limits_must_be_positive(migrated_engine: Engine) -> None:
    with pytest.raises(ValueError):
        sweep_retention(session_factory(migrated_engine), audio_hours=0)


def test_retention_command_runs_a_sweep(
    migrated_engine: Engine, db_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    rows = _seed(migrated_engine)
    monkeypatch.setenv("PAINLINE_DATABASE_URL", db_url)
    monkeypatch.setenv("PAINLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PAINLINE_AUDIO_RETENTION_HOURS", "0.5")  # the 1-hour-old audio goes too
    assert cli.main(["retention", "--actor", "cron"]) == 0
    with session_scope(session_factory(migrated_engine)) as s:
        assert s.get(UtteranceAudio, rows.fresh_audio) is None
    [event] = _sweeps(migrated_engine)
    assert event.actor == "cron" and event.detail["audio_deleted"] == 2 and event.detail["audio_hours"] == 0.5
    json.dumps(event.detail)  # plain JSON: nothing but numbers
