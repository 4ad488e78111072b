"""The development web server (werkzeug, threaded), with access logs that leave out query strings.

The hotline may pass its patient reference in the voice webhook's query string
(``/twilio/voice?patient_ref=...``); werkzeug's stock access log prints the whole request line, which
would put patient references in the logs. Production gunicorn gets the same treatment through its
access log format (``%(U)s``, the path only; see :func:`painline.cli.gunicorn_command`).
"""

from __future__ import annotations

from flask import Flask
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

ACCESS_LOG_FORMAT = '%(h)s "%(m)s %(U)s %(H)s" %(s)s %(b)s %(L)ss'
"""gunicorn's access log line without the query string (``%(U)s`` is the path alone)."""


class PathOnlyRequestHandler(WSGIRequestHandler):
    """Logs ``METHOD /path`` and the status, never the query string."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path = getattr(self, "path", "").split("?", 1)[0]
        command = getattr(self, "command", "-")
        self.log("info", '"%s %s" %s %s', command, path, code, size)


def make_dev_server(host: str, port: int, app: Flask) -> BaseWSGIServer:
    """A threaded werkzeug server for ``app`` (``port`` 0 picks a free one: read ``server_port``)."""
    return make_server(host, port, app, threaded=True, request_handler=PathOnlyRequestHandler)


__all__ = ["ACCESS_LOG_FORMAT", "PathOnlyRequestHandler", "make_dev_server"]
