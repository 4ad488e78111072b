"""The live queue: ``GET /events`` relays the worker's Redis flag messages as Server-Sent Events."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.cookiejar import CookieJar
from types import SimpleNamespace
from typing import cast

from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from werkzeug.test import TestResponse

from dashboard import live, nurse
from dashboard.config import config_of, configure
from painline import gunicorn_conf
from painline.app import begin_shutdown
from schema.contract import LiveEvent, announce_call, call_channel
from tests.app_fixtures import AppServer
from tests.dashboard_fixtures import PASSWORD, DashUsers
from worker.context import DEFAULT_SPEAKER_THRESHOLD
from worker.flags import FlagChange, encode, flag_message

ClientAs = Callable[[str], FlaskClient]


def _subscribers(redis: Redis, channel: str) -> int:
    return int(dict(redis.pubsub_numsub(channel)).get(channel.encode(), 0))


def _chunks(response: TestResponse) -> Iterator[bytes]:
    """The unbuffered body of a test client's response, chunk by chunk (a WSGI body is bytes)."""
    return cast(Iterator[bytes], iter(response.response))


def _read_until(chunks: Iterator[bytes], needle: str, timeout_s: float = 10.0) -> str:
    """Read stream chunks until one contains ``needle`` (the stream's heartbeat bounds each read)."""
    seen = ""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen += next(chunks).decode()
        if needle in seen:
            return seen
    raise AssertionError(f"{needle!r} not seen in {timeout_s} s; got {seen!r}")


def _change(call_id: int = 42) -> FlagChange:
    return FlagChange(
        event="flag.raised", flag_id=7, call_id=call_id, level="high", severity=0.91, probability=0.91, status="open"
    )


def test_the_dashboard_spells_the_worker_constants_the_same() -> None:
    assert nurse.SPEAKER_THRESHOLD == DEFAULT_SPEAKER_THRESHOLD


def test_events_relays_a_published_flag_and_unsubscribes_when_closed(pages_app: Flask, client_as: ClientAs) -> None:
    redis: Redis = pages_app.extensions["painline.redis"]
    channel = config_of(pages_app).flag_channel
    response = client_as("nurse").get("/events", buffered=False)
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream" and response.headers["Cache-Control"] == "no-store"
    chunks = _chunks(response)
    assert "retry:" in next(chunks).decode()  # subscribed before this first chunk
    assert _subscribers(redis, channel) == 1
    redis.publish(channel, b"not json")
    redis.publish(channel, json.dumps({"event": "x", "note": "no call id"}))
    redis.publish(channel, encode(flag_message(_change(42))))
    seen = _read_until(chunks, "event: flag")
    event = re.search(r"event: flag\ndata: (.+)\n\n", seen)
    assert event is not None
    data = json.loads(event.group(1))
    assert data["call_id"] == 42 and data["level"] == "high" and data["severity"] == 0.91
    assert seen.count("event: flag") == 1  # the malformed messages were dropped, not relayed
    response.close()
    assert _subscribers(redis, channel) == 0


def test_events_sends_heartbeats_while_nothing_happens(pages_app: Flask, client_as: ClientAs) -> None:
    response = client_as("auditor").get("/events", buffered=False)
    chunks = _chunks(response)
    next(chunks)
    assert ": heartbeat" in _read_until(chunks, ": heartbeat", timeout_s=5.0)
    response.close()


def test_the_stream_ends_by_itself_after_its_maximum_life() -> None:
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    channel = f"painline-test-flags:{secrets.token_hex(6)}"
    try:
        started = time.monotonic()
        chunks = list(live.flag_events(redis, channel, heartbeat_s=0.2, poll_s=0.1, max_stream_s=0.6))
        assert time.monotonic() - started < 5
        assert chunks[0].startswith("retry:") and chunks[-1] == ": reconnect\n\n"
        assert _subscribers(redis, channel) == 0
    finally:
        redis.close()


def test_clean_message_forwards_only_known_typed_fields() -> None:
    raw = json.dumps({"call_id": 3, "level": "low", "severity": 1, "patient": "ref:X", "flag_id": "7", "status": True})
    assert live.clean_message(raw) == {"call_id": 3, "level": "low", "severity": 1.0}
    assert live.clean_message("[1, 2]") is None
    assert live.clean_message(json.dumps({"level": "high"})) is None


def test_a_closed_browser_connection_ends_the_subscription_on_the_real_server(
    app_server: AppServer, pages_app: Flask, dash_users: DashUsers
) -> None:
    redis: Redis = pages_app.extensions["painline.redis"]
    channel = config_of(pages_app).flag_channel
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
    with browser.open(f"{app_server.url}/login", timeout=10) as page:
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.read().decode()).group(1)  # type: ignore[union-attr]
    form = urllib.parse.urlencode({"username": "nurse1", "password": PASSWORD, "csrf_token": token}).encode()
    with browser.open(f"{app_server.url}/login", data=form, timeout=10) as signed_in:
        assert signed_in.url == f"{app_server.url}/"  # redirected to the queue: signed in
    stream = browser.open(f"{app_server.url}/events", timeout=10)
    assert stream.readline().startswith(b"retry:")
    assert _subscribers(redis, channel) == 1
    redis.publish(channel, encode(flag_message(_change(5))))
    while not (line := stream.readline()).startswith(b"data:"):
        assert line, "the stream ended before the event arrived"
    assert json.loads(line[5:])["call_id"] == 5
    stream.close()
    deadline = time.monotonic() + 10
    while _subscribers(redis, channel) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _subscribers(redis, channel) == 0, "the server kept listening for a browser that left"


# ---------------------------------------------------------------------------------------------------
# issue 13: calls on the stream, and a prompt end when the server stops


def test_events_relays_call_starts_and_ends_from_the_call_channel(pages_app: Flask, client_as: ClientAs) -> None:
    redis: Redis = pages_app.extensions["painline.redis"]
    channel = call_channel(f"test-{secrets.token_hex(6)}")
    configure(pages_app, replace(config_of(pages_app), call_channel=channel))
    response = client_as("nurse").get("/events", buffered=False)
    chunks = _chunks(response)
    next(chunks)
    assert _subscribers(redis, channel) == 1 and _subscribers(redis, config_of(pages_app).flag_channel) == 1
    assert announce_call(redis, channel, LiveEvent.CALL_STARTED, 11)  # what the telephony layer calls
    seen = _read_until(chunks, "event: call")
    event = re.search(r"event: call\ndata: (.+)\n\n", seen)
    assert event is not None
    data = json.loads(event.group(1))
    assert data["event"] == "call.started" and data["call_id"] == 11
    response.close()
    assert _subscribers(redis, channel) == 0


def test_events_relays_the_workers_score_and_verdict_as_call_events(pages_app: Flask, client_as: ClientAs) -> None:
    """A score landing and a verdict reach the call page as ``event: call`` (not ``flag``), ids only."""
    redis: Redis = pages_app.extensions["painline.redis"]
    channel = call_channel(f"test-{secrets.token_hex(6)}")
    configure(pages_app, replace(config_of(pages_app), call_channel=channel))
    response = client_as("nurse").get("/events", buffered=False)
    chunks = _chunks(response)
    next(chunks)
    assert announce_call(redis, channel, LiveEvent.CALL_SCORED, 12)  # what worker.calls.announce calls
    assert announce_call(redis, channel, LiveEvent.CALL_FINALISED, 12)
    seen = _read_until(chunks, "call.finalised")
    events = re.findall(r"event: (\w+)\ndata: (.+)\n\n", seen)
    assert [(name, json.loads(data)["event"]) for name, data in events] == [
        ("call", "call.scored"),
        ("call", "call.finalised"),
    ]
    assert all(set(json.loads(data)) == {"event", "call_id", "sent_at"} for _, data in events)
    response.close()


def test_every_call_event_of_the_contract_goes_out_as_a_call_event() -> None:
    for event in LiveEvent:
        expected = "call" if event.value.startswith("call.") else "flag"
        assert live.event_name({"event": event.value, "call_id": 1}) == expected, event


def test_the_stream_ends_within_a_second_once_the_server_is_stopping() -> None:
    redis = Redis.from_url("redis://127.0.0.1:6379/0")
    channel = f"painline-test-flags:{secrets.token_hex(6)}"
    stopping = threading.Event()
    try:
        threading.Timer(0.3, stopping.set).start()
        started = time.monotonic()
        chunks = list(live.flag_events(redis, channel, heartbeat_s=60, max_stream_s=60, stopping=stopping))
        assert time.monotonic() - started < 1.8  # not the 60 s of its life, nor a heartbeat's wait
        assert chunks[-1].startswith("event: closing\n")  # the page says paused, not on
        assert _subscribers(redis, channel) == 0
    finally:
        redis.close()


def test_begin_shutdown_ends_the_open_streams_of_the_app(pages_app: Flask, client_as: ClientAs) -> None:
    response = client_as("nurse").get("/events", buffered=False)
    chunks = _chunks(response)
    next(chunks)
    started = time.monotonic()
    begin_shutdown(pages_app)
    rest = "".join(bytes(chunk).decode() for chunk in chunks)  # it returns by itself
    assert time.monotonic() - started < 2.0
    assert "event: closing" in rest
    response.close()


def test_gunicorn_restarts_can_bind_at_once_and_sigterm_ends_event_streams(pages_app: Flask) -> None:
    assert gunicorn_conf.reuse_port is True  # the old workers' listening sockets may live on while draining
    calls: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        gunicorn_conf.post_worker_init(SimpleNamespace(wsgi=pages_app))
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 2
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert live.stopping_event(pages_app).is_set()
        assert calls == [signal.SIGTERM]  # gunicorn's own handler still runs (it stops the worker loop)
    finally:
        signal.signal(signal.SIGTERM, previous)
