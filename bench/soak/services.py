"""Real services a fault test may break: a private Redis, a private PostgreSQL, painline processes.

The shared PostgreSQL (5432) and Redis (6379) on a test machine serve other people's tests at the
same time, so fault injection never touches them: each fault test (``tests/faults``) and the soak
(``python -m bench.soak``) start their own servers on free ports and stop, kill and restart those.

- :class:`PrivateRedis`: ``redis-server`` as a subprocess (no persistence: a restart loses every key,
  the harshest kind of Redis restart, exactly what the outbox must survive).
- :class:`PrivatePostgres`: a throw-away cluster made with ``initdb`` in a temp dir; PostgreSQL refuses
  to run as root, so as root the binaries run as the ``postgres`` user (``runuser``).
- :class:`ScratchServices`: services a bench measures rather than breaks (``python -m bench.worker``):
  a :class:`PrivateRedis` and a fresh database on the shared PostgreSQL, dropped afterwards.
- :class:`PainlineProcess`: ``painline worker`` / ``painline serve --gunicorn`` / ``painline sweep``
  subprocesses (or the gunicorn command itself, as ``python -m bench.stream`` runs it) in a process
  group of their own, so a test can SIGKILL the whole process tree.
- :func:`outcome_counts`: what the database says happened to every utterance (detected, scored,
  pending, duplicate scores, audio left).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

if TYPE_CHECKING:
    from rq import Queue

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout_s: float, interval_s: float = 0.1, message: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; raise ``TimeoutError`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{message} not reached within {timeout_s} s")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------------------------------
# Redis


class PrivateRedis:
    """A ``redis-server`` subprocess on ``port``; :meth:`stop` / :meth:`kill` / :meth:`start` at will."""

    def __init__(self, port: int, directory: Path) -> None:
        self.port = port
        self.directory = Path(directory)
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        binary = shutil.which("redis-server") or "redis-server"
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(self.directory / "redis.log"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self._pings, timeout_s, message=f"redis on port {self.port}")

    def _pings(self) -> bool:
        try:
            with Redis(port=self.port, socket_connect_timeout=0.5) as connection:
                return bool(connection.ping())
        except (RedisError, OSError):
            return False

    def stop(self) -> None:
        """A clean shutdown (SIGTERM); nothing is saved, so every key is gone on restart."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """``kill -9``: the server vanishes mid-command."""
        self._signal(signal.SIGKILL)

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        time.sleep(down_s)
        self.start()
        self.restarts += 1

    def _signal(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
        self.process.wait(timeout=30)
        self.process = None

    def client(self) -> Redis:
        return Redis.from_url(self.url)


# ---------------------------------------------------------------------------------------------------
# PostgreSQL


def _admin_execute(admin_url: str, statement: str) -> None:
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text(statement))
    finally:
        admin.dispose()


def create_database(admin_url: str, name: str, *, migrate: bool = True) -> str:
    """Create database ``name`` on the server of ``admin_url`` (migrated to head unless told otherwise);
    returns its URL."""
    _admin_execute(admin_url, f'CREATE DATABASE "{name}"')
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    if migrate:
        from schema.migrate import upgrade

        upgrade(url)
    return url


def drop_database(admin_url: str, name: str) -> None:
    """Drop database ``name`` on the server of ``admin_url``, disconnecting whoever is still on it."""
    _admin_execute(admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_bin_dir() -> Path:
    """The newest ``/usr/lib/postgresql/<v>/bin``, else the directory of ``initdb`` on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if candidates:
        return Path(candidates[-1])
    initdb = shutil.which("initdb")
    if initdb is None:
        raise FileNotFoundError("no PostgreSQL binaries (initdb, pg_ctl) found")
    return Path(initdb).parent


class PrivatePostgres:
    """A PostgreSQL cluster of our own: ``init`` once, then ``start`` / ``stop`` as often as needed.

    The cluster lives in a fresh ``/tmp/painline-pg-*`` directory (pytest's tmp dirs are private to
    root, and the server may have to run as ``postgres``); ``directory`` only names where the log is
    copied for a failing test to show. ``fsync`` is off: durability is not what these tests measure.
    """

    def __init__(self, directory: Path, port: int, *, max_connections: int = 300) -> None:
        self.log_dir = Path(directory)
        self.port = port
        self.max_connections = max_connections
        self.root = Path(tempfile.mkdtemp(prefix="painline-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "postgres.log"
        self.bin = postgres_bin_dir()
        self.database: str | None = None
        self.outages = 0
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, user="postgres")

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self._as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, cwd=self.root)

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def url(self) -> str:
        if self.database is None:
            raise RuntimeError("call new_database() first")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")

    @property
    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def start(self) -> None:
        if self.running:
            return
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            f"-c synchronous_commit=off -c full_page_writes=off -c max_connections={self.max_connections}"
        )
        result = self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"private PostgreSQL did not start: {result.stdout}{result.stderr}\n{self.log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """``fast``: the server disconnects every client and stops; ``immediate``: as if it crashed."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.outages += 1

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.logfile.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def new_database(self, migrate: bool = True) -> str:
        """Create ``painline_<random>`` (migrated to head unless told otherwise) and make it :attr:`url`."""
        name = f"painline_{secrets.token_hex(5)}"
        create_database(self.admin_url, name, migrate=migrate)
        self.database = name
        return self.url

    def drop_database(self) -> None:
        if self.database is None or not self.running:
            return
        drop_database(self.admin_url, self.database)
        self.database = None

    def destroy(self) -> None:
        self.stop(mode="immediate")
        shutil.rmtree(self.root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# services a bench measures (and does not break)

SHARED_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@dataclass
class ScratchServices:
    """A :class:`PrivateRedis` on a free port (RQ job ids are deterministic per utterance id, so a
    shared Redis would collide with other runs) and a fresh database on the shared PostgreSQL server,
    migrated to head and dropped afterwards."""

    database_url: str
    redis_url: str
    redis: Redis
    queue_name: str = "bench-worker"
    hmac_key: str = "bench-hmac-key"

    @classmethod
    @contextmanager
    def start(cls, admin_url: str = SHARED_ADMIN_URL) -> Iterator[ScratchServices]:
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed")
        name = f"painline_bench_{secrets.token_hex(4)}"
        with tempfile.TemporaryDirectory(prefix="painline-redis-") as directory:
            redis = PrivateRedis(free_port(), Path(directory))
            redis.start()
            try:
                url = create_database(admin_url, name)
                yield cls(database_url=url, redis_url=redis.url, redis=redis.client())
            finally:
                redis.stop()
                drop_database(admin_url, name)

    def settings(self):
        from painline.config import Settings

        return Settings(
            database_url=self.database_url, redis_url=self.redis_url, queue_name=self.queue_name, hmac_key=self.hmac_key
        )

    def env(self) -> dict[str, str]:
        return painline_environment(
            database_url=self.database_url,
            redis_url=self.redis_url,
            queue_name=self.queue_name,
            PAINLINE_HMAC_KEY=self.hmac_key,
        )

    def queue(self) -> Queue:
        from rq import Queue

        return Queue(self.queue_name, connection=self.redis)


# ---------------------------------------------------------------------------------------------------
# painline processes


def painline_environment(
    *,
    database_url: str,
    redis_url: str,
    queue_name: str = "painline",
    model_path: Path | None = None,
    var_dir: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """This process's environment minus any PAINLINE_* / Twilio settings, plus the given ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAINLINE_") and k != "TWILIO_AUTH_TOKEN"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(PAINLINE_DATABASE_URL=database_url, PAINLINE_REDIS_URL=redis_url, PAINLINE_QUEUE_NAME=queue_name)
    if model_path is not None:
        env["PAINLINE_MODEL_PATH"] = str(model_path)
    if var_dir is not None:
        env["PAINLINE_VAR_DIR"] = str(var_dir)
    env.update(extra)
    return env


PAINLINE_CLI = (sys.executable, "-m", "painline.cli")


class PainlineProcess:
    """``python -m painline.cli ARGS`` in a new session (its own process group), output to a log file.

    ``program`` replaces ``python -m painline.cli`` (``()``: ``args`` is the whole command, such as
    :func:`painline.cli.gunicorn_command`); with ``stdout=False`` only stderr goes to the log and
    stdout (gunicorn's access log) is discarded.
    """

    def __init__(
        self,
        args: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        program: Sequence[str] = PAINLINE_CLI,
        stdout: bool = True,
    ) -> None:
        self.args = args
        self.env = env
        self.log_path = Path(log_path)
        self.program = list(program)
        self.keep_stdout = stdout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> PainlineProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it; closed in wait()
        stdout, stderr = (log, subprocess.STDOUT) if self.keep_stdout else (subprocess.DEVNULL, log)
        self.process = subprocess.Popen(
            [*self.program, *self.args], env=self.env, cwd=REPO, stdout=stdout, stderr=stderr, start_new_session=True
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process, its process group and every descendant.

        RQ's work-horse calls ``setsid()`` after the fork, so it is in a process group of its own:
        signalling the group alone would leave it running, which is not what a crash does.
        """
        if self.process is None:
            return
        descendants = self.children()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, sig)
        for child in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                child.send_signal(sig)
        if sig == signal.SIGKILL:
            self.process.wait(timeout=30)

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM the group and wait; SIGKILL if it will not go."""
        if self.process is None or self.process.poll() is not None:
            return
        self.kill_group(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_group(signal.SIGKILL)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def worker_fork_option() -> list[str]:
    """``["--fork"]`` where ``painline worker`` runs rq.SimpleWorker by default and forks only when asked;
    ``[]`` where the forking rq.Worker is already the default (older painline)."""
    import inspect

    from painline.workers import run_worker

    return ["--fork"] if "fork" in inspect.signature(run_worker).parameters else []


def start_worker(env: dict[str, str], log_path: Path, name: str | None = None, *, fork: bool = True) -> PainlineProcess:
    """A real ``painline worker`` with the scheduler, speaker check off: the forking rq.Worker (a
    work-horse child per job) when ``fork``, else the default class (rq.SimpleWorker, jobs in-process)."""
    args = ["worker", "--no-speaker"] + (worker_fork_option() if fork else []) + (["--name", name] if name else [])
    return PainlineProcess(args, env, log_path).start()


def wait_worker_ready(connection: Redis, queue_name: str, process: PainlineProcess, timeout_s: float = 60.0) -> None:
    """Until the worker has registered in Redis (it does so after loading the model)."""
    from rq import Queue, Worker

    queue = Queue(queue_name, connection=connection)

    def registered() -> bool:
        if not process.alive:
            raise RuntimeError(f"worker exited: {process.log_text()[-3000:]}")
        return any(w.pid == process.pid for w in Worker.all(queue=queue))

    wait_until(registered, timeout_s, interval_s=0.2, message="worker registration")


def horse_pids(process: PainlineProcess, database_port: int) -> list[int]:
    """The worker's children holding a connection to PostgreSQL: the work-horse running a job.

    (The worker's other child, RQ's scheduler, only talks to Redis.)
    """
    pids = []
    for child in process.children():
        try:
            if any(c.raddr and c.raddr.port == database_port for c in child.net_connections(kind="tcp")):
                pids.append(child.pid)
        except psutil.NoSuchProcess:
            continue
    return pids


# ---------------------------------------------------------------------------------------------------
# outcome


@dataclass(frozen=True)
class Outcome:
    """What the database says became of the utterances (of some calls, or all)."""

    detected: int  # utterance rows
    scored: int  # utterances with status scored
    pending: int
    failed: int
    score_rows: int
    duplicate_scores: int  # utterances with more than one Score row
    audio_left_on_scored: int  # scored utterances whose audio was not deleted
    calls: int
    calls_finalised: int

    @property
    def exactly_once(self) -> bool:
        return (
            self.detected == self.scored == self.score_rows
            and self.duplicate_scores == 0
            and self.audio_left_on_scored == 0
        )

    @property
    def lost(self) -> int:
        return self.detected - self.scored


def outcome_counts(database_url: str, call_ids: list[int] | None = None) -> Outcome:
    from schema.models import Call, Score, Utterance, UtteranceAudio

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:

            def where(q: Any, column: Any) -> Any:
                return q.where(column.in_(call_ids)) if call_ids is not None else q

            utterances = where(select(Utterance.id, Utterance.status), Utterance.call_id)
            rows = conn.execute(utterances).all()
            ids = [r.id for r in rows]
            statuses = [r.status for r in rows]
            per_utterance = conn.execute(
                where(
                    select(Score.utterance_id, func.count()).join(Utterance, Utterance.id == Score.utterance_id),
                    Utterance.call_id,
                ).group_by(Score.utterance_id)
            ).all()
            scored_ids = {r.id for r in rows if r.status == "scored"}
            audio_ids = set(conn.scalars(select(UtteranceAudio.utterance_id)).all())
            calls = conn.execute(where(select(Call.id, Call.status), Call.id)).all()
    finally:
        engine.dispose()
    return Outcome(
        detected=len(ids),
        scored=statuses.count("scored"),
        pending=statuses.count("pending"),
        failed=statuses.count("failed"),
        score_rows=sum(n for _, n in per_utterance),
        duplicate_scores=sum(1 for _, n in per_utterance if n > 1),
        audio_left_on_scored=len(scored_ids & audio_ids),
        calls=len(calls),
        calls_finalised=sum(1 for c in calls if c.status == "finalised"),
    )
