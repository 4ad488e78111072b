"""The schema package on both backends: migrations match the models, constraints hold, keys stay
private, the audit trail refuses caller data."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect, select, text, update
from sqlalchemy.exc import IntegrityError, StatementError
from sqlalchemy.orm import Session

from schema import audit
from schema.db import make_engine, session_factory, session_scope
from schema.identity import caller_key, normalise_e164, patient_ref_key
from schema.migrate import current_revision, downgrade, head_revision, is_up_to_date, upgrade
from schema.models import (
    AuditEvent,
    Base,
    Baseline,
    BaselineContribution,
    Call,
    ContributionSource,
    Flag,
    FlagStatus,
    Patient,
    Score,
    StreamToken,
    Utterance,
    UtteranceAudio,
    Verdict,
)

REPO = Path(__file__).resolve().parents[2]
KEY = b"test-secret-not-for-production"


# -- helpers ----------------------------------------------------------------------------------------


def _call_with_utterance(session: Session, sid: str = "CA0001") -> tuple[Call, Utterance]:
    patient = Patient(key=caller_key("+14155550100", KEY) if sid == "CA0001" else patient_ref_key(sid))
    call = Call(call_sid=sid, patient=patient, consent=True)
    utterance = Utterance(call=call, seq=0, start_ms=0, end_ms=1500, speech_s=1.2)
    session.add_all([patient, call, utterance])
    session.flush()
    return call, utterance


def _score(utterance: Utterance, model_version: str = "m1") -> Score:
    return Score(
        utterance_id=utterance.id,
        model_version=model_version,
        probability=0.7,
        baseline_applied=False,
        baseline_n=0,
        embedding=b"\x00" * 16,
    )


def _table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


# -- migrations -------------------------------------------------------------------------------------


def test_migrations_produce_exactly_the_models(fresh_db_url: str) -> None:
    upgrade(fresh_db_url)
    assert _table_names(fresh_db_url) == set(Base.metadata.tables) | {"alembic_version"}
    engine = make_engine(fresh_db_url)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    finally:
        engine.dispose()
    assert diffs == []
    assert current_revision(fresh_db_url) == head_revision() == "0005"
    assert is_up_to_date(fresh_db_url)


def test_upgrade_is_idempotent_and_downgrade_reaches_base(fresh_db_url: str) -> None:
    upgrade(fresh_db_url)
    upgrade(fresh_db_url)  # already at head: nothing to do, nothing breaks
    downgrade(fresh_db_url, "base")
    assert _table_names(fresh_db_url) <= {"alembic_version"}
    assert current_revision(fresh_db_url) is None
    upgrade(fresh_db_url)  # and back up again from base
    assert _table_names(fresh_db_url) == set(Base.metadata.tables) | {"alembic_version"}


def test_developer_alembic_ini_runs(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'dev.sqlite'}"
    env = {**os.environ, "PAINLINE_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-c", "migrations/alembic.ini", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == "0005"


def test_offline_sql_renders_for_postgresql() -> None:
    from alembic import command

    from schema.migrate import alembic_config

    config = alembic_config("postgresql+psycopg://nobody@localhost/none")
    config.output_buffer = buffer = __import__("io").StringIO()
    command.upgrade(config, "head", sql=True)
    ddl = buffer.getvalue()
    assert "CREATE TABLE scores" in ddl
    assert "JSONB" in ddl and "DEFAULT true" in ddl


# -- constraints on both backends ---------------------------------------------------------------------


def test_duplicate_score_for_same_utterance_and_model_is_rejected(db_session: Session) -> None:
    _, utterance = _call_with_utterance(db_session)
    db_session.add(_score(utterance))
    db_session.flush()
    db_session.add(_score(utterance, model_version="m2"))  # another model version is fine
    db_session.flush()
    db_session.add(_score(utterance))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_utterance_seq_and_call_sid_are_unique(db_session: Session) -> None:
    call, _ = _call_with_utterance(db_session)
    db_session.add(Utterance(call=call, seq=0, start_ms=2000, end_ms=2500, speech_s=0.4))
    with pytest.raises(IntegrityError):
        db_session.flush()
    db_session.rollback()
    db_session.add_all([Call(call_sid="CA-dup"), Call(call_sid="CA-dup")])
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_contributions_without_utterance_do_not_collide(db_session: Session) -> None:
    call, utterance = _call_with_utterance(db_session)
    baseline = Baseline(patient_id=call.patient_id, embedder="e", model_version="m1", stats={"n": 0})
    db_session.add(baseline)
    db_session.flush()
    enrol = ContributionSource.ENROLMENT
    db_session.add_all(
        [
            BaselineContribution(baseline_id=baseline.id, source=enrol, embedding=b"a"),
            BaselineContribution(baseline_id=baseline.id, source=enrol, embedding=b"b"),
            BaselineContribution(
                baseline_id=baseline.id,
                utterance_id=utterance.id,
                source=ContributionSource.RESOLVED_CALL,
                embedding=b"c",
            ),
        ]
    )
    db_session.flush()
    db_session.add(
        BaselineContribution(
            baseline_id=baseline.id,
            utterance_id=utterance.id,
            source=ContributionSource.RESOLVED_CALL,
            embedding=b"d",
        )
    )
    with pytest.raises(IntegrityError):
        db_session.flush()


@pytest.mark.parametrize(
    "bad",
    [
        {"verdict": "maybe"},
        {"status": "gone"},
        {"stream_status": "stream-started"},
        {"speech_s": -1.0},
    ],
)
def test_vocabulary_checks_reject_unknown_values(db_session: Session, bad: dict[str, object]) -> None:
    db_session.add(Call(call_sid="CA-check", **bad))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_patient_key_must_never_be_a_raw_number(db_session: Session) -> None:
    db_session.add(Patient(key="+14155550100"))
    with pytest.raises(IntegrityError):
        db_session.flush()


def test_deleting_an_utterance_cascades_to_its_audio(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    with session_scope(factory) as session:
        _, utterance = _call_with_utterance(session)
        session.add(UtteranceAudio(utterance_id=utterance.id, mulaw=b"\xff" * 800))
        session.add(_score(utterance))
        utterance_id = utterance.id
    with migrated_engine.begin() as conn:  # a plain DELETE: the database itself must cascade
        conn.execute(text("DELETE FROM utterances WHERE id = :id"), {"id": utterance_id})
    with session_scope(factory) as session:
        assert session.get(UtteranceAudio, utterance_id) is None
        assert session.scalars(select(Score)).all() == []


def test_stream_token_can_be_consumed_once(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    now = datetime.now(UTC)
    with session_scope(factory) as session:
        session.add(StreamToken(nonce="n1", call_sid="CA1", expires_at=now + timedelta(minutes=2)))
    consume = (
        update(StreamToken)
        .where(StreamToken.nonce == "n1", StreamToken.used_at.is_(None), StreamToken.expires_at > now)
        .values(used_at=now)
    )
    with migrated_engine.begin() as conn:
        assert conn.execute(consume).rowcount == 1
    with migrated_engine.begin() as conn:
        assert conn.execute(consume).rowcount == 0


# -- column behaviour ---------------------------------------------------------------------------------


def test_timestamps_come_back_aware_utc_and_naive_ones_are_refused(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    plus_two = timezone(timedelta(hours=2))
    raised = datetime(2024, 5, 1, 12, 0, tzinfo=plus_two)
    with session_scope(factory) as session:
        call, _ = _call_with_utterance(session)
        session.add(Flag(call=call, severity=0.9, level="high", raised_at=raised))
    with session_scope(factory) as session:
        flag = session.scalars(select(Flag)).one()
        assert flag.raised_at == raised
        assert flag.raised_at.utcoffset() == timedelta(0)
        assert flag.raised_at.hour == 10
        assert flag.status == FlagStatus.OPEN
        call = session.scalars(select(Call)).one()
        assert call.verdict == Verdict.PENDING and call.started_at.tzinfo is not None
    with pytest.raises(StatementError), session_scope(factory) as session:
        session.add(StreamToken(nonce="naive", call_sid="CA", expires_at=datetime(2024, 1, 1)))


def test_json_columns_round_trip(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    evidence = {"top_utterances": [3, 1], "mean": 0.61, "note": "ok", "nested": {"a": None}}
    with session_scope(factory) as session:
        call, _ = _call_with_utterance(session)
        call.evidence = evidence
    with session_scope(factory) as session:
        assert session.scalars(select(Call)).one().evidence == evidence


def test_session_scope_commits_or_rolls_back(migrated_engine: Engine) -> None:
    factory = session_factory(migrated_engine)
    with session_scope(factory) as session:
        session.add(Patient(key=patient_ref_key("kept")))
    with pytest.raises(RuntimeError), session_scope(factory) as session:
        session.add(Patient(key=patient_ref_key("dropped")))
        session.flush()
        raise RuntimeError("boom")
    with session_scope(factory) as session:
        assert session.scalars(select(Patient.key)).all() == ["ref:kept"]


def test_sqlite_engine_pragmas(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'nested' / 'db.sqlite'}")
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            busy_timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
            assert busy_timeout is not None and busy_timeout >= 1000
    finally:
        engine.dispose()
    assert (tmp_path / "nested" / "db.sqlite").exists()


def test_postgres_engine_pings_pool(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        assert engine.pool._pre_ping is True
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar() == 1
    finally:
        engine.dispose()


# -- identity -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("number", ["+14155550100", "+447700900123", "+61 2 9876 5432"])
def test_caller_key_hides_the_number_and_is_stable(number: str) -> None:
    key = caller_key(number, KEY)
    digits = "".join(ch for ch in number if ch.isdigit())
    assert key.startswith("hmac:")
    assert len(key) == len("hmac:") + 64
    assert digits not in key
    assert digits[-7:] not in key  # not even the subscriber part
    assert caller_key(number, KEY) == key
    assert caller_key(number, b"another-key") != key


def test_caller_key_normalises_formatting() -> None:
    assert caller_key("+1 (415) 555-0100", KEY) == caller_key("+14155550100", KEY)
    assert caller_key("0014155550100", KEY) == caller_key("+14155550100", KEY)
    assert caller_key("+14155550100", KEY) != caller_key("+14155550101", KEY)
    assert normalise_e164(" +44 7700 900123 ") == "+447700900123"


@pytest.mark.parametrize("number", ["anonymous", "client:alice", "4155550100", "+0123456", "", "+1234"])
def test_caller_key_refuses_non_e164_without_echoing_it(number: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        caller_key(number, KEY)
    if number:
        assert number not in str(excinfo.value)


def test_caller_key_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        caller_key("+14155550100", b"")


def test_patient_ref_key() -> None:
    assert patient_ref_key("  MRN-001 ") == "ref:MRN-001"
    for bad in ["", "   ", "a\nb", "x" * 500]:
        with pytest.raises(ValueError):
            patient_ref_key(bad)


# -- audit --------------------------------------------------------------------------------------------


def test_audit_record_writes_an_event(db_session: Session) -> None:
    event = audit.record(
        db_session,
        "nurse1",
        "flag.acknowledge",
        "flag",
        42,
        verdict=Verdict.PAIN_LIKELY,
        call_sid="CA1234567890abcdef1234567890abcdef",
        count=3,
    )
    db_session.flush()
    stored = db_session.scalars(select(AuditEvent)).one()
    assert stored is event
    assert stored.object_id == "42"
    assert stored.detail == {
        "verdict": "pain_likely",
        "call_sid": "CA1234567890abcdef1234567890abcdef",
        "count": 3,
    }
    assert stored.at.tzinfo is not None


@pytest.mark.parametrize(
    "detail",
    [
        {"clip": b"\xff\x7f"},
        {"nested": {"deep": [bytearray(b"x")]}},
        {"reason": "caller +1 415 555 0100 hung up"},
        {"who": "4155550100"},
        {"from": "anonymous"},
        {"phone_number": "withheld"},
        {"extra": {"Caller": "x"}},
        {"obj": object()},
    ],
)
def test_audit_refuses_audio_and_numbers(db_session: Session, detail: dict[str, object]) -> None:
    with pytest.raises(audit.AuditDetailError) as excinfo:
        audit.record(db_session, "worker", "score", "utterance", 1, **detail)
    assert "415" not in str(excinfo.value)
    assert len(db_session.new) == 0


def test_a_baseline_is_stale_exactly_while_its_count_differs_from_its_included_contributions(
    db_session: Session,
) -> None:
    call, _ = _call_with_utterance(db_session)
    baseline = Baseline(patient_id=call.patient_id, embedder="e", model_version="m1", stats={"n": 0}, count=2)
    db_session.add(baseline)
    db_session.flush()
    enrol = ContributionSource.ENROLMENT
    rows = [BaselineContribution(baseline_id=baseline.id, source=enrol, embedding=bytes([i])) for i in range(2)]
    db_session.add_all(rows)
    db_session.flush()

    def stale_in_sql() -> bool:
        return db_session.scalar(select(Baseline.stale).where(Baseline.id == baseline.id)) is True

    db_session.refresh(baseline)
    assert baseline.stale is False and not stale_in_sql()
    rows[0].included = False  # an admin excludes one; the rebuild has not run
    db_session.flush()
    db_session.refresh(baseline)
    assert baseline.included_count == 1 and baseline.stale is True and stale_in_sql()
    baseline.count = 1  # the rebuild ran
    db_session.flush()
    db_session.refresh(baseline)
    assert baseline.stale is False and not stale_in_sql()
