"""Fixtures of the worker tests only (the shared ones are in ``tests/worker_fixtures.py``).

- ``speaker_embedder``: resemblyzer, or a skip.
- ``worker_ctx``: a :class:`worker.context.WorkerContext` on ``migrated_engine`` (both backends),
  installed for the test and uninstalled after, publishing on a flag channel of its own.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from redis import Redis
from sqlalchemy import Engine

from analysis.embedders import Embedder, EmbedderUnavailable, get_embedder
from analysis.model import PainModel
from schema.db import session_factory
from tests.worker_fixtures import calm
from worker import context


@pytest.fixture(scope="session")
def speaker_embedder() -> Embedder:
    try:
        embedder = get_embedder("speaker")
        embedder.embed([calm()])
    except EmbedderUnavailable as exc:
        pytest.skip(f"speaker embedder unavailable: {exc}")
    return embedder


@pytest.fixture
def worker_ctx(
    migrated_engine: Engine, pain_model: PainModel, egemaps: Embedder, worker_redis: Redis
) -> Iterator[context.WorkerContext]:
    ctx = context.WorkerContext(
        engine=migrated_engine,
        sessions=session_factory(migrated_engine),
        redis=worker_redis,
        model=pain_model,
        embedder=egemaps,
        evidence_embedder=egemaps,
        speaker_embedder=None,
        min_speech_s=3.0,
        flag_channel=f"painline:flags:test-{secrets.token_hex(6)}",
    )
    context.install(ctx)
    try:
        yield ctx
    finally:
        context.uninstall()
