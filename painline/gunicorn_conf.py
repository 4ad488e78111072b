"""gunicorn server hooks for ``painline serve --gunicorn`` (loaded with ``--config python:painline.gunicorn_conf``).

On the embedded default (no ``PAINLINE_REDIS_URL``) the gunicorn master starts, or joins, the
embedded Redis before it forks any worker and holds it for the life of the server (see
:mod:`painline.redis_conn`). The master never loads the app, so without this only the workers would
hold it, and its life would hang on how workers end: workers SIGKILLed at the graceful timeout
(calls still streaming) cannot release it, and the restart of a lone worker would stop and restart
it under any tool reading ``redis.url``. The workers still register in their own name, so if the
master itself is SIGKILLed they stop it as they exit.

On SIGTERM each worker first tells the dashboard's open event streams to end
(:func:`post_worker_init` wraps gunicorn's handler), so nurse screens do not hold the graceful stop
for its whole timeout; only calls still streaming may.

``reuse_port``: during a graceful stop every worker keeps its copy of the listening socket open until
its last connection ends (a call may stream for up to ``--graceful-timeout``), and a restart binding
the same port meanwhile failed with "Address already in use" (gunicorn sets ``SO_REUSEADDR`` already,
which does not cover a socket still listening). With ``SO_REUSEPORT`` on both the old and the new
server's sockets the restart binds at once.

Every other setting is given on the command line (:func:`painline.cli.gunicorn_command`), which
takes precedence over this module.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

reuse_port = True


def _embedded_var_dir() -> Path | None:
    """The var dir whose embedded Redis this server uses, or None if Redis is configured."""
    from painline.config import Settings

    settings = Settings.from_env()
    return None if settings.redis_url else settings.var_dir


def on_starting(server: Any) -> None:
    """In the master, before any worker is forked: start (or join) and hold the embedded Redis."""
    var_dir = _embedded_var_dir()
    if var_dir is not None:
        from painline import redis_conn

        redis_conn.start_embedded(var_dir)
        server.log.info("embedded Redis for %s held by the master", var_dir)


def post_worker_init(worker: Any) -> None:
    """In each worker, once the app is loaded: end event streams as soon as SIGTERM arrives.

    gunicorn's own handler only clears ``worker.alive``; the wrapper also sets the app's shutdown
    event (:func:`painline.app.begin_shutdown`), then calls it. ``siginterrupt`` is kept off as
    gunicorn sets it, so the signal does not interrupt system calls of requests in flight.
    """
    from painline.app import begin_shutdown

    app = worker.wsgi
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        with contextlib.suppress(Exception):  # a signal handler must never fail the worker
            begin_shutdown(app)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.siginterrupt(signal.SIGTERM, False)


def on_exit(server: Any) -> None:
    """In the master, after every worker has exited: release the hold (the last holder stops Redis)."""
    var_dir = _embedded_var_dir()
    if var_dir is not None:
        from painline import redis_conn

        _wait_for_workers(server)
        redis_conn.stop_embedded(var_dir)
        server.log.info("embedded Redis for %s released by the master", var_dir)


def _wait_for_workers(server: Any, timeout_s: float = 5.0) -> None:
    """Wait for workers still dying (SIGKILLed at the graceful timeout), reaping them.

    gunicorn sends SIGKILL and reaps without waiting; a worker still tearing down looks alive, and
    the master would then leave the server to a holder that can never release it.
    """
    import psutil

    dying = []
    for pid in list(getattr(server, "WORKERS", {})):
        with contextlib.suppress(psutil.NoSuchProcess):
            dying.append(psutil.Process(pid))
    psutil.wait_procs(dying, timeout=timeout_s)
