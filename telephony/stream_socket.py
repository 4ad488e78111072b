"""The Media Stream WebSocket: authenticate the handshake, then pump frames into a StreamSession.

flask-sock completes the WebSocket upgrade before the route function runs, so the signature is
checked in a ``before_request`` hook, where a 403 still refuses the upgrade. The handler only reads
frames and hands them on; a protocol violation closes this one stream with a specific close code,
never the process. Reading never pauses for a worker: Twilio discards audio if the server reads
too slowly.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Protocol

from flask import Blueprint, Response, current_app, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from telephony.config import config_of
from telephony.inline_socket import InlineReader
from telephony.messages import CLOSE_INTERNAL_ERROR, CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, ProtocolError
from telephony.session import StreamSession
from telephony.signatures import SIGNATURE_HEADER, is_valid, public_ws_url
from telephony.webhooks import STREAM_PATH

log = logging.getLogger(__name__)


class WebSocketLike(Protocol):
    """The part of simple-websocket's ``Server`` the handler uses."""

    def receive(self, timeout: float | None = None) -> str | bytes | None: ...

    def close(self, reason: int | None = None, message: str | None = None) -> None: ...


IDLE_TIMEOUT_S = 30.0
"""Twilio sends a media frame every 20 ms while a call is up; this much silence means it is gone."""


def check_handshake() -> Response | None:
    """``before_request``: refuse the upgrade (403) unless Twilio signed ``wss://<public>/twilio/stream``."""
    cfg = config_of()
    url = public_ws_url(cfg.public_url, request.path)
    if not is_valid(cfg.twilio_auth_token, url, {}, request.headers.get(SIGNATURE_HEADER)):
        log.warning("refused stream handshake without a valid Twilio signature")
        return Response("forbidden", status=403, mimetype="text/plain")
    return None


def serve(ws: WebSocketLike, session: StreamSession, *, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
    """Read frames until stop, a protocol error, an idle timeout or the peer going away."""
    try:
        while not session.ended:
            raw = ws.receive(timeout=idle_timeout_s)
            if raw is None:
                log.warning("call %s: stream idle for %.0f s, closing", session.call_id, idle_timeout_s)
                _finish(session)
                ws.close(CLOSE_POLICY_VIOLATION, "stream idle")
                return
            try:
                session.receive(raw)
            except ProtocolError as exc:
                log.warning("call %s: closing stream (%s, code %d)", session.call_id, exc.reason, exc.close_code)
                _finish(session)
                ws.close(exc.close_code, exc.reason)
                return
        ws.close(CLOSE_NORMAL, "stream stopped")
    except ConnectionClosed:
        pass  # Twilio hung up or the network dropped: keep what we have (finally)
    except Exception:
        log.exception("call %s: stream handler failed", session.call_id)
        with contextlib.suppress(Exception):  # the socket may already be gone
            ws.close(CLOSE_INTERNAL_ERROR, "internal error")
    finally:
        _finish(session)


def _finish(session: StreamSession) -> None:
    try:
        session.finish()
    except Exception:
        log.exception("call %s: could not finish stream", session.call_id)


def new_session() -> StreamSession:
    return StreamSession(
        current_app.extensions["painline.sessions"],
        current_app.extensions.get("painline.queue"),
        config_of().stream,
    )


def register(bp: Blueprint, sock: Sock) -> None:
    """Add the WebSocket route and its handshake check to ``bp``."""
    endpoint = f"{bp.name}.stream"

    @bp.before_request
    def _authenticate_stream() -> Response | None:
        if request.endpoint != endpoint:
            return None
        return check_handshake()

    @sock.route(STREAM_PATH, bp=bp)
    def stream(ws: Any) -> None:
        serve(InlineReader(ws), new_session())
