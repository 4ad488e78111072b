"""The system under test: its database, the production gunicorn command, RQ workers, their CPU.

Everything runs for real on this machine: PostgreSQL (a database of the bench's own,
``painline_bench`` by default, migrated with ``painline migrate``), Redis (a logical database of
its own, so RQ job ids such as ``score-utterance-7`` never meet another user's), the web server
started exactly as ``painline serve --gunicorn`` starts it (:func:`painline.cli.gunicorn_command`)
and ``painline worker`` processes. The server's stderr goes to a file; its
``telephony.stream_stats`` lines are parsed from it after the run.

Ids in the bench database start high (:data:`ID_FLOOR`): the flag channel ``painline:flags`` is
global to the Redis server, and high ids keep another project's test messages from being mistaken
for the bench's.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
from redis import Redis
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from bench.soak.services import REPO, PainlineProcess, free_port, painline_environment
from painline.cli import gunicorn_command
from schema.db import delete_all_rows
from telephony.stream_stats import parse_stats_line

DEFAULT_PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/painline_bench"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/11"
AUTH_TOKEN = "bench-stream-auth-token"
HMAC_KEY = "bench-stream-hmac-key"
ID_FLOOR = 500_000_000


# ---------------------------------------------------------------------------------------------------
# database and Redis


def prepare_database(url: str) -> None:
    """Create the bench database if needed, migrate it (``painline migrate``), empty it, raise its ids."""
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    finally:
        admin.dispose()
    env = server_environment(url, DEFAULT_REDIS_URL, "unused")
    subprocess.run(
        [sys.executable, "-m", "painline.cli", "--log-level", "WARNING", "migrate"],
        env=env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    delete_all_rows(url)
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            for (seq,) in conn.execute(text("SELECT sequencename FROM pg_sequences WHERE schemaname='public'")):
                current = conn.scalar(text(f'SELECT COALESCE(last_value, 0) FROM "{seq}"'))
                if int(current or 0) < ID_FLOOR:
                    conn.execute(text(f'ALTER SEQUENCE "{seq}" RESTART WITH {ID_FLOOR}'))
    finally:
        engine.dispose()


def clear_queue(redis_url: str, queue_name: str) -> int:
    """Delete the run's queue, its jobs and registries; returns how many keys went."""
    connection = Redis.from_url(redis_url)
    try:
        keys = list(connection.scan_iter(match=f"rq:*{queue_name}*", count=1000))
        job_ids = [
            j.decode() if isinstance(j, bytes) else str(j) for j in connection.lrange(f"rq:queue:{queue_name}", 0, -1)
        ]
        keys += [f"rq:job:{j}" for j in job_ids] + [f"rq:job:{j}:dependents" for j in job_ids]
        if keys:
            connection.delete(*keys)
        connection.srem("rq:queues", f"rq:queue:{queue_name}")
        return len(keys)
    finally:
        connection.close()


def server_environment(database_url: str, redis_url: str, queue_name: str, **extra: str) -> dict[str, str]:
    """The environment of every bench process: this one's minus any PAINLINE_* / Twilio settings."""
    settings = {
        "PAINLINE_HMAC_KEY": HMAC_KEY,
        "PAINLINE_SECRET_KEY": "bench-stream-secret",
        "TWILIO_AUTH_TOKEN": AUTH_TOKEN,
        "PAINLINE_NEXT_ENQUEUE": "nurses",
        "PAINLINE_LOG_LEVEL": "INFO",
        **extra,
    }
    env = painline_environment(
        database_url=database_url, redis_url=redis_url, queue_name=queue_name, var_dir=REPO / "var" / "bench-stream"
    )
    env.update(settings)
    return env


# ---------------------------------------------------------------------------------------------------
# CPU accounting


def tree_cpu_s(root: psutil.Process) -> float:
    """User + system CPU of ``root`` and every live descendant, plus what reaped children used."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
    return total


def process_cpu_s(root: psutil.Process) -> dict[int, float]:
    """User + system CPU of ``root`` and each live descendant, per process id.

    The server's total hides how it is spread: a process whose Python work (under its one GIL)
    nears a whole core falls behind even while the machine has CPU free, so the bench reports the
    busiest process too.
    """
    out: dict[int, float] = {}
    with contextlib.suppress(psutil.Error):
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    return out


# ---------------------------------------------------------------------------------------------------
# the web server


ASYNCIO = "asyncio"
"""The production layout: ``painline stream`` takes the sockets, gunicorn (gthread) the webhooks."""

WEBHOOK_THREADS = 16  # the webhook-only gunicorn beside ``painline stream``: requests, not calls


@dataclass(frozen=True)
class ServerConfig:
    worker_class: str  # asyncio (painline stream + gunicorn for webhooks) | gthread | gevent
    processes: int  # gunicorn worker processes (asyncio: one stream process, this many web processes)
    capacity: int  # gthread: threads per process; gevent: worker connections per process

    @property
    def label(self) -> str:
        if self.worker_class == ASYNCIO:
            return "painline-stream"
        return f"{self.worker_class}-{self.processes}p"


@dataclass
class WebServer:
    config: ServerConfig
    url: str
    process: PainlineProcess  # gunicorn; its stderr is the log
    log_path: Path
    queue_name: str
    database_url: str
    redis_url: str
    extra: dict[str, Any] = field(default_factory=dict)
    stream_url: str | None = None  # where calls open the socket, if not at ``url`` (painline stream)
    companion: PainlineProcess | None = None  # the webhook gunicorn beside painline stream

    @property
    def psutil_process(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def _roots(self) -> list[psutil.Process]:
        """The server's top processes: gunicorn's master, or painline stream and its webhook gunicorn."""
        roots = [self.psutil_process]
        if self.companion is not None:
            with contextlib.suppress(psutil.Error):
                roots.append(psutil.Process(self.companion.pid))
        return roots

    def process_cpu_s(self) -> dict[int, float]:
        """CPU per server process (stream process, gunicorn master and workers)."""
        out: dict[int, float] = {}
        for root in self._roots():
            out.update(process_cpu_s(root))
        return out

    def cpu_s(self) -> float:
        """Every server process's CPU, with reaped children's (which :meth:`process_cpu_s` cannot list)."""
        return sum(tree_cpu_s(root) for root in self._roots())

    def stats_records(self) -> list[dict[str, Any]]:
        records = []
        with self.log_path.open(errors="replace") as f:
            for line in f:
                record = parse_stats_line(line)
                if record is not None:
                    records.append(record)
        return records

    def log_tail(self, lines: int = 30) -> str:
        with self.log_path.open(errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def _wait_healthy(url: str, process: PainlineProcess, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not process.alive:
            raise RuntimeError(f"the server exited with {process.process and process.process.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not healthy within {timeout_s:.0f} s")


@contextlib.contextmanager
def _gunicorn(command: list[str], env: dict[str, str], url: str, log_path: Path) -> Iterator[PainlineProcess]:
    """One gunicorn as ``painline serve --gunicorn`` runs it, healthy until the block ends.

    Its stderr is the log (its stats lines are read back, so they must be this run's only); stdout
    is gunicorn's access log, not wanted here.
    """
    log_path.unlink(missing_ok=True)
    process = PainlineProcess(command, env, log_path, program=(), stdout=False).start()
    try:
        _wait_healthy(url, process)
        yield process
    finally:
        process.stop(timeout_s=40.0)


@contextlib.contextmanager
def web_server(
    config: ServerConfig, database_url: str, redis_url: str, log_dir: Path, queue_name: str | None = None
) -> Iterator[WebServer]:
    """The server layout ``config`` names on free ports, until the block ends.

    gunicorn layouts: gunicorn serves webhooks and sockets. ``asyncio``: ``painline stream`` takes the
    sockets on a second port, and its log (where the stream stats lines are written) is the server's log.
    """
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    queue_name = queue_name or f"painline-bench-{secrets.token_hex(4)}"
    env = server_environment(database_url, redis_url, queue_name, PAINLINE_PUBLIC_URL=url)
    if config.worker_class == ASYNCIO:
        command = gunicorn_command("127.0.0.1", port, config.processes, WEBHOOK_THREADS, worker_class="gthread")
        web_log = log_dir / f"web-{config.label}-{port}.log"
        with (
            _gunicorn(command, env, url, web_log) as web,
            _stream_process(env, log_dir / f"server-{config.label}") as (stream, stream_url),
        ):
            yield WebServer(
                config,
                url,
                stream,
                stream.log_path,
                queue_name,
                database_url,
                redis_url,
                stream_url=stream_url,
                companion=web,
            )
        return
    threads = config.capacity if config.worker_class == "gthread" else 1
    command = gunicorn_command(
        "127.0.0.1",
        port,
        config.processes,
        threads,
        worker_class=config.worker_class,
        worker_connections=max(config.capacity, 64),
    )
    log_path = log_dir / f"server-{config.label}-{port}.log"
    with _gunicorn(command, env, url, log_path) as process:
        yield WebServer(config, url, process, log_path, queue_name, database_url, redis_url)


@contextlib.contextmanager
def _stream_process(env: dict[str, str], log_stem: Path) -> Iterator[tuple[PainlineProcess, str]]:
    """``painline stream`` on a free port, healthy until the block ends; yields it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = log_stem.with_name(f"{log_stem.name}-{port}.log")
    log_path.unlink(missing_ok=True)
    stream = PainlineProcess(["stream", "--port", str(port), "--drain-s", "0"], env, log_path, stdout=False).start()
    try:
        _wait_healthy(url, stream)
        yield stream, url
    finally:
        stream.stop(timeout_s=40.0)


# ---------------------------------------------------------------------------------------------------
# RQ workers


@dataclass
class Workers:
    processes: list[PainlineProcess]
    log_path: Path

    def cpu_s(self) -> float:
        total = 0.0
        for p in self.processes:
            with contextlib.suppress(psutil.Error):
                total += tree_cpu_s(psutil.Process(p.pid))
        return total


@contextlib.contextmanager
def rq_workers(
    count: int, server: WebServer, log_dir: Path, *, simple: bool = False, speaker: bool = True
) -> Iterator[Workers]:
    """``count`` ``painline worker`` processes on the server's queue, each with the default model."""
    env = server_environment(server.database_url, server.redis_url, server.queue_name, PAINLINE_LOG_LEVEL="WARNING")
    log_path = log_dir / f"workers-{server.queue_name}.log"
    args = ["worker", *(["--simple"] if simple else []), *([] if speaker else ["--no-speaker"])]
    processes: list[PainlineProcess] = []
    try:
        for i in range(count):
            name = f"bench-{server.queue_name}-{i}"
            processes.append(PainlineProcess(["--log-level", "WARNING", *args, "--name", name], env, log_path).start())
        yield Workers(processes, log_path)
    finally:
        for p in processes:
            p.stop(timeout_s=20)
