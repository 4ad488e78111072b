"""Server-Sent Events: flag and call messages, relayed from Redis to the nurse's browser.

Each open ``GET /events`` holds its own Redis ``SUBSCRIBE`` to the flag channel (the worker's flags,
colleagues' acknowledgements and resolutions) and the call channel (the telephony layer's stream
start and end, the worker's score landed and call finalised, :func:`schema.contract.announce_call`),
so it works with any number of web processes: a message is published once and every process's
subscribers receive it. Flag messages go out as ``event: flag``, call messages as ``event: call``.
The browser's script (``static/live.js``) only treats an event as "something changed" and re-fetches
the queue fragment or the call page's parts, so nothing a nurse sees comes from the event itself and
a lost event costs nothing but a late refresh (the script also refreshes when it reconnects, and the
call page polls slowly as a fallback).

What a stream holds and for how long:

- no database session: authorisation happens before the response starts (auth's ``before_request``
  reads the user and closes its session), and the generator below touches only Redis;
- one thread of the web server. Under gunicorn ``gthread`` that is one of ``--threads`` per worker
  process for as long as the tab is open, like a Media Stream socket; size ``--threads`` for calls
  plus open nurse screens;
- it ends when the client goes away: a comment line is written at least every ``heartbeat_s``
  (15 s), a write to a closed connection fails, and the WSGI server then closes the generator,
  whose ``finally`` unsubscribes. It also ends after ``max_stream_s`` (5 min) so that a signed-out or
  deactivated user is noticed when the browser reconnects, and straight away if Redis goes down
  (the browser retries after ``retry`` ms);
- it ends within ``poll_s`` (1 s) once the server is stopping (:func:`begin_shutdown`, called from
  gunicorn's SIGTERM by ``painline.gunicorn_conf``): it sends ``event: closing`` so the page says
  live updates are paused rather than on, and returns, so the worker's graceful stop is not held for
  its whole timeout by open nurse screens. The browser reconnects to the restarted server.

Only the fields of :func:`worker.flags.flag_message` that are ids, levels and scores are forwarded,
after parsing, so a malformed or unexpected publish can never inject text into the stream.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flask import Flask, Response, current_app
from redis import Redis
from redis.exceptions import RedisError

from dashboard.config import DashboardConfig, config_of
from schema.contract import LiveEvent

log = logging.getLogger(__name__)

HEARTBEAT_S = DashboardConfig.sse_heartbeat_s
POLL_S = 1.0
MAX_STREAM_S = DashboardConfig.sse_max_stream_s
RETRY_MS = 3000
STOPPING = "painline.stopping"
"""``app.extensions`` key of the app's shutdown :class:`threading.Event` (:func:`stopping_event`)."""
CALL_EVENTS = frozenset(event.value for event in LiveEvent if event.value.startswith("call."))
"""The events relayed as ``event: call``: every ``call.*`` member, so one added to the contract (the
worker's ``call.scored`` and ``call.finalised`` were) reaches the call page without an edit here,
instead of going out as ``flag`` and making every queue highlight a row."""

FORWARDED = {
    "event": str,
    "flag_id": int,
    "call_id": int,
    "level": str,
    "severity": float,
    "probability": float,
    "status": str,
    "sent_at": int,
}
"""The flag message fields relayed to browsers, with the type each must have."""


def clean_message(raw: bytes | str) -> dict[str, Any] | None:
    """The forwardable part of one published flag message, or None if it is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, TypeError):
        return None
    if not isinstance(doc, dict):
        return None
    out: dict[str, Any] = {}
    for key, kind in FORWARDED.items():
        value = doc.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if kind is float and isinstance(value, int | float):
            out[key] = float(value)
        elif (kind is int and isinstance(value, int)) or (kind is str and isinstance(value, str) and len(value) <= 64):
            out[key] = value
    return out if "call_id" in out else None


def stopping_event(app: Flask) -> threading.Event:
    """The event set when ``app``'s server is stopping; every open stream checks it."""
    event = app.extensions.setdefault(STOPPING, threading.Event())
    assert isinstance(event, threading.Event)
    return event


def begin_shutdown(app: Flask) -> None:
    """Tell every open event stream of ``app`` to end now (the server is stopping)."""
    stopping_event(app).set()


def event_name(doc: dict[str, Any]) -> str:
    """The SSE event a cleaned message goes out as: ``call`` for stream start/end, ``flag`` otherwise."""
    return "call" if doc.get("event") in CALL_EVENTS else "flag"


def sse(data: dict[str, Any], event: str = "flag") -> str:
    """One SSE event; JSON never contains a raw newline, so one ``data:`` line suffices."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def flag_events(
    redis: Redis,
    channel: str | Sequence[str],
    *,
    heartbeat_s: float = HEARTBEAT_S,
    poll_s: float = POLL_S,
    max_stream_s: float = MAX_STREAM_S,
    clock: Callable[[], float] = time.monotonic,
    stopping: threading.Event | None = None,
) -> Iterator[str]:
    """The event stream's chunks: a ``retry`` line, then flag and call events and heartbeat comments.

    Subscribes to ``channel`` (one name or several) before the first chunk is produced, so a message
    published after a reader has seen the first chunk is always delivered (tests rely on this).
    Checks ``stopping`` at least every ``poll_s``. Unsubscribes however it ends.
    """
    channels = [channel] if isinstance(channel, str) else list(channel)
    pubsub = redis.pubsub(ignore_subscribe_messages=True)
    try:
        try:
            pubsub.subscribe(*channels)
        except (RedisError, OSError) as exc:
            log.warning("live events: cannot subscribe (%s)", type(exc).__name__)
            yield f"retry: {RETRY_MS * 5}\n: live updates unavailable\n\n"
            return
        yield f"retry: {RETRY_MS}\n: connected\n\n"
        started = last_write = clock()
        while clock() - started < max_stream_s:
            if stopping is not None and stopping.is_set():
                yield sse({"reason": "server stopping"}, event="closing")
                return
            try:
                message = pubsub.get_message(timeout=poll_s)
            except (RedisError, OSError) as exc:
                log.warning("live events: Redis lost (%s)", type(exc).__name__)
                yield ": live updates interrupted\n\n"
                return
            if message is not None and message.get("type") == "message":
                doc = clean_message(message.get("data") or b"")
                if doc is not None:
                    yield sse(doc, event=event_name(doc))
                    last_write = clock()
                    continue
            if clock() - last_write >= heartbeat_s:
                yield ": heartbeat\n\n"
                last_write = clock()
        yield ": reconnect\n\n"
    finally:
        with contextlib.suppress(RedisError, OSError):
            pubsub.unsubscribe()
        pubsub.close()


def events_response() -> Response:
    """The ``/events`` response for the current app: the stream, unbuffered and uncached.

    Everything the generator needs is read here, in the request, because the generator runs after
    the request context is gone (deliberately not ``stream_with_context``: that would keep the
    request, and whatever its teardown closes, alive for the life of the stream).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    redis: Redis = app.extensions["painline.redis"]
    config = config_of(app)
    stream = flag_events(
        redis,
        [config.flag_channel, config.call_channel],
        heartbeat_s=config.sse_heartbeat_s,
        max_stream_s=config.sse_max_stream_s,
        stopping=stopping_event(app),
    )
    response = Response(stream, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"  # nginx: pass events through as they come
    return response


__all__ = [
    "HEARTBEAT_S",
    "MAX_STREAM_S",
    "begin_shutdown",
    "clean_message",
    "event_name",
    "events_response",
    "flag_events",
    "sse",
    "stopping_event",
]
