"""Fixtures of the painline (composition root, CLI, replay, end-to-end) tests only.

- ``proxied_app_server``: ``app_server``, but the app believes it is ``https://painline.example`` (as
  behind a TLS proxy), so replay must sign the public URL while connecting to the local one.
- ``flag_listener``: subscribed to the deployment's flag channel (``shipped_context``) before anything
  is replayed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask
from redis import Redis

from painline.config import Settings
from schema.contract import flag_channel
from tests.app_fixtures import PROXY_PUBLIC_URL, AppServer, app_redis_url, serve_app
from tests.e2e_fixtures import FlagListener
from worker.context import WorkerContext


@pytest.fixture
def proxied_app_server(painline_app: Flask) -> Iterator[AppServer]:
    yield from serve_app(painline_app, PROXY_PUBLIC_URL)


@pytest.fixture
def flag_listener(shipped_context: WorkerContext, app_settings: Settings) -> Iterator[FlagListener]:
    channel = flag_channel(app_settings.channel_namespace)
    assert shipped_context.flag_channel == channel
    connection = Redis.from_url(app_redis_url())
    listener = FlagListener(connection, channel)
    try:
        yield listener
    finally:
        listener.close()
        connection.close()
