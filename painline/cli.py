"""The ``painline`` command: one entry point for every process a deployment runs.

::

    painline migrate                      create or upgrade the database schema
    painline serve [--gunicorn]           the web app (Twilio webhooks, Media Stream socket, /healthz)
    painline worker [--fork] [--burst]    an RQ worker: model loaded once, then jobs
    painline sweep [--every N]            re-enqueue work a Redis outage left in the database
    painline replay AUDIO [--wait]        play an audio file into a server exactly as Twilio would
    painline demo [--serve]               everything above on this machine, one sample call; --serve then
                                          keeps the web app up with a throwaway nurse account
    painline check                        list every missing or contradictory production setting
    painline population seed AUDIO...     give the population statistics the hotline's scale before go-live
    painline baseline enrol REF AUDIO...  enrol a patient's normal voice (or --phone NUMBER AUDIO...);
                                          the old spelling ``enroll`` still works
    painline keys generate|rotate         data encryption keys: print a new one / re-encrypt with the newest
    painline retention [--every N]        delete unscored audio and old per-utterance rows (audited)
    painline users add --role admin NAME  create an account (password prompted, or one line on stdin);
                                          also: password, token, revoke-tokens, deactivate, activate
    painline train ... / evaluate ...     research commands (painline.research)

Settings come from the environment (``PAINLINE_*``, ``TWILIO_AUTH_TOKEN``; see
:mod:`painline.config`); options here only cover what differs between invocations.
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from painline.config import Settings, SettingsError, production_problems

log = logging.getLogger("painline")

RESEARCH_COMMANDS = {"train": "train_main", "evaluate": "evaluate_main"}
EXIT_USAGE = 2
EXIT_FAILED = 1


def _settings() -> Settings:
    return Settings.from_env()


def configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# ---------------------------------------------------------------------------------------------------
# migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from painline.datakeys import install_data_keys
    from schema.migrate import current_revision, upgrade

    settings = _settings()
    install_data_keys(settings)  # migration 0002 encrypts existing values with them, if set
    url = settings.resolved_database_url
    upgrade(url, args.revision)
    print(f"database at revision {current_revision(url)}")
    return 0


# ---------------------------------------------------------------------------------------------------
# serve


WORKER_CLASSES = ("gevent", "gthread")
DEFAULT_WORKER_CLASS = "gthread"
DEFAULT_WORKER_CONNECTIONS = 1000


def gunicorn_command(
    host: str,
    port: int,
    workers: int,
    threads: int,
    *,
    worker_class: str = DEFAULT_WORKER_CLASS,
    worker_connections: int = DEFAULT_WORKER_CONNECTIONS,
) -> list[str]:
    """The production server command (see painline.wsgi).

    gthread (the default): one thread per open Media Stream, so ``threads`` bounds the calls per
    process. gevent: one greenlet per stream, ``worker_connections`` bounds them. Both are measured by
    ``python -m bench.stream``: calls held, CPU and lag of each are in docs/stream.md (gevent was the
    cheaper of the two). gthread stays the default because it is the configuration the test suite
    exercises end to end; gevent monkey-patches every library the web process uses, and only the
    bench covers that.
    """
    from painline.devserver import ACCESS_LOG_FORMAT

    if worker_class not in WORKER_CLASSES:
        raise ValueError(f"worker class must be one of {', '.join(WORKER_CLASSES)}")
    capacity = ["--threads", str(threads)] if worker_class == "gthread" else []
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        worker_class,
        "--workers",
        str(workers),
        *capacity,
        "--worker-connections",
        str(worker_connections),
        "--bind",
        f"{host}:{port}",
        # gthread and gevent workers heartbeat from their main loop, so a socket open for a whole call
        # does not trip --timeout; on SIGTERM, calls still streaming get this long before the worker exits
        "--graceful-timeout",
        "30",
        "--access-logfile",
        "-",
        "--access-logformat",
        ACCESS_LOG_FORMAT,  # no query strings: they may carry a patient reference
        # gunicorn 27's control socket defaults to one path per user, shared by every instance on the
        # host (two servers fought over it in the soak); painline never uses it, so it is off
        "--no-control-socket",
        # server hooks: the master holds the embedded Redis (when PAINLINE_REDIS_URL is empty) for the
        # life of the server, so it stops with the last process using it and never under a live one
        "--config",
        "python:painline.gunicorn_conf",
        "painline.wsgi:app",
    ]


def startup_check(settings: Settings, command: str, *, web_processes: int = 1) -> bool:
    """Log every production problem; False (after printing why) if ``command`` must not start."""
    problems = production_problems(settings, web_processes=web_processes)
    fatal = [p for p in problems if p.fatal]
    for problem in problems:
        if not problem.fatal:
            log.warning("%s: %s", command, problem.message)
    for problem in fatal:
        print(f"painline {command}: {problem.message}", file=sys.stderr)
    if fatal:
        print(f"painline {command}: refusing to start (painline check lists every problem)", file=sys.stderr)
    return not fatal


def cmd_check(args: argparse.Namespace) -> int:
    problems = production_problems(_settings(), web_processes=args.web_processes)
    if not problems:
        print("painline check: no problems found for a deployment")
        return 0
    print(f"painline check: {len(problems)} problem(s) for a deployment:")
    for problem in problems:
        marker = "refuses to start" if problem.fatal else "warning"
        print(f"  - [{marker}] {problem.message}")
    return EXIT_FAILED


def cmd_serve(args: argparse.Namespace) -> int:
    if not startup_check(_settings(), "serve", web_processes=args.workers if args.gunicorn else 1):
        return EXIT_USAGE
    if args.gunicorn:
        command = gunicorn_command(
            args.host,
            args.port,
            args.workers,
            args.threads,
            worker_class=args.worker_class,
            worker_connections=args.worker_connections,
        )
        print("exec:", " ".join(command[1:]), flush=True)
        os.execv(command[0], command)
    from painline.app import begin_shutdown, close_app, create_app
    from painline.devserver import make_dev_server

    app = create_app(_settings())
    server = make_dev_server(args.host, args.port, app)
    log.info("painline (development server) on http://%s:%d; Ctrl-C stops", args.host, server.server_port)
    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop is a clean stop, like Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        begin_shutdown(app)  # open event streams end within a second instead of holding the stop
        server.server_close()
        close_app(app)
    return 0


def cmd_stream(args: argparse.Namespace) -> int:
    from painline.stream import serve_stream

    settings = _settings()
    if not startup_check(settings, "stream"):
        return EXIT_USAGE
    serve_stream(settings, host=args.host, port=args.port, io_threads=args.io_threads, drain_s=args.drain_s)
    return 0


# ---------------------------------------------------------------------------------------------------
# worker and sweep


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _exit_cleanly(_signum: int, _frame: object) -> None:
    raise SystemExit(0)


def cmd_worker(args: argparse.Namespace) -> int:
    from painline.workers import run_worker

    settings = _settings()
    if not startup_check(settings, "worker"):
        return EXIT_USAGE
    # until RQ installs its warm-shutdown handlers (after registering the worker), a supervisor's
    # SIGTERM would kill the process outright; make it a clean exit that still runs the clean-up
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        run_worker(
            settings,
            fork=args.fork,
            burst=args.burst,
            with_scheduler=not args.no_scheduler,
            speaker=not args.no_speaker,
            name=args.name,
            logging_level=args.log_level.upper(),
            metrics_port=args.metrics_port,
        )
    except FileNotFoundError as exc:
        print(f"painline worker: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _repeat(task: Callable[[], None], every: float, what: str) -> int:
    """Run ``task`` once, or every ``every`` seconds until SIGTERM or Ctrl-C (a service's loop).

    In a loop a failure is logged and tried again next round (a database restart must not kill the
    service); run once, it propagates, so cron or a person sees it.
    """
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            try:
                task()
            except Exception:
                if not every:
                    raise
                log.exception("%s failed; trying again in %s s", what, every)
            if not every or stopping:
                return 0
            deadline = time.monotonic() + every
            while time.monotonic() < deadline and not stopping:
                time.sleep(min(0.5, every))
            if stopping:
                return 0
    except KeyboardInterrupt:
        return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from rq import Queue

    from painline import redis_conn
    from painline.app import job_options, make_app_engine
    from schema.db import session_factory
    from schema.outbox import sweep

    settings = _settings()
    engine = make_app_engine(settings)
    sessions = session_factory(engine)
    connection = redis_conn.connect(settings)
    queue = Queue(settings.queue_name, connection=connection)
    options = job_options(settings)

    def once() -> None:
        counts = sweep(
            sessions,
            queue,
            older_than_s=args.older_than,
            options=options,
            scheduler_grace_s=args.scheduler_grace,
            stale_stream_s=args.stale_stream_after,
        )
        if any(counts.values()) or not args.every:
            log.info(
                "sweep re-enqueued %d utterance(s), %d call(s), %d baseline rebuild(s); promoted %d overdue "
                "retry(ies); ended %d stale stream(s)",
                counts["utterances"],
                counts["calls"],
                counts["baselines"],
                counts["promoted"],
                counts["stale_streams"],
            )

    try:
        return _repeat(once, args.every, "sweep")
    finally:
        engine.dispose()
        connection.close()


# ---------------------------------------------------------------------------------------------------
# replay


def cmd_replay(args: argparse.Namespace) -> int:
    from painline.replay import ReplayError, load_call_audio, replay_call

    settings = _settings()
    public_url = args.public_url or settings.public_url
    auth_token = settings.twilio_auth_token
    try:
        mulaw = load_call_audio(args.audio)
        result = replay_call(
            mulaw,
            base_url=args.url,
            public_url=public_url,
            auth_token=auth_token,
            from_number=args.from_number,
            to_number=args.to_number,
            patient_ref=args.patient_ref,
            speed=args.speed,
            stream_base_url=args.stream_url or None,
        )
    except (ReplayError, ValueError) as exc:
        print(f"painline replay: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(
        f"replayed {result.audio_s:.1f} s of audio as call {result.call_sid} "
        f"({result.media_messages} media messages in {result.elapsed_s:.1f} s)"
    )
    if not args.wait:
        return 0
    return _print_outcome(settings, result.call_sid, args.timeout)


def _print_outcome(settings: Settings, call_sid: str, timeout_s: float) -> int:
    from painline.app import make_app_engine
    from painline.call_report import format_report, wait_for_verdict
    from schema.db import session_factory

    engine = make_app_engine(settings)
    try:
        report = wait_for_verdict(session_factory(engine), call_sid, stall_s=timeout_s)
    finally:
        engine.dispose()
    if report is None:
        print("the call never reached this database: is PAINLINE_DATABASE_URL the server's?", file=sys.stderr)
        return EXIT_FAILED
    print(format_report(report))
    if not report.finished:
        print(
            f"\nnot finalised: no progress for {timeout_s:.0f} s; is a worker running on queue "
            f"'{settings.queue_name}'?",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


# ---------------------------------------------------------------------------------------------------
# population


def cmd_population_seed(args: argparse.Namespace) -> int:
    """Seed the deployment's population statistics before go-live (see ``worker.population``)."""
    from analysis.audio import AudioLoadError, load_audio
    from analysis.channel import mulaw_decode, mulaw_encode, telephone
    from painline.workers import build_context
    from worker.population import seed_from_audio, seed_from_calls

    if not args.audio and not args.from_calls:
        print("painline population seed: give recordings, --from-calls, or both", file=sys.stderr)
        return EXIT_USAGE
    clips = []
    for path in args.audio:
        try:
            samples, rate = load_audio(path)
        except AudioLoadError as exc:
            print(f"painline population seed: {exc}", file=sys.stderr)
            return EXIT_FAILED
        clips.append(mulaw_decode(mulaw_encode(telephone(samples, rate))))  # as a call delivers it
    ctx = build_context(_settings(), None, speaker=False)
    try:
        if clips:
            result = seed_from_audio(ctx, clips)
            print(
                f"population: {result.utterances} utterance(s) from {len(clips)} recording(s) folded in "
                f"({result.clips_without_speech} without speech); statistics now hold {result.population_n}"
            )
        if args.from_calls:
            result = seed_from_calls(ctx)
            print(
                f"population: {result.utterances} utterance(s) of past calls folded in; statistics now hold "
                f"{result.population_n}"
            )
    finally:
        ctx.engine.dispose()
    return 0


# ---------------------------------------------------------------------------------------------------
# demo


def cmd_demo(args: argparse.Namespace) -> int:
    from painline.demo import DemoError, run_demo

    try:
        return run_demo(
            model_path=args.model,
            audio=args.audio,
            var_dir=args.var_dir,
            speed=args.speed,
            speaker=args.speaker,
            stall_s=args.timeout,
            serve=args.serve,
            port=args.port,
        )
    except DemoError as exc:
        print(f"painline demo: {exc}", file=sys.stderr)
        return EXIT_FAILED


# ---------------------------------------------------------------------------------------------------
# baseline


def cmd_baseline_enrol(args: argparse.Namespace) -> int:
    """Enrol clips under the key a call will be recognised by, so the baseline is actually used.

    Calls are keyed by the hotline's ``patient_ref`` when they pass one, else by an HMAC of the
    caller's number (:mod:`schema.identity`), and the two never meet. ``--phone`` keys the number with
    :func:`schema.identity.caller_key` and ``PAINLINE_HMAC_KEY``, exactly as the voice webhook does; the
    number is never stored, logged or printed whole. A reference that reads as a phone number is
    enrolled as asked but warned about, since purely numeric hotline references look the same.
    """
    from sqlalchemy import select
    from sqlalchemy.exc import IntegrityError

    from analysis.audio import AudioLoadError, load_audio
    from analysis.channel import mulaw_decode, mulaw_encode, telephone
    from painline import redis_conn
    from painline.workers import build_context
    from schema import audit
    from schema.db import session_scope
    from schema.identity import PatientKeyKind, caller_key, looks_like_phone_number, mask_number, patient_ref_key
    from schema.models import Patient
    from worker.baselines import enrol

    prog = "painline baseline enrol"
    settings = _settings()
    inputs: list[str] = list(args.inputs)
    if args.phone is not None:
        # with --phone every positional is a recording; a first one that is no file is most likely a
        # patient reference given as well (not echoed: it may be the number itself)
        if not settings.hmac_key:
            print(
                f"{prog}: --phone needs PAINLINE_HMAC_KEY, the secret the voice webhook keys caller numbers "
                "with; set it to the deployment's value",
                file=sys.stderr,
            )
            return EXIT_USAGE
        if not Path(inputs[0]).is_file():
            print(
                f"{prog}: the first argument is not an audio file: with --phone give only recordings "
                "(PATIENT_REF and --phone are mutually exclusive)",
                file=sys.stderr,
            )
            return EXIT_USAGE
        try:
            key = caller_key(args.phone, settings.hmac_key)
        except ValueError:
            print(
                f"{prog}: --phone is not an E.164 phone number: give it as Twilio sends it, with + and "
                "the country code",
                file=sys.stderr,
            )
            return EXIT_USAGE
        kind, audio = PatientKeyKind.CALLER_NUMBER, [Path(p) for p in inputs]
        shown = f"caller number {mask_number(args.phone)}, keyed"
    else:
        if len(inputs) < 2:
            print(f"{prog}: give PATIENT_REF (or --phone NUMBER), then at least one AUDIO file", file=sys.stderr)
            return EXIT_USAGE
        try:
            key = patient_ref_key(inputs[0])
        except ValueError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        if looks_like_phone_number(inputs[0]):
            print(
                f"{prog}: warning: the patient reference looks like a phone number; a call from that number "
                "without a patient_ref is keyed by the number and would not use this baseline. To enrol a "
                "caller by number, use --phone NUMBER instead (the reference is stored as typed, the number "
                "would only be stored keyed). Enrolling under the reference as given.",
                file=sys.stderr,
            )
        kind, audio = PatientKeyKind.HOTLINE_REFERENCE, [Path(p) for p in inputs[1:]]
        shown = "hotline reference"
    clips = []
    for path in audio:
        try:
            samples, rate = load_audio(path)
        except AudioLoadError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        # exactly what a call would deliver: 8 kHz through the mu-law codec
        clips.append(mulaw_decode(mulaw_encode(telephone(samples, rate))))
    actor = args.actor or f"cli:{getpass.getuser()}"
    connection = redis_conn.connect(settings)
    ctx = build_context(settings, connection, speaker=not args.no_speaker)
    try:
        with session_scope(ctx.sessions) as session:
            patient_id = session.scalar(select(Patient.id).where(Patient.key == key))
            if patient_id is None:
                try:
                    with session.begin_nested():
                        patient = Patient(key=key)
                        session.add(patient)
                    patient_id = patient.id
                    audit.record(
                        session, actor, "patient.create", "patient", patient_id, source="enrolment", key_kind=kind
                    )
                except IntegrityError:
                    # a call from this caller created the patient between our SELECT and INSERT
                    patient_id = session.scalar(select(Patient.id).where(Patient.key == key))
                    assert patient_id is not None  # the row whose insert conflicted with ours
        try:
            result = enrol(patient_id, clips, actor, ctx=ctx, check_speaker=not args.no_speaker_check)
        except ValueError:  # the VAD found no speech in any recording
            print(f"{prog}: no speech found in the recordings (they are cut as a call would be)", file=sys.stderr)
            return EXIT_FAILED
    finally:
        ctx.engine.dispose()
        connection.close()
    print(
        f"patient {patient_id} ({shown}): {result.accepted} clip(s) enrolled as {result.utterances} "
        f"utterance(s), baseline now {result.baseline_n} utterance(s) (model {ctx.model.version})"
    )
    if result.no_speech:
        silent = ", ".join(str(audio[i]) for i in result.no_speech)
        print(f"no speech found, not enrolled: {silent}", file=sys.stderr)
    if result.rejected_speaker:
        refused = ", ".join(str(audio[i]) for i in result.rejected_speaker)
        print(f"refused (another speaker than the enrolled voice): {refused}", file=sys.stderr)
    return 0 if result.accepted else EXIT_FAILED


# ---------------------------------------------------------------------------------------------------
# data keys and retention


def cmd_keys_generate(_args: argparse.Namespace) -> int:
    """Print a new Fernet key; it goes first in PAINLINE_DATA_KEYS (the key itself is never logged)."""
    from schema.crypto import generate_key

    print(generate_key())
    return 0


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    """Re-encrypt every encrypted column with the newest key in PAINLINE_DATA_KEYS (see schema.rotation)."""
    from painline.app import make_app_engine
    from schema.crypto import DataKeyError, current_key_ring, describe
    from schema.rotation import rotate_keys

    settings = _settings()
    try:
        engine = make_app_engine(settings)  # installs and validates the key ring
    except DataKeyError as exc:
        print(f"painline keys rotate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    ring = current_key_ring()
    if ring is None:
        print(
            "painline keys rotate: PAINLINE_DATA_KEYS is empty; add a key first ('painline keys generate')",
            file=sys.stderr,
        )
        engine.dispose()
        return EXIT_USAGE
    actor = args.actor or f"cli:{getpass.getuser()}"
    try:
        result = rotate_keys(engine, ring, actor=actor, batch_size=args.batch)
    except DataKeyError as exc:
        print(f"painline keys rotate: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    print(f"{describe(ring)}; re-encrypted {result.total} value(s):")
    for name, count in result.rotated.items():
        extra = f", {result.first_encrypted[name]} previously unencrypted" if result.first_encrypted[name] else ""
        busy = f", {result.skipped_changed[name]} changed meanwhile" if result.skipped_changed[name] else ""
        print(f"  {name}: {count}{extra}{busy}")
    return 0


def cmd_retention(args: argparse.Namespace) -> int:
    """Delete unscored audio and old per-utterance rows (worker.retention), once or every N seconds."""
    from painline.app import make_app_engine
    from schema.db import session_factory
    from worker.retention import sweep_retention

    settings = _settings()
    audio_hours = args.audio_hours or settings.audio_retention_hours
    score_days = args.score_days or settings.score_retention_days
    actor = args.actor or "retention"
    engine = make_app_engine(settings)
    sessions = session_factory(engine)

    def once() -> None:
        result = sweep_retention(sessions, audio_hours=audio_hours, score_days=score_days, actor=actor)
        log.info(
            "retention: %d unscored audio clip(s) older than %g h deleted (%d utterance(s) skipped); "
            "%d utterance(s) and %d score(s) older than %g days deleted",
            result.audio_deleted,
            audio_hours,
            result.utterances_skipped,
            result.utterances_deleted,
            result.scores_deleted,
            score_days,
        )

    try:
        return _repeat(once, args.every, "retention sweep")
    finally:
        engine.dispose()


def add_data_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``painline keys generate|rotate`` and ``painline retention``."""
    p = sub.add_parser("keys", help="data encryption keys (PAINLINE_DATA_KEYS)")
    keys = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    k = keys.add_parser("generate", help="print a new key (put it first in PAINLINE_DATA_KEYS)")
    k.set_defaults(func=cmd_keys_generate)
    k = keys.add_parser(
        "rotate",
        help="re-encrypt every encrypted column with the newest key",
        description="Run after the new key is first in PAINLINE_DATA_KEYS on every process; "
        "then the old key can be removed. Also encrypts values stored before "
        "keys were configured.",
    )
    k.add_argument("--batch", type=int, default=500, help="rows per transaction (default: 500)")
    k.add_argument("--actor", default=None, help="who rotates, for the audit trail (default: cli:<user>)")
    k.set_defaults(func=cmd_keys_rotate)

    p = sub.add_parser(
        "retention",
        help="delete unscored audio and old per-utterance data (audited)",
        description="Deletes utterance audio left unscored for PAINLINE_AUDIO_RETENTION_HOURS "
        "(default 24) and utterances and scores older than "
        "PAINLINE_SCORE_RETENTION_DAYS (default 365); calls, flags and the audit "
        "trail are kept. Run with --every as its own process, or once from cron.",
    )
    p.add_argument("--every", type=float, default=0.0, metavar="SECONDS", help="repeat forever at this interval")
    p.add_argument("--audio-hours", type=float, default=0.0, help="override PAINLINE_AUDIO_RETENTION_HOURS")
    p.add_argument("--score-days", type=float, default=0.0, help="override PAINLINE_SCORE_RETENTION_DAYS")
    p.add_argument("--actor", default=None, help="actor in the audit trail (default: retention)")
    p.set_defaults(func=cmd_retention)


# ---------------------------------------------------------------------------------------------------
# research


def run_research(command: str, argv: Sequence[str]) -> int:
    """Hand ``painline train|evaluate ...`` to :mod:`painline.research` (imported only when used)."""
    import importlib

    try:
        research = importlib.import_module("painline.research")
    except ModuleNotFoundError as exc:
        if exc.name != "painline.research":
            raise  # the module exists but one of its own imports is missing: show that
        print(f"painline {command}: the research commands are not part of this installation", file=sys.stderr)
        return EXIT_FAILED
    entry = getattr(research, RESEARCH_COMMANDS[command])
    result = entry(list(argv))
    return int(result or 0)


# ---------------------------------------------------------------------------------------------------
# parser


def cmd_users(args: argparse.Namespace) -> int:
    from dashboard.users import run_command
    from painline import redis_conn
    from painline.app import make_app_engine, session_store
    from schema.db import session_factory

    settings = _settings()
    engine = make_app_engine(settings)
    connection = redis_conn.connect(settings)  # a password change or deactivation ends web sessions
    try:
        return run_command(session_factory(engine), args, revoker=session_store(settings, connection))
    finally:
        connection.close()
        engine.dispose()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="painline", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="logging level (default: PAINLINE_LOG_LEVEL, INFO)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("migrate", help="create or upgrade the database schema")
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser(
        "serve",
        help="run the web app",
        description="Development server by default; --gunicorn for production "
        "(gunicorn -k gthread --threads N 'painline.wsgi:app').",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--gunicorn", action="store_true", help="exec gunicorn with gthread workers")
    p.add_argument("--workers", type=int, default=2, help="gunicorn worker processes (default: 2)")
    p.add_argument(
        "--threads",
        type=int,
        default=64,
        help="gthread only: threads per gunicorn worker; each open call holds one (default: 64)",
    )
    p.add_argument(
        "--worker-class",
        choices=WORKER_CLASSES,
        default=DEFAULT_WORKER_CLASS,
        help=f"gunicorn worker class (default: {DEFAULT_WORKER_CLASS})",
    )
    p.add_argument(
        "--worker-connections",
        type=int,
        default=DEFAULT_WORKER_CONNECTIONS,
        help="most simultaneous connections per worker process; for gevent, the calls it can "
        f"hold (default: {DEFAULT_WORKER_CONNECTIONS})",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "stream",
        help="serve the Media Stream socket on an event loop",
        description="The production home of /twilio/stream: one asyncio process per core, about 150 calls each. "
        "Put it behind the same public URL as `painline serve`, routing /twilio/stream here.",
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8001)
    p.add_argument(
        "--io-threads",
        type=int,
        default=8,
        help="database steps (stream start, utterance saves, stream end) run at once (default: 8)",
    )
    p.add_argument(
        "--drain-s",
        type=float,
        default=120.0,
        help="on SIGTERM, seconds open calls may go on before they are closed (default: 120)",
    )
    p.set_defaults(func=cmd_stream)

    p = sub.add_parser("worker", help="run an RQ worker (model loaded once per process)")
    p.add_argument(
        "--fork",
        action="store_true",
        help="run each job in a forked child (rq.Worker): crash isolation for 8-13%% more CPU per job",
    )
    p.add_argument(
        "--simple",
        action="store_true",
        help="run jobs in-process (rq.SimpleWorker); the default, accepted for old scripts",
    )
    p.add_argument("--burst", action="store_true", help="quit when the queue is empty")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=0,
        help="serve Prometheus /metrics on this port (default: 0, none; README shows a scrape configuration)",
    )
    p.add_argument(
        "--no-scheduler",
        action="store_true",
        help="do not run RQ's scheduler (interval retries then wait for a worker that does)",
    )
    p.add_argument("--no-speaker", action="store_true", help="skip speaker verification (no resemblyzer)")
    p.add_argument("--name", help="worker name (default: RQ's random name)")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "sweep",
        help="re-enqueue pending work left in the database by a Redis outage",
        description="Re-enqueues unfinished work whose job is missing or dead (Redis outage, "
        "killed worker, retries exhausted); run it as its own process with --every "
        "(docker-compose's `sweep` service runs `painline sweep --every 30`).",
    )
    p.add_argument("--every", type=float, default=0.0, metavar="SECONDS", help="repeat forever at this interval")
    p.add_argument(
        "--older-than", type=float, default=60.0, metavar="SECONDS", help="only work older than this (default: 60)"
    )
    p.add_argument(
        "--scheduler-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="enqueue retries overdue by more than this: no RQ scheduler is running (default: 30)",
    )
    p.add_argument(
        "--stale-stream-after",
        type=float,
        default=4 * 3600 + 600,
        metavar="SECONDS",
        help="end calls still 'streaming' with no activity for this long, e.g. a stream that "
        "ended while the database was down (default: 15000, past the longest allowed stream)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "replay",
        help="play an audio file into a painline server exactly as Twilio would",
        description="Signs with TWILIO_AUTH_TOKEN over PAINLINE_PUBLIC_URL (or --public-url), "
        "which must equal the server's; requests go to --url.",
    )
    p.add_argument("audio", type=Path, help="any audio file (resampled to the 8 kHz telephone channel)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="where the server is reached")
    p.add_argument(
        "--stream-url",
        default="",
        help="where `painline stream` is reached, if not behind --url (e.g. http://127.0.0.1:8001)",
    )
    p.add_argument("--public-url", default="", help="the URL Twilio would sign (default: PAINLINE_PUBLIC_URL)")
    p.add_argument("--speed", type=float, default=1.0, help="1.0 real time, 0 as fast as possible")
    p.add_argument("--from", dest="from_number", default="+15551234567", help="caller number to present")
    p.add_argument("--to", dest="to_number", default="+15557654321", help="hotline number to present")
    p.add_argument("--patient-ref", default=None, help="the hotline's patient reference (webhook query)")
    p.add_argument(
        "--wait", action="store_true", help="poll the database (PAINLINE_DATABASE_URL) for the scores and the verdict"
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="with --wait: give up once the call has made no progress for this many seconds",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("demo", help="run one sample call end to end on this machine, offline")
    p.add_argument("--model", type=Path, default=None, help="model artifact (default: PAINLINE_MODEL_PATH)")
    p.add_argument("--audio", type=Path, default=None, help="audio to replay (default: the bundled sample)")
    p.add_argument(
        "--var-dir",
        type=Path,
        default=None,
        help="keep the demo's database and Redis here (default: a temporary directory)",
    )
    p.add_argument("--speed", type=float, default=4.0, help="replay speed (1.0 real time, 0 no pacing)")
    p.add_argument("--speaker", action="store_true", help="load the speaker-verification model too")
    p.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="give up once the call has made no progress for this many seconds (default: 60)",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="keep the web app running after the call, with a throwaway nurse account (Ctrl-C stops)",
    )
    p.add_argument("--port", type=int, default=0, help="with --serve: the port to serve on (default: any free one)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("population", help="the deployment's population statistics")
    population = p.add_subparsers(dest="population_command", required=True, metavar="ACTION")
    q = population.add_parser(
        "seed",
        help="fold recordings or past calls into the population statistics",
        description="Gives a new hotline (or a new model version) its own callers' scale "
        "before go-live: recordings are cut and embedded exactly as calls are; "
        "no labels are read and no audio is kept.",
    )
    q.add_argument("audio", nargs="*", type=Path, help="recordings of the hotline's callers (any format)")
    q.add_argument(
        "--from-calls",
        action="store_true",
        help="also fold in the stored embeddings of past calls scored with the same embedder",
    )
    q.set_defaults(func=cmd_population_seed)

    p = sub.add_parser(
        "check",
        help="list every missing or contradictory production setting",
        description="Reads the settings from the environment as serve and worker would and lists "
        "every problem for a deployment; exit 1 if there is any.",
    )
    p.add_argument(
        "--web-processes",
        type=int,
        default=2,
        help="web processes that will share sessions (default: 2, as serve --gunicorn)",
    )
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("baseline", help="patient baselines")
    baseline = p.add_subparsers(dest="baseline_command", required=True, metavar="ACTION")
    # "enroll", the old spelling, stays as a hidden alias so existing scripts keep working: a parser
    # added without help= is left out of the ACTION list
    for name, shown in (("enrol", True), ("enroll", False)):
        listed: dict[str, Any] = {"help": "enrol recordings of a patient's normal voice"} if shown else {}
        e = baseline.add_parser(
            name,
            **listed,
            # one positional list, split by the command: argparse cannot tell an optional PATIENT_REF from AUDIO
            usage="%(prog)s [-h] [--actor ACTOR] [--no-speaker] [--no-speaker-check]\n"
            "       (PATIENT_REF | --phone NUMBER) AUDIO [AUDIO ...]",
            description="Enrol the patient under the key their calls will have: the hotline's reference for calls "
            "that pass patient_ref, or with --phone the caller's number (keyed with PAINLINE_HMAC_KEY, "
            "never stored) for calls that do not. A baseline under the wrong one is never used. "
            "(`painline baseline enroll`, the old spelling, still works.)",
        )
        e.add_argument(
            "inputs",
            nargs="+",
            metavar="[PATIENT_REF] AUDIO",
            help="the hotline's patient reference (not with --phone), then recordings of the patient's normal voice",
        )
        e.add_argument(
            "--phone",
            metavar="NUMBER",
            default=None,
            help="key the patient by this caller number (E.164, e.g. +15550002222) as a call from it is "
            "keyed; needs PAINLINE_HMAC_KEY. Instead of PATIENT_REF",
        )
        e.add_argument("--actor", default=None, help="who is enrolling, for the audit trail (default: cli:<user>)")
        e.add_argument("--no-speaker", action="store_true", help="do not load speaker verification")
        e.add_argument(
            "--no-speaker-check",
            action="store_true",
            help="accept clips even if they do not match the patient's voiceprint",
        )
        e.set_defaults(func=cmd_baseline_enrol)

    add_data_parsers(sub)

    from dashboard.users import add_cli_parser

    add_cli_parser(sub).set_defaults(func=cmd_users)
    for name, summary in (
        ("train", "train a model (painline.research)"),
        ("evaluate", "evaluate a model (painline.research)"),
    ):
        sub.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"painline: {exc}", file=sys.stderr)
        return EXIT_USAGE
    args.log_level = args.log_level or settings.log_level
    configure_logging(args.log_level)
    if args.command in RESEARCH_COMMANDS:
        # research commands own their options: everything after the command name is passed through
        return run_research(args.command, extras)
    if extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
