"""Encryption at rest (schema.crypto, schema.rotation, migration 0002) on SQLite and PostgreSQL.

What is checked against the real databases: the stored bytes (read with raw SQL, past the type
decorators) hold no plaintext; the ORM reads the plaintext back; rotation re-encrypts every value so
that the old key alone no longer opens anything; a wrong or missing key fails with a message that says
what to check; the migration moves existing rows in and out of the encrypted form.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from painline import cli
from painline.config import Settings
from painline.datakeys import install_data_keys
from schema import crypto
from schema.crypto import DataKeyError, EncryptedBytes, EncryptedJSON, KeyRing, generate_key
from schema.db import make_engine, session_factory, session_scope
from schema.migrate import downgrade, upgrade
from schema.models import (
    AuditEvent,
    Base,
    Baseline,
    BaselineContribution,
    Call,
    Patient,
    Score,
    Utterance,
    UtteranceAudio,
    Voiceprint,
)
from schema.rotation import rotate_keys

AUDIO = bytes(range(256)) * 8  # 2 kB that cannot be mistaken for anything else
VECTOR = np.linspace(-1.0, 1.0, 64).astype("<f4").tobytes()
STATS = {"n": 3, "mean": [0.125, 0.25, 0.375], "m2": [1.5, 2.5, 3.5], "marker": "baseline-stats-plaintext"}
FEATURES = {"evidence_version": 1, "measures": {"pitch": 181.25, "marker": "voice-measures-plaintext"}}
KEY_A, KEY_B, KEY_C = generate_key(), generate_key(), generate_key()


@pytest.fixture
def keyring() -> Iterator[None]:
    """Restore whatever ring the process had once the test is done."""
    previous = crypto.current_key_ring()
    try:
        yield
    finally:
        crypto.install_key_ring(previous)


def _use(*keys: str) -> KeyRing | None:
    ring = KeyRing(list(keys)) if keys else None
    crypto.install_key_ring(ring)
    return ring


def _seed(session: Session) -> dict[str, int]:
    patient = Patient(key="ref:crypto-test")
    call = Call(call_sid="CA" + "c" * 32, patient=patient)
    utterance = Utterance(call=call, seq=0, start_ms=0, end_ms=1000, speech_s=1.0)
    session.add_all([patient, call, utterance])
    session.flush()
    baseline = Baseline(patient_id=patient.id, embedder="egemaps", model_version="m1", stats=STATS, count=3)
    session.add_all(
        [
            UtteranceAudio(utterance_id=utterance.id, mulaw=AUDIO),
            Score(
                utterance_id=utterance.id,
                model_version="m1",
                probability=0.5,
                embedding=VECTOR,
                features=FEATURES,
                speaker_vector=VECTOR,
            ),
            Voiceprint(patient_id=patient.id, embedder="speaker", vector=VECTOR, count=1),
            baseline,
        ]
    )
    session.flush()
    session.add(BaselineContribution(baseline_id=baseline.id, source="enrolment", embedding=VECTOR))
    session.flush()
    return {"utterance": utterance.id, "patient": patient.id}


RAW_COLUMNS = [f"SELECT {c} FROM {t}" for t, _, c in crypto.ENCRYPTED_COLUMNS]


def _raw(engine: Engine) -> list[bytes]:
    with engine.connect() as conn:
        # nullable encrypted columns (scores.speaker_vector) hold no value to check where empty
        return [bytes(v) for query in RAW_COLUMNS for v in conn.execute(text(query)).scalars() if v is not None]


def _read_all(engine: Engine) -> tuple[bytes, bytes, dict, dict, bytes, bytes]:
    with session_scope(session_factory(engine)) as s:
        return (
            s.scalars(select(UtteranceAudio.mulaw)).one(),
            s.scalars(select(Score.embedding)).one(),
            s.scalars(select(Score.features)).one(),
            s.scalars(select(Baseline.stats)).one(),
            s.scalars(select(Voiceprint.vector)).one(),
            # every contribution is decrypted; the last is returned
            s.scalars(select(BaselineContribution.embedding).order_by(BaselineContribution.id)).all()[-1],
        )


def test_every_encrypted_model_column_is_rotated() -> None:
    declared = {
        (table.name, column.name)
        for table in Base.metadata.tables.values()
        for column in table.columns
        if isinstance(column.type, EncryptedBytes | EncryptedJSON)
    }
    assert declared == {(t, c) for t, _, c in crypto.ENCRYPTED_COLUMNS}


def test_database_holds_ciphertext_and_the_orm_reads_plaintext(migrated_engine: Engine, keyring: None) -> None:
    _use(KEY_A)
    with session_scope(session_factory(migrated_engine)) as s:
        _seed(s)
    stored = _raw(migrated_engine)
    assert len(stored) == len(crypto.ENCRYPTED_COLUMNS)
    for value in stored:
        assert value.startswith(b"fernet:")
        assert AUDIO[:64] not in value and VECTOR[:32] not in value
        assert b"plaintext" not in value and b"mean" not in value and b"pitch" not in value
    audio, embedding, features, stats, vector, contribution = _read_all(migrated_engine)
    assert audio == AUDIO and embedding == VECTOR == vector == contribution
    assert features == FEATURES and stats == STATS


def test_without_keys_values_are_stored_marked_plain(migrated_engine: Engine, keyring: None) -> None:
    _use()
    with session_scope(session_factory(migrated_engine)) as s:
        _seed(s)
    assert all(v.startswith(b"plain:") for v in _raw(migrated_engine))
    assert _read_all(migrated_engine)[0] == AUDIO


def test_rotation_re_encrypts_everything_and_retires_the_old_key(migrated_engine: Engine, keyring: None) -> None:
    _use(KEY_A)
    with session_scope(session_factory(migrated_engine)) as s:
        _seed(s)
    _use()  # one more value written before keys existed: rotation encrypts it too
    with session_scope(session_factory(migrated_engine)) as s:
        s.add(
            BaselineContribution(baseline_id=s.scalars(select(Baseline.id)).one(), source="enrolment", embedding=VECTOR)
        )
    before = _raw(migrated_engine)

    ring = _use(KEY_B, KEY_A)  # the new key first, the old one still there to read with
    assert ring is not None
    result = rotate_keys(migrated_engine, ring, actor="test:rotate", batch_size=1)  # batches of one row
    assert result.total == len(before)
    assert result.first_encrypted["baseline_contributions.embedding"] == 1
    after = _raw(migrated_engine)
    assert all(v.startswith(b"fernet:") for v in after) and not set(after) & set(before)

    _use(KEY_B)  # the old key removed: everything still reads
    audio, *_rest, contribution = _read_all(migrated_engine)
    assert audio == AUDIO and contribution == VECTOR
    _use(KEY_A)  # and the old key alone opens nothing any more
    with pytest.raises(DataKeyError, match="PAINLINE_DATA_KEYS"):
        _read_all(migrated_engine)
    with session_scope(session_factory(migrated_engine)) as s:
        [event] = s.scalars(select(AuditEvent).where(AuditEvent.action == "keys.rotate")).all()
        assert event.actor == "test:rotate" and event.detail["keys"] == 2
        assert event.detail["rotated"]["utterance_audio.mulaw"] == 1

    _use(KEY_B)
    again = rotate_keys(migrated_engine, KeyRing([KEY_B]), actor="test:rotate")  # idempotent in effect
    assert again.total == len(before) and sum(again.first_encrypted.values()) == 0
    assert _read_all(migrated_engine)[3] == STATS


def test_a_wrong_or_missing_key_says_what_to_check(migrated_engine: Engine, keyring: None) -> None:
    _use(KEY_A)
    with session_scope(session_factory(migrated_engine)) as s:
        _seed(s)
    _use(KEY_C)
    with pytest.raises(DataKeyError) as wrong:
        _read_all(migrated_engine)
    assert "could not be decrypted with any of the 1 key(s) in PAINLINE_DATA_KEYS" in str(wrong.value)
    assert KEY_A not in str(wrong.value) and KEY_C not in str(wrong.value)
    _use()
    with pytest.raises(DataKeyError, match="encrypted but no data keys are configured"):
        _read_all(migrated_engine)
    with pytest.raises(DataKeyError, match="none of the 1 key"):
        rotate_keys(migrated_engine, KeyRing([KEY_C]), actor="test")


def test_malformed_keys_are_refused_without_echoing_them(keyring: None) -> None:
    with pytest.raises(DataKeyError) as excinfo:
        install_data_keys(Settings(data_keys=f"{KEY_A}, not-a-key"))
    assert "key 2 is not a Fernet key" in str(excinfo.value) and "not-a-key" not in str(excinfo.value)
    ring = install_data_keys(Settings(data_keys=f" {KEY_B} ,{KEY_A},"))
    assert ring is not None and ring.size == 2 and crypto.current_key_ring() is ring
    assert install_data_keys(Settings()) is None and crypto.current_key_ring() is None


def test_migration_0002_moves_existing_rows_in_and_out(fresh_db_url: str, keyring: None) -> None:
    upgrade(fresh_db_url, "0001")
    engine = make_engine(fresh_db_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO patients (id, key, created_at) VALUES (1, 'ref:m', CURRENT_TIMESTAMP)"))
            conn.execute(
                text(
                    "INSERT INTO calls (id, call_sid, patient_id, started_at, status, consent, verdict, "
                    "speech_s) VALUES (1, 'CAm', 1, CURRENT_TIMESTAMP, 'ended', true, 'pending', 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO utterances (id, call_id, seq, start_ms, end_ms, speech_s, status, "
                    "created_at) VALUES (1, 1, 0, 0, 1000, 1.0, 'pending', CURRENT_TIMESTAMP)"
                )
            )
            conn.execute(text("INSERT INTO utterance_audio (utterance_id, mulaw) VALUES (1, :a)"), {"a": AUDIO})
            conn.execute(
                text(
                    "INSERT INTO scores (id, utterance_id, model_version, probability, baseline_applied, "
                    "baseline_n, embedding, features, created_at) VALUES (1, 1, 'm1', 0.5, false, 0, :e, "
                    ":f, CURRENT_TIMESTAMP)"
                ),
                {"e": VECTOR, "f": json.dumps(FEATURES)},
            )
            conn.execute(
                text(
                    "INSERT INTO baselines (id, patient_id, embedder, model_version, stats, count, "
                    "updated_at) VALUES (1, 1, 'egemaps', 'm1', :s, 3, CURRENT_TIMESTAMP)"
                ),
                {"s": json.dumps(STATS)},
            )
            conn.execute(
                text(
                    "INSERT INTO baseline_contributions (id, baseline_id, source, embedding, included, "
                    "created_at) VALUES (1, 1, 'enrolment', :e, true, CURRENT_TIMESTAMP)"
                ),
                {"e": VECTOR},
            )
            conn.execute(
                text(
                    "INSERT INTO voiceprints (id, patient_id, embedder, vector, count, updated_at) "
                    "VALUES (1, 1, 'speaker', :v, 1, CURRENT_TIMESTAMP)"
                ),
                {"v": VECTOR},
            )
    finally:
        engine.dispose()

    _use(KEY_A)  # what `painline migrate` does when PAINLINE_DATA_KEYS is set
    upgrade(fresh_db_url)
    engine = make_engine(fresh_db_url)
    try:
        stored = _raw(engine)
        assert len(stored) == 6 and all(v.startswith(b"fernet:") for v in stored)
        audio, embedding, features, stats, vector, contribution = _read_all(engine)
        assert (audio, embedding, features, stats, vector, contribution) == (
            AUDIO,
            VECTOR,
            FEATURES,
            STATS,
            VECTOR,
            VECTOR,
        )
    finally:
        engine.dispose()

    downgrade(fresh_db_url, "0001")
    engine = make_engine(fresh_db_url)
    try:
        with engine.connect() as conn:
            assert bytes(conn.execute(text("SELECT mulaw FROM utterance_audio")).scalar_one()) == AUDIO
            stats_back = conn.execute(text("SELECT stats FROM baselines")).scalar_one()
            assert (json.loads(stats_back) if isinstance(stats_back, str) else stats_back) == STATS
    finally:
        engine.dispose()


def test_keys_cli_generates_and_rotates(
    migrated_engine: Engine,
    db_url: str,
    keyring: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    assert cli.main(["keys", "generate"]) == 0
    new_key = capsys.readouterr().out.strip()
    KeyRing([new_key])  # a valid Fernet key

    _use(KEY_A)
    with session_scope(session_factory(migrated_engine)) as s:
        _seed(s)
    monkeypatch.setenv("PAINLINE_DATABASE_URL", db_url)
    monkeypatch.setenv("PAINLINE_VAR_DIR", str(tmp_path))
    monkeypatch.setenv("PAINLINE_DATA_KEYS", f"{new_key},{KEY_A}")
    assert cli.main(["keys", "rotate", "--batch", "2", "--actor", "test:cli"]) == 0
    assert "re-encrypted 7 value(s)" in capsys.readouterr().out
    _use(new_key)
    assert _read_all(migrated_engine)[0] == AUDIO

    monkeypatch.setenv("PAINLINE_DATA_KEYS", "")
    assert cli.main(["keys", "rotate"]) == cli.EXIT_USAGE
    assert "PAINLINE_DATA_KEYS is empty" in capsys.readouterr().err
