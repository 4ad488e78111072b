"""``/metrics`` in the Prometheus text format, for the web, stream and worker processes.

The composition root's part: each layer keeps its own metrics (:mod:`telephony.metrics` for the
streams, :mod:`worker.metrics` for scoring), this module registers the collectors that need wiring
(the streams, and the queue depth read from Redis at scrape time) and exposes the process's registry:

- ``painline serve``: ``GET /metrics`` on the web app, answered only to a direct request from a
  loopback or private address (a request that came through a proxy carries ``X-Forwarded-For`` and
  gets 404), so the public URL never shows it;
- ``painline stream``: ``GET /metrics`` on the stream port, which the proxy does not route;
- ``painline worker --metrics-port N``: a small HTTP server in the worker process.

Metrics are per process (gunicorn's processes each answer for themselves); Prometheus sums them. No
metric carries a caller, a patient or a number: counts, durations and levels only.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Iterator

from flask import Blueprint, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from rq import Queue

from telephony.metrics import STREAMS

log = logging.getLogger(__name__)


class QueueDepth(Collector):
    """Jobs waiting and jobs failed on the process's queue, read from Redis when scraped."""

    def __init__(self) -> None:
        self._queue: Queue | None = None

    def watch(self, queue: Queue) -> None:
        self._queue = queue

    def collect(self) -> Iterator[GaugeMetricFamily]:
        queue = self._queue
        if queue is None:
            return
        try:
            waiting, failed = queue.count, queue.failed_job_registry.count
        except (RedisError, OSError) as exc:
            log.warning("metrics: queue depth unavailable (%s)", type(exc).__name__)
            return
        depth = GaugeMetricFamily("painline_queue_depth", "Jobs waiting on the queue", labels=["queue"])
        depth.add_metric([queue.name], waiting)
        yield depth
        dead = GaugeMetricFamily("painline_queue_failed", "Jobs in the queue's failed registry", labels=["queue"])
        dead.add_metric([queue.name], failed)
        yield dead


QUEUE_DEPTH = QueueDepth()
_installed = threading.Lock()
_registered = False


def install(queue: Queue | None) -> None:
    """Register the wired collectors in this process's registry (once) and watch ``queue``."""
    global _registered
    with _installed:
        if not _registered:
            REGISTRY.register(STREAMS)
            REGISTRY.register(QUEUE_DEPTH)
            _registered = True
    if queue is not None:
        QUEUE_DEPTH.watch(queue)


def exposition() -> bytes:
    """The process's metrics in the Prometheus text format."""
    return generate_latest(REGISTRY)


def _direct_and_internal() -> bool:
    """A scrape straight from a loopback or private address, not a request relayed by the proxy."""
    if request.headers.get("X-Forwarded-For"):
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return address.is_loopback or address.is_private


def metrics_blueprint() -> Blueprint:
    bp = Blueprint("metrics", __name__)

    @bp.get("/metrics")
    def metrics() -> Response:
        if not _direct_and_internal():
            abort(404)  # as if there were nothing here: the public URL does not advertise it
        return Response(exposition(), content_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})

    return bp


def serve_worker_metrics(port: int, host: str = "0.0.0.0") -> None:
    """The worker's ``/metrics`` on its own port (a daemon thread of prometheus-client's)."""
    start_http_server(port, addr=host)
    log.info("worker metrics on http://%s:%d/metrics", host, port)


__all__ = ["QUEUE_DEPTH", "QueueDepth", "exposition", "install", "metrics_blueprint", "serve_worker_metrics"]
