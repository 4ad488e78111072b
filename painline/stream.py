"""``painline stream``: the Media Stream socket in its own process, on an event loop.

The composition root's half of :mod:`telephony.stream_server`: settings become an engine, a queue
and the telephony config exactly as for the web app (:mod:`painline.app`), and the process answers
``GET /healthz`` on its own port so the load balancer can keep calls off it while it cannot work,
and ``GET /metrics`` for Prometheus (:mod:`painline.metrics`).
Behind one public URL the load balancer sends ``/twilio/stream`` here and everything else to
``painline serve`` (README, Deploying; ``deploy/compose.yaml``).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from prometheus_client import CONTENT_TYPE_LATEST
from redis import Redis
from rq import Queue
from sqlalchemy import Engine

from painline import redis_conn
from painline.app import health_report, make_app_engine, telephony_config
from painline.config import Settings
from painline.metrics import exposition
from painline.metrics import install as install_metrics
from schema.db import session_factory
from schema.migrate import head_revision
from telephony.stream_server import PlainResponse, Route, StreamServerOptions, run

log = logging.getLogger(__name__)


def stream_routes(engine: Engine, connection: Redis, queue: Queue) -> dict[str, Route]:
    """The plain routes of the stream port: ``/healthz`` (as the web app's) and ``/metrics``."""
    expected = head_revision()

    def healthz() -> PlainResponse:
        healthy, body = health_report(engine, connection, expected)
        status = HTTPStatus.OK if healthy else HTTPStatus.SERVICE_UNAVAILABLE
        return PlainResponse(status, "application/json", json.dumps(body).encode())

    def metrics() -> PlainResponse:
        return PlainResponse(HTTPStatus.OK, CONTENT_TYPE_LATEST, exposition())

    install_metrics(queue)
    return {"/healthz": healthz, "/metrics": metrics}


def serve_stream(
    settings: Settings,
    *,
    host: str,
    port: int,
    io_threads: int,
    drain_s: float,
) -> None:
    """Build the stream process's resources from ``settings`` and serve until SIGTERM."""
    # websockets logs every connection at INFO: two lines per call, nothing an operator acts on
    logging.getLogger("websockets.server").setLevel(logging.WARNING)
    engine = make_app_engine(settings)
    connection = redis_conn.connect(settings)
    queue = Queue(settings.queue_name, connection=connection)
    routes = stream_routes(engine, connection, queue)
    options = StreamServerOptions(host=host, port=port, io_threads=io_threads, drain_s=drain_s, routes=routes)
    try:
        run(session_factory(engine), queue, telephony_config(settings), options)
    finally:
        engine.dispose()
        connection.close()


__all__ = ["serve_stream", "stream_routes"]
