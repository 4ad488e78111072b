"""Read the Media Stream WebSocket in the request's own thread: one thread per call, not two.

flask-sock hands each route a ``simple_websocket.Server``, which starts a reader thread per socket:
it receives and parses the frames and wakes the request thread through a ``threading.Event`` for
each message. Twilio sends 50 messages a second per call, so that is two threads per call and two
wake-ups per 20 ms frame. Reading inline halves both. Measured with ``python -m bench.stream``, it
lowered frame-handling lag but not the server's CPU per call-second, which the remaining per-message
thread wake-up and GIL hand-over still dominate (the profile and the figures: ``docs/scaling.md``,
Profiling).

Here the reader thread is never started (``NoReaderThread`` is passed as simple-websocket's
``thread_class``, an option it offers for exactly this kind of replacement) and
:class:`InlineReader` does the same steps in the request thread: ``recv``, feed wsproto, let
simple-websocket handle the events (pings, close handshake, size limit), take the next message.
The handshake, routing and response handling stay flask-sock's; the event handling stays
simple-websocket's. What this module relies on beyond their public API is listed on
:class:`InlineReader` and checked by ``tests/telephony/test_telephony_inline_socket.py``.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import Any

from simple_websocket import ConnectionClosed


class NoReaderThread:
    """A ``thread_class`` for simple-websocket that never runs its reader loop."""

    def __init__(self, target: Callable[[], None] | None = None, **_: Any) -> None:
        self.name = "painline-inline-reader"
        self.daemon = True

    def start(self) -> None:
        """Nothing to start: :class:`InlineReader` reads in the caller's thread."""

    def join(self, timeout: float | None = None) -> None:
        """Nothing to wait for."""

    def is_alive(self) -> bool:
        return False


class InlineReader:
    """``receive``/``close`` over a ``simple_websocket.Server`` whose reader thread was not started.

    Uses these attributes of simple-websocket 1.x's ``Base``: ``sock``, ``ws`` (the wsproto
    connection), ``receive_bytes``, ``input_buffer``, ``connected``, ``close_reason``,
    ``close_message`` and ``_handle_events()`` (which answers pings, completes the close handshake
    and enforces ``max_message_size``).
    """

    def __init__(self, ws: Any) -> None:
        self._ws = ws
        self._timeout: float | None = -1.0  # the socket's timeout as last set (-1: not yet)

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message; None if none arrived within ``timeout`` seconds.

        Raises ``ConnectionClosed`` when the peer closed or the connection broke.
        """
        ws = self._ws
        deadline = None if timeout is None else time.monotonic() + timeout
        first = True
        while not ws.input_buffer:
            if not ws.connected:
                raise ConnectionClosed(ws.close_reason, ws.close_message)
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # one recv per message is the rule, so the first wait gets the whole timeout and the
            # socket keeps it between calls (setting it per frame costs a call each under gevent)
            wanted = timeout if first else remaining
            first = False
            try:
                if wanted != self._timeout:
                    ws.sock.settimeout(wanted)
                    self._timeout = wanted
                data = ws.sock.recv(ws.receive_bytes)
            except TimeoutError:
                return None
            except OSError:
                data = b""
            if not data:
                ws.connected = False
                raise ConnectionClosed(ws.close_reason, ws.close_message)
            ws.ws.receive_data(data)
            ws.connected = ws._handle_events()
        return ws.input_buffer.pop(0)

    def close(self, reason: int | None = None, message: str | None = None) -> None:
        """Send the close frame (if still open), then release the socket: no reader thread will."""
        try:
            if self._ws.connected:
                self._ws.close(reason, message)
        finally:
            with contextlib.suppress(OSError):
                self._ws.sock.shutdown(socket.SHUT_RDWR)


__all__ = ["InlineReader", "NoReaderThread"]
