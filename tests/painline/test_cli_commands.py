"""The ``painline`` command: each subcommand run the way an operator runs it, on real services."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from redis import Redis
from rq import Queue
from sqlalchemy import select

from painline import cli
from painline.config import Settings
from painline.workers import BackgroundWorker, build_context, install_context
from schema.db import make_engine, session_factory, session_scope
from schema.identity import patient_ref_key
from schema.migrate import is_up_to_date
from schema.models import (
    AuditEvent,
    Baseline,
    Call,
    CallStatus,
    Patient,
    PopulationStats,
    Score,
    Utterance,
    UtteranceAudio,
    UtteranceStatus,
    utcnow,
)
from tests.app_fixtures import AUTH_TOKEN, AppServer, app_redis_url, wav_file
from tests.cli_env import clear_settings_env, point_env_at
from tests.worker_fixtures import calm, pain
from worker import context as worker_context


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    clear_settings_env(monkeypatch)
    return monkeypatch


@pytest.fixture
def service_env(clean_env: pytest.MonkeyPatch, app_settings: Settings, pain_model_path: Path) -> Settings:
    """The environment a deployed process would have, pointing at the test services."""
    point_env_at(clean_env, app_settings, pain_model_path)
    return Settings.from_env()


@pytest.fixture
def global_job_keys() -> Iterator[list[int]]:
    """Utterance ids whose global ``rq:job:score-utterance-<id>`` keys the test creates; deleted after."""
    ids: list[int] = []
    yield ids
    connection = Redis.from_url(app_redis_url())
    try:
        for i in ids:
            connection.delete(f"rq:job:score-utterance-{i}", f"rq:results:score-utterance-{i}")
            for key in connection.scan_iter(match=f"rq:execution:score-utterance-{i}*"):
                connection.delete(key)
    finally:
        connection.close()


def pending_utterance(database_url: str, clip: np.ndarray, *, age_s: float = 0.0) -> int:
    """An ended call with one pending utterance and its audio, as the telephony side leaves them."""
    from analysis.channel import mulaw_encode

    engine = make_engine(database_url)
    try:
        with session_scope(session_factory(engine)) as session:
            created = utcnow() - timedelta(seconds=age_s)
            call = Call(call_sid="CA" + "5" * 32, status=CallStatus.ENDED.value, started_at=created, ended_at=created)
            session.add(call)
            session.flush()
            utterance = Utterance(
                call_id=call.id,
                seq=0,
                start_ms=0,
                end_ms=len(clip) // 8,
                speech_s=len(clip) / 8000,
                status=UtteranceStatus.PENDING.value,
                created_at=created,
            )
            session.add(utterance)
            session.flush()
            session.add(UtteranceAudio(utterance_id=utterance.id, mulaw=mulaw_encode(clip)))
            return utterance.id
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------------
# research dispatch


def test_train_and_evaluate_go_to_painline_research_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, list[str]]] = []
    research = types.ModuleType("painline.research")

    def train_main(argv: list[str]) -> int:
        calls.append(("train", argv))
        return 0

    def evaluate_main(argv: list[str]) -> int:
        calls.append(("evaluate", argv))
        return 3

    research.train_main = train_main  # type: ignore[attr-defined]  # a stand-in module, built at run time
    research.evaluate_main = evaluate_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "painline.research", research)

    assert cli.main(["train", "--task", "ravdess-distress", "--help", "extra"]) == 0
    assert cli.main(["--log-level", "WARNING", "evaluate", "--log-level", "x", "-v"]) == 3
    assert calls == [
        ("train", ["--task", "ravdess-distress", "--help", "extra"]),
        ("evaluate", ["--log-level", "x", "-v"]),
    ]


def test_research_commands_missing_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "painline.research", None)  # import raises ModuleNotFoundError
    assert cli.main(["train"]) == 1
    assert "not part of this installation" in capsys.readouterr().err


def test_unknown_options_are_refused_outside_research(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["migrate", "--bogus"])
    assert exit_info.value.code == 2
    assert "--bogus" in capsys.readouterr().err


def test_gunicorn_command_uses_gthread_and_the_wsgi_app() -> None:
    command = cli.gunicorn_command("0.0.0.0", 8000, workers=3, threads=50)
    assert command[1:3] == ["-m", "gunicorn"]
    joined = " ".join(command)
    assert "--worker-class gthread" in joined and "--threads 50" in joined and "--workers 3" in joined
    assert "--bind 0.0.0.0:8000" in joined
    assert command[-1] == "painline.wsgi:app"


# ---------------------------------------------------------------------------------------------------
# migrate, sweep, worker, baseline


def test_migrate_creates_the_embedded_database(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PAINLINE_VAR_DIR", str(tmp_path / "var"))
    assert cli.main(["migrate"]) == 0
    url = Settings.from_env().resolved_database_url
    assert (tmp_path / "var" / "painline.sqlite").exists()
    assert is_up_to_date(url)
    assert "database at revision" in capsys.readouterr().out


def test_sweep_reenqueues_pending_work(service_env: Settings, global_job_keys: list[int]) -> None:
    utterance_id = pending_utterance(service_env.resolved_database_url, calm(), age_s=600)
    global_job_keys.append(utterance_id)
    assert cli.main(["sweep", "--older-than", "60"]) == 0
    connection = Redis.from_url(service_env.redis_url)
    try:
        queue = Queue(service_env.queue_name, connection=connection)
        assert f"score-utterance-{utterance_id}" in queue.job_ids
        job = queue.fetch_job(f"score-utterance-{utterance_id}")
        assert job is not None and job.args == (utterance_id,)
    finally:
        connection.close()


def test_worker_burst_scores_with_the_model_loaded_once(
    service_env: Settings, global_job_keys: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    utterance_id = pending_utterance(service_env.resolved_database_url, pain(seconds=3.0))
    global_job_keys.append(utterance_id)
    connection = Redis.from_url(service_env.redis_url)
    try:
        Queue(service_env.queue_name, connection=connection).enqueue(
            "worker.jobs.score_utterance", utterance_id, job_id=f"score-utterance-{utterance_id}"
        )
    finally:
        connection.close()
    loads: list[Path] = []
    from analysis.model import PainModel

    original = PainModel.load.__func__  # type: ignore[attr-defined]

    def counting_load(cls: type[PainModel], path: Path, *args: object, **kwargs: object) -> PainModel:
        loads.append(Path(path))
        return original(cls, path, *args, **kwargs)

    monkeypatch.setattr(PainModel, "load", classmethod(counting_load))
    try:
        assert cli.main(["worker", "--burst", "--simple", "--no-speaker"]) == 0
    finally:
        worker_context.uninstall()
    assert loads == [service_env.model_path]
    engine = make_engine(service_env.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            utterance = session.get(Utterance, utterance_id)
            assert utterance is not None and utterance.status == UtteranceStatus.SCORED.value
            assert session.scalars(select(Score).where(Score.utterance_id == utterance_id)).one()
    finally:
        engine.dispose()


def test_worker_without_a_model_says_how_to_get_one(
    service_env: Settings, clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("PAINLINE_MODEL_PATH", str(tmp_path / "missing.joblib"))
    assert cli.main(["worker", "--burst", "--simple", "--no-speaker"]) == 1
    assert "painline train" in capsys.readouterr().err


def test_baseline_enrol_creates_the_patient_and_audits(
    service_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [wav_file(tmp_path / f"normal{i}.wav", calm(120.0, seed=i, seconds=3.0)) for i in range(2)]
    code = cli.main(["baseline", "enrol", "HOSP-0042", *map(str, files), "--no-speaker", "--actor", "nurse.jo"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 clip(s) enrolled" in out
    assert "HOSP-0042" not in out  # the patient reference is not echoed
    engine = make_engine(service_env.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            key = patient_ref_key("HOSP-0042")
            patient = session.scalars(select(Patient).where(Patient.key == key)).one()
            baseline = session.scalars(
                select(Baseline).where(Baseline.patient_id == patient.id, Baseline.embedder == "egemaps")
            ).first()
            assert baseline is not None and baseline.count == 2
            events = session.scalars(select(AuditEvent).where(AuditEvent.actor == "nurse.jo")).all()
            actions = {e.action for e in events}
            assert "patient.create" in actions and len(actions) >= 2
            assert all("HOSP-0042" not in str(e.detail) for e in events)
    finally:
        engine.dispose()
    # a second enrolment reuses the patient; it goes through "enroll", the old spelling, which existing
    # scripts use: a hidden alias of "enrol"
    assert cli.main(["baseline", "enroll", "HOSP-0042", str(files[0]), "--no-speaker"]) == 0
    engine = make_engine(service_env.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            assert len(session.scalars(select(Patient)).all()) == 1
    finally:
        engine.dispose()


def test_baseline_enrol_refuses_a_bad_reference(
    service_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = wav_file(tmp_path / "a.wav", calm())
    assert cli.main(["baseline", "enrol", "   ", str(path)]) == 2
    assert "empty patient reference" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# replay


def test_replay_command_waits_for_the_verdict(
    app_server: AppServer,
    service_env: Settings,
    clean_env: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    worker_redis: Redis,
) -> None:
    clean_env.setenv("PAINLINE_PUBLIC_URL", app_server.url)
    audio = np.concatenate([np.zeros(4000), pain(140.0, seed=5), np.zeros(6000), pain(140.0, seed=6), np.zeros(4000)])
    path = wav_file(tmp_path / "call.wav", audio)
    ctx = build_context(service_env, worker_redis, speaker=False)
    install_context(ctx)
    worker = BackgroundWorker(app_server.queue).start()
    try:
        code = cli.main(
            [
                "replay",
                str(path),
                "--url",
                app_server.url,
                "--speed",
                "0",
                "--wait",
                "--timeout",
                "60",
                "--patient-ref",
                "HOSP-7",
            ]
        )
    finally:
        worker.stop()
        worker_context.uninstall()
        ctx.engine.dispose()
    out = capsys.readouterr().out
    assert code == 0, out
    assert worker.error is None and worker.jobs_run >= 1
    assert "replayed 6.8 s of audio" in out
    assert "verdict:" in out and "status finalised" in out
    assert "HOSP-7" not in out and "5551234567" not in out


def test_replay_command_reports_an_unreachable_server(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    clean_env.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
    path = wav_file(tmp_path / "call.wav", calm())
    assert cli.main(["replay", str(path), "--url", "http://127.0.0.1:1", "--speed", "0"]) == 1
    assert "cannot reach" in capsys.readouterr().err


def test_replay_command_needs_the_auth_token(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = wav_file(tmp_path / "call.wav", calm())
    assert cli.main(["replay", str(path), "--url", "http://127.0.0.1:1"]) == 1
    assert "TWILIO_AUTH_TOKEN" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# population


def test_population_seed_from_recordings(
    service_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [wav_file(tmp_path / f"caller{i}.wav", calm(110.0 + 30 * i, seed=i, seconds=3.0)) for i in range(3)]
    assert cli.main(["population", "seed", *map(str, files)]) == 0
    out = capsys.readouterr().out
    assert "from 3 recording(s) folded in" in out
    engine = make_engine(service_env.resolved_database_url)
    try:
        with session_factory(engine)() as session:
            row = session.scalars(select(PopulationStats)).one()
            assert row.count >= 3 and f"statistics now hold {row.count}" in out
    finally:
        engine.dispose()
    assert cli.main(["population", "seed"]) == 2
    assert "give recordings, --from-calls, or both" in capsys.readouterr().err


def test_baseline_enrol_reports_recordings_without_speech(
    service_env: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    speech = wav_file(tmp_path / "speech.wav", calm(120.0, seed=3, seconds=3.0))
    silence = wav_file(tmp_path / "silence.wav", np.zeros(16000))
    assert cli.main(["baseline", "enrol", "HOSP-77", str(speech), str(silence), "--no-speaker"]) == 0
    captured = capsys.readouterr()
    assert "1 clip(s) enrolled as" in captured.out
    assert f"no speech found, not enrolled: {silence}" in captured.err
    assert cli.main(["baseline", "enrol", "HOSP-78", str(silence), "--no-speaker"]) == 1
    assert "no speech found in the recordings" in capsys.readouterr().err
