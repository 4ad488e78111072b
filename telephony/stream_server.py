"""The Media Stream WebSocket served from an asyncio event loop: ``painline stream``.

Why a second server for the same socket. Under gunicorn every call holds a thread that wakes for
each 20 ms frame and hands the GIL over twice to handle about 20 microseconds of work; that
hand-over, not the work, was most of the web server's CPU per call-second (``docs/stream.md``). Here
one loop reads every call's socket: a frame costs a read, a parse and the jitter buffer and VAD
steps, and nothing else.

The same :class:`~telephony.session.StreamSession` runs here as in the Flask route
(:mod:`telephony.stream_socket`), with the same handshake signature check, token rules, size cap,
close codes and idle rule. What differs is where the database is waited on: the loop must never
wait, so the session holds ended utterances (``save_inline=False``) and the handler runs
:meth:`~telephony.session.StreamSession.save_ready`, ``start``, ``stop`` and ``finish`` in a small
thread pool, one step at a time per call; media frames are handled on the loop itself. A call's
reading pauses while its own save runs (the kernel buffers its frames meanwhile); no other call's
does.

Idle streams are found by one sweep over the open calls every few seconds (a message counter that
did not move), not by a timer per frame; the sweep wakes the call's handler, which finishes the
session and closes the socket itself, so a session only ever has one owner. Plain ``GET``
requests to the paths in ``routes`` (the composition root passes ``/healthz``) are answered on the
same port, so a load balancer can check this process like the web one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import urlsplit

from rq import Queue
from sqlalchemy.orm import Session
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from telephony.config import TelephonyConfig
from telephony.messages import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    MAX_MESSAGE_BYTES,
    ProtocolError,
    Start,
    Stop,
    parse_message,
)
from telephony.session import StreamSession
from telephony.signatures import SIGNATURE_HEADER, is_valid, public_ws_url
from telephony.stream_socket import IDLE_TIMEOUT_S
from telephony.webhooks import STREAM_PATH

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PlainResponse:
    """What a plain-HTTP route answers: status, content type and body."""

    status: HTTPStatus
    content_type: str
    body: bytes


Route = Callable[[], PlainResponse]
"""A plain ``GET`` endpoint on the stream port; called in the thread pool (it may block)."""


@dataclass(frozen=True)
class StreamServerOptions:
    """How the process serves: where, how many database threads, and when a stream counts as gone."""

    host: str = "127.0.0.1"
    port: int = 8001
    io_threads: int = 8  # database steps in flight at once; the engine's pool must allow as many
    idle_timeout_s: float = IDLE_TIMEOUT_S
    drain_s: float = 120.0  # on SIGTERM, how long open calls may go on before they are closed
    close_timeout_s: float = 2.0  # after our close frame, how long the peer has to answer it
    routes: Mapping[str, Route] = field(default_factory=dict)


@dataclass
class _Open:
    """One open stream, as its handler and the idle sweep see it."""

    connection: ServerConnection
    session: StreamSession
    handler: asyncio.Task[None]
    waiting: bool = False  # the handler is waiting for the next message (and nothing else)
    idle: bool = False  # the sweep cancelled that wait because the stream went quiet
    seen_messages: int = -1
    idle_rounds: int = 0


class StreamServer:
    """Accept Media Streams, feed each to its own :class:`StreamSession`; see the module docstring."""

    def __init__(
        self,
        sessions: Callable[[], Session],
        queue: Queue | None,
        config: TelephonyConfig,
        options: StreamServerOptions,
    ) -> None:
        self._sessions = sessions
        self._queue = queue
        self._config = config
        self._options = options
        self._pool = ThreadPoolExecutor(max_workers=options.io_threads, thread_name_prefix="painline-stream-io")
        self._open: dict[int, _Open] = {}
        self._server: Server | None = None

    @property
    def open_streams(self) -> int:
        return len(self._open)

    @property
    def port(self) -> int:
        """The port actually bound (useful when ``options.port`` was 0)."""
        assert self._server is not None, "not started"
        sockets = list(self._server.sockets)
        return int(sockets[0].getsockname()[1])

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self._options.host,
            self._options.port,
            process_request=self._process_request,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # Twilio does not negotiate it; inflating 50 frames a second costs CPU
            close_timeout=self._options.close_timeout_s,
            # no keepalive pings: a peer that never reads (Twilio only sends) would miss the pong and be
            # cut off after 40 s; liveness is the idle sweep's, from the frames every 20 ms
            ping_interval=None,
        )

    async def run_until(self, stop: asyncio.Event) -> None:
        """Serve until ``stop`` is set, then drain: no new calls, open ones get ``drain_s`` to end."""
        if self._server is None:
            await self.start()
        sweeper = asyncio.create_task(self._sweep_idle())
        try:
            await stop.wait()
        finally:
            sweeper.cancel()
            await self.close(drain_s=self._options.drain_s)

    async def close(self, *, drain_s: float = 0.0) -> None:
        """Stop listening; give open calls ``drain_s`` seconds, then close them (their sessions finish)."""
        server = self._server
        if server is None:
            return
        server.close(close_connections=False)
        deadline = asyncio.get_running_loop().time() + drain_s
        while self._open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
        for entry in list(self._open.values()):
            await entry.connection.close(1001, "server shutting down")
        await server.wait_closed()
        self._pool.shutdown(wait=True)

    # -- one stream ----------------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        session = StreamSession(self._sessions, self._queue, self._config.stream, save_inline=False)
        key = id(connection)
        handler = asyncio.current_task()
        assert handler is not None
        entry = self._open[key] = _Open(connection, session, handler)
        try:
            await self._pump(entry)
        finally:
            del self._open[key]
            if not session.ended:
                await self._in_thread(_finish, session)

    async def _pump(self, entry: _Open) -> None:
        connection, session = entry.connection, entry.session
        try:
            while not session.ended:
                entry.waiting = True
                raw = await connection.recv()
                entry.waiting = False
                try:
                    message = parse_message(raw)
                    if isinstance(message, Start | Stop):  # token, call row, final saves: the database
                        await self._in_thread(session.handle, message)
                    else:
                        session.handle(message)
                    if session.save_due:
                        await self._in_thread(session.save_ready)
                except ProtocolError as exc:
                    log.warning("call %s: closing stream (%s, code %d)", session.call_id, exc.reason, exc.close_code)
                    await self._in_thread(_finish, session)
                    await connection.close(exc.close_code, exc.reason)
                    return
            await connection.close(CLOSE_NORMAL, "stream stopped")
        except ConnectionClosed:
            pass  # Twilio hung up or the network dropped: _handle finishes the session
        except asyncio.CancelledError:
            if not entry.idle:
                raise  # the server is going down
            entry.handler.uncancel()
            log.warning("call %s: stream idle for %.0f s, closing", session.call_id, self._options.idle_timeout_s)
            await self._in_thread(_finish, session)
            await connection.close(CLOSE_POLICY_VIOLATION, "stream idle")
        except Exception:
            log.exception("call %s: stream handler failed", session.call_id)
            await self._in_thread(_finish, session)
            with contextlib.suppress(Exception):  # the socket may already be gone
                await connection.close(CLOSE_INTERNAL_ERROR, "internal error")

    async def _in_thread(self, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _sweep_idle(self) -> None:
        """Close streams that sent nothing for about ``idle_timeout_s`` (Twilio sends every 20 ms)."""
        every = max(self._options.idle_timeout_s / 3, 0.05)
        while True:
            await asyncio.sleep(every)
            for entry in list(self._open.values()):
                messages = entry.session.counters.messages
                if messages != entry.seen_messages:
                    entry.seen_messages = messages
                    entry.idle_rounds = 0
                    continue
                entry.idle_rounds += 1
                if entry.idle_rounds >= 3 and entry.waiting and not entry.idle:
                    # the handler owns its session: wake it (cancelling recv is safe) and let it close
                    entry.idle = True
                    entry.handler.cancel()

    # -- the handshake ---------------------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Answer plain routes; refuse any other path (404) and an unsigned stream handshake (403)."""
        path = urlsplit(request.path).path
        route = self._options.routes.get(path)
        if route is not None:
            answer = await self._in_thread(route)
            headers = Headers([("Content-Type", answer.content_type), ("Content-Length", str(len(answer.body)))])
            return Response(answer.status.value, answer.status.phrase, headers, answer.body)
        if path != STREAM_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        url = public_ws_url(self._config.public_url, path)
        if not is_valid(self._config.twilio_auth_token, url, {}, request.headers.get(SIGNATURE_HEADER)):
            log.warning("refused stream handshake without a valid Twilio signature")
            return connection.respond(HTTPStatus.FORBIDDEN, "forbidden\n")
        return None


def _finish(session: StreamSession) -> None:
    try:
        session.finish()
    except Exception:
        log.exception("call %s: could not finish stream", session.call_id)


def run(
    sessions: Callable[[], Session],
    queue: Queue | None,
    config: TelephonyConfig,
    options: StreamServerOptions,
) -> None:
    """Serve until SIGTERM or SIGINT, then drain (the process entry point ``painline stream`` calls)."""

    async def main() -> None:
        server = StreamServer(sessions, queue, config, options)
        await server.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        log.info("painline stream on ws://%s:%d%s", options.host, server.port, STREAM_PATH)
        await server.run_until(stop)

    asyncio.run(main())


__all__ = ["PlainResponse", "Route", "StreamServer", "StreamServerOptions", "run"]
