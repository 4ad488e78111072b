"""Helpers of the telephony tests: the smallest app the telephony blueprint runs in, and its server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask_sock import Sock
from rq import Queue

from painline.app import telephony_config
from painline.config import Settings
from telephony.blueprint import init_app

PUBLIC_URL = "https://painline.example"


STREAM_WSS_URL = "wss://painline.example/twilio/stream"


def make_app(settings: Settings, sessions: Any, queue: Queue | None) -> Flask:
    """The smallest app the telephony blueprint runs in, shaped like painline's own factory."""
    app = Flask("painline-telephony-test")
    app.extensions["painline.sessions"] = sessions
    app.extensions["painline.queue"] = queue
    sock = Sock(app)
    init_app(app, sock, telephony_config(settings))
    return app


@dataclass
class LiveServer:
    http_url: str
    ws_url: str
    app: Flask
