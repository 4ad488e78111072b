"""Fixtures for the composition-root tests: the real app factory on real PostgreSQL and Redis.

- ``app_pg_url``: the session PostgreSQL database (``pg_url``), migrated to head once.
- ``app_settings``: :class:`~painline.config.Settings` on that database and the test Redis, with
  a queue name of its own; rows are deleted after each test.
- ``painline_app``: :func:`painline.app.create_app` for those settings, its queue swapped for one whose
  job keys live in a namespace of their own (RQ job ids such as ``score-utterance-1`` are global and
  other areas' tests use them too); Redis keys deleted afterwards.
- ``app_server``: that app served by werkzeug on a free port in a thread, its ``public_url`` set to
  the real address so Twilio-style signatures over it verify.
- helpers: ``isolated_job_class``, ``cleanup_queue``, ``wav_file``, ``serve_app`` (an app in a thread,
  under a public URL of its choosing: ``proxied_app_server`` in ``tests/painline/conftest.py``).
"""

from __future__ import annotations

import os
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from flask import Flask
from redis import Redis
from rq import Queue
from rq.job import Job

from painline.app import close_app, configure, create_app, settings_of
from painline.config import Settings
from painline.devserver import make_dev_server
from schema.db import delete_all_rows
from schema.migrate import upgrade

DEFAULT_TEST_REDIS_URL = "redis://127.0.0.1:6379/0"
AUTH_TOKEN = "app-test-auth-token-0123456789"
HMAC_KEY = "app-test-hmac-key"
PROXY_PUBLIC_URL = "https://painline.example"


def app_redis_url() -> str:
    return os.environ.get("PAINLINE_TEST_REDIS_URL") or DEFAULT_TEST_REDIS_URL


def isolated_job_class(queue_name: str) -> type[Job]:
    """A Job class whose keys live under ``rq:job:<queue_name>:`` instead of the shared ``rq:job:``."""
    return type("IsolatedJob", (Job,), {"redis_job_namespace_prefix": f"rq:job:{queue_name}:"})


def cleanup_queue(connection: Redis, name: str) -> None:
    """Delete every key the queue (and its isolated jobs) created."""
    keys = list(connection.scan_iter(match=f"*{name}*"))
    if keys:
        connection.delete(*keys)
    connection.srem("rq:queues", f"rq:queue:{name}")


def wav_file(path: Path, samples: np.ndarray, rate: int = 8000) -> Path:
    sf.write(str(path), np.asarray(samples, dtype=np.float32), rate, subtype="PCM_16")
    return path


@pytest.fixture(scope="session")
def app_pg_url(pg_url: str) -> str:
    upgrade(pg_url)
    return pg_url


@pytest.fixture
def app_settings(app_pg_url: str, tmp_path: Path) -> Iterator[Settings]:
    name = f"painline-test-app-{secrets.token_hex(6)}"
    settings = Settings(
        var_dir=tmp_path / "var",
        database_url=app_pg_url,
        redis_url=app_redis_url(),
        public_url="http://127.0.0.1:8000",
        twilio_auth_token=AUTH_TOKEN,
        hmac_key=HMAC_KEY,
        secret_key="app-test-secret",
        queue_name=name,
        next_enqueue="nurses",
    )
    try:
        yield settings
    finally:
        delete_all_rows(app_pg_url)
        connection = Redis.from_url(app_redis_url())
        try:
            cleanup_queue(connection, name)
        finally:
            connection.close()


@pytest.fixture
def painline_app(app_settings: Settings) -> Iterator[Flask]:
    app = create_app(app_settings)
    connection = app.extensions["painline.redis"]
    app.extensions["painline.queue"] = Queue(
        app_settings.queue_name, connection=connection, job_class=isolated_job_class(app_settings.queue_name)
    )
    try:
        yield app
    finally:
        close_app(app)


@dataclass
class AppServer:
    url: str
    app: Flask
    stream_port: int | None = None  # where /twilio/stream is served, if not by the app itself

    @property
    def stream_url(self) -> str:
        """Where a test connects the Media Stream (it signs ``public_url``'s address, as Twilio does)."""
        base = self.url if self.stream_port is None else f"http://127.0.0.1:{self.stream_port}"
        return base.replace("http://", "ws://", 1) + "/twilio/stream"

    @property
    def settings(self) -> Settings:
        return settings_of(self.app)

    @property
    def queue(self) -> Queue:
        return self.app.extensions["painline.queue"]


def serve_app(app: Flask, public_url: str | None) -> Iterator[AppServer]:
    server = make_dev_server("127.0.0.1", 0, app)
    url = f"http://127.0.0.1:{server.server_port}"
    configure(app, settings_of(app).with_(public_url=public_url or url))
    thread = threading.Thread(target=server.serve_forever, name="app-test-server", daemon=True)
    thread.start()
    try:
        yield AppServer(url, app)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture
def app_server(painline_app: Flask) -> Iterator[AppServer]:
    yield from serve_app(painline_app, None)
