"""Fixtures of the telephony tests only (the shared ones are in ``tests/telephony_fixtures.py``).

- ``tel_settings``: settings for the public URL, auth token and HMAC key the Twilio helpers sign with.
- ``telephony_app`` / ``live_server``: a minimal Flask app carrying only the telephony blueprint, and
  the same app served by werkzeug in a thread for real WebSocket clients.
- ``down_sessions`` / ``down_queue``: a database and a Redis that refuse connections.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from flask import Flask
from redis import Redis
from rq import Queue
from sqlalchemy.orm import Session, sessionmaker
from werkzeug.serving import make_server

from painline.app import telephony_config
from painline.config import Settings
from schema.db import make_engine, session_factory
from tests.stream_servers import running_stream_server
from tests.telephony.helpers import PUBLIC_URL, LiveServer, make_app
from tests.telephony_fixtures import AUTH_TOKEN, HMAC_KEY


@pytest.fixture
def tel_settings() -> Settings:
    return Settings(
        public_url=PUBLIC_URL,
        twilio_auth_token=AUTH_TOKEN,
        hmac_key=HMAC_KEY,
        next_dial="+15550100",
        stream_token_ttl_s=120,
    )


@pytest.fixture
def down_sessions() -> Iterator[sessionmaker[Session]]:
    """A session factory whose database refuses connections (nothing listens on port 1)."""
    url = "postgresql+psycopg://postgres@127.0.0.1:1/none"
    engine = make_engine(url, connect_args={"connect_timeout": 2})
    try:
        yield session_factory(engine)
    finally:
        engine.dispose()


@pytest.fixture
def down_queue() -> Iterator[Queue]:
    """An rq queue whose Redis refuses connections."""
    connection = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    yield Queue("painline-test-down", connection=connection)
    connection.close()


@pytest.fixture
def telephony_app(tel_settings: Settings, tel_sessions: sessionmaker[Session], rq_queue: Queue) -> Flask:
    return make_app(tel_settings, tel_sessions, rq_queue)


@pytest.fixture(params=["flask", "asyncio"])
def live_server(
    request: pytest.FixtureRequest,
    telephony_app: Flask,
    tel_settings: Settings,
    tel_sessions: sessionmaker[Session],
    rq_queue: Queue,
) -> Iterator[LiveServer]:
    """The app in werkzeug; its ``ws_url`` is the Flask route's, or ``painline stream``'s server's."""
    server = make_server("127.0.0.1", 0, telephony_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="telephony-live-server", daemon=True)
    thread.start()
    port = server.server_port
    try:
        if request.param == "flask":
            yield LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}", telephony_app)
        else:
            with running_stream_server(tel_sessions, rq_queue, telephony_config(tel_settings)) as stream:
                yield LiveServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{stream.port}", telephony_app)
    finally:
        server.shutdown()
        thread.join(timeout=10)
