"""Wire the telephony layer into a Flask app: one blueprint with the webhooks and the stream socket.

The composition root calls :func:`init_app` with the layer's :class:`~telephony.config.TelephonyConfig`,
after putting a sessionmaker in ``app.extensions["painline.sessions"]`` and an ``rq.Queue`` in
``app.extensions["painline.queue"]``. Nothing here reads the environment.
"""

from __future__ import annotations

from flask import Blueprint, Flask
from flask_sock import Sock

from telephony import stream_socket, webhooks
from telephony.config import TelephonyConfig, configure
from telephony.inline_socket import NoReaderThread
from telephony.messages import MAX_MESSAGE_BYTES

BLUEPRINT_NAME = "telephony"


def create_blueprint(sock: Sock) -> Blueprint:
    """A fresh blueprint (one per app): ``/twilio/voice``, ``/twilio/stream-status``, ``/twilio/stream``."""
    bp = Blueprint(BLUEPRINT_NAME, __name__)
    webhooks.register(bp)
    stream_socket.register(bp, sock)
    return bp


def init_app(app: Flask, sock: Sock, config: TelephonyConfig) -> Blueprint:
    """Register the telephony blueprint on ``app``; returns it.

    Also sets simple-websocket's options (unless the app set its own): a message size cap, so an
    oversized frame is refused before it is buffered whole, and no reader thread per socket (the
    stream route reads in its own thread, see :mod:`telephony.inline_socket`). The stream is this
    app's only WebSocket route; another one would have to read through ``InlineReader`` too.
    """
    app.config.setdefault(
        "SOCK_SERVER_OPTIONS", {"max_message_size": MAX_MESSAGE_BYTES, "thread_class": NoReaderThread}
    )
    configure(app, config)
    bp = create_blueprint(sock)
    app.register_blueprint(bp)
    return bp
