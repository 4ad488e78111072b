"""The Flask application factory: where settings become an engine, a queue and the telephony routes.

Nothing below this module reads the environment. :func:`create_app` takes a
:class:`~painline.config.Settings` (from ``PAINLINE_*`` by default), builds the process-wide
resources once and puts them where the blueprints look for them:

- ``app.extensions["painline.settings"]``: the settings, for the composition root only; each layer
  gets its own typed config instead (:func:`telephony_config`, :func:`dashboard_config`), installed
  by its ``init_app`` and replaced together by :func:`configure`;
- ``app.extensions["painline.engine"]`` / ``["painline.sessions"]``: the SQLAlchemy engine and
  session factory (PostgreSQL connects with a 3 s timeout, so a database outage fails a request
  quickly and the voice webhook can still hand the call back to the hotline);
- ``app.extensions["painline.redis"]`` / ``["painline.queue"]``: a Redis connection with one-second
  timeouts and the ``rq.Queue`` the telephony layer enqueues job ids on;
- ``app.extensions["painline.sock"]``: the flask-sock instance the Media Stream socket is on.

``/healthz`` answers 200 only when the database (at the shipped schema revision) and Redis both
answer; load balancers and ``docker compose`` use it to keep traffic off a process that cannot work.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import replace

from alembic.runtime.migration import MigrationContext
from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from flask_sock import Sock
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.middleware.proxy_fix import ProxyFix

from analysis.segmentation import VadConfig
from dashboard import init_app as init_dashboard
from dashboard.config import DashboardConfig
from dashboard.config import config_of as dashboard_config_of
from dashboard.config import configure as configure_dashboard
from dashboard.sessions import SessionStore
from painline import redis_conn
from painline.config import Settings
from painline.datakeys import install_data_keys
from painline.metrics import install as install_metrics
from painline.metrics import metrics_blueprint
from schema.contract import JobOptions, call_channel, flag_channel
from schema.db import is_sqlite, make_engine, session_factory
from schema.migrate import head_revision
from telephony.blueprint import init_app as init_telephony
from telephony.config import TelephonyConfig
from telephony.config import configure as configure_telephony
from telephony.session import StreamConfig
from telephony.twiml import NextStep

log = logging.getLogger(__name__)

PG_CONNECT_TIMEOUT_S = 3
SETTINGS = "painline.settings"


def make_app_engine(settings: Settings) -> Engine:
    """The web process's engine: painline's defaults plus a short connect timeout on PostgreSQL.

    Installs the data key ring first (:mod:`painline.datakeys`): every process that reads or writes
    the encrypted columns gets its engine here or from the worker context, which does the same.
    """
    install_data_keys(settings)
    url = settings.resolved_database_url
    if is_sqlite(url):
        return make_engine(url)
    return make_engine(url, connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S})


def create_app(settings: Settings | None = None) -> Flask:
    """Build the painline web application (see the module docstring for what it holds)."""
    settings = settings or Settings.from_env()
    app = Flask("painline")
    if settings.secret_key:
        app.secret_key = settings.secret_key
    else:
        # fine for the demo and tests; in production sessions would not survive a restart or be
        # shared between gunicorn workers, hence the warning
        log.warning("PAINLINE_SECRET_KEY is not set: using a random key for this process")
        app.secret_key = secrets.token_hex(32)
    app.extensions[SETTINGS] = settings
    # enrolment uploads are the largest requests; refuse anything bigger before parsing it
    app.config["MAX_CONTENT_LENGTH"] = 32 * 1024 * 1024

    engine = make_app_engine(settings)
    app.extensions["painline.engine"] = engine
    app.extensions["painline.sessions"] = session_factory(engine)

    connection = redis_conn.connect(settings)
    app.extensions["painline.redis"] = connection
    app.extensions["painline.queue"] = Queue(settings.queue_name, connection=connection)

    if settings.trusted_proxies:
        # the client's address (sign-in limits, logs) is the one the nearest trusted proxy saw; only
        # X-Forwarded-For is taken, so a client cannot change the scheme or host painline believes in
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app,
            x_for=settings.trusted_proxies,
            x_proto=0,
            x_host=0,
            x_port=0,
            x_prefix=0,
        )

    sock = Sock(app)
    app.extensions["painline.sock"] = sock
    init_telephony(app, sock, telephony_config(settings))
    app.register_blueprint(health_blueprint())
    install_metrics(app.extensions["painline.queue"])
    app.register_blueprint(metrics_blueprint())
    init_dashboard(app, dashboard_config(settings))
    return app


def telephony_config(settings: Settings) -> TelephonyConfig:
    """The telephony layer's part of ``settings``."""
    return TelephonyConfig(
        public_url=settings.public_url,
        twilio_auth_token=settings.twilio_auth_token,
        consent_message=settings.consent_message,
        stream_token_ttl_s=settings.stream_token_ttl_s,
        next_step=NextStep(
            redirect_url=settings.next_redirect_url, dial=settings.next_dial, enqueue=settings.next_enqueue
        ),
        stream=StreamConfig(
            hmac_key=settings.hmac_key,
            vad=VadConfig(aggressiveness=settings.vad_aggressiveness),
            jobs=job_options(settings),
            call_channel=call_channel(settings.channel_namespace),
        ),
    )


def job_options(settings: Settings) -> JobOptions:
    """Retry and retention of the jobs web processes (telephony and dashboard alike) and the sweep enqueue."""
    return JobOptions(retries=settings.job_retries, failure_ttl_s=settings.failure_ttl_s)


def dashboard_config(settings: Settings) -> DashboardConfig:
    """The web UI's part of ``settings``."""
    return DashboardConfig(
        flag_channel=flag_channel(settings.channel_namespace),
        call_channel=call_channel(settings.channel_namespace),
        jobs=job_options(settings),
        model_path=settings.model_path,
        flag_threshold=settings.flag_threshold_override,
        secure_cookies=settings.public_url.lower().startswith("https://"),
        key_namespace=settings.channel_namespace,
        idle_timeout_s=settings.idle_timeout_s,
        login_limit=settings.login_limit,
        login_address_limit=settings.login_address_limit,
        login_user_limit=settings.login_user_limit,
        login_window_s=settings.login_window_s,
        stream_connect_s=float(settings.stream_connect_s),
        display_timezone=settings.display_timezone,
    )


def session_store(settings: Settings, connection: Redis) -> SessionStore:
    """The deployment's web sessions, for processes other than the web app (``painline users`` ends an
    account's sessions on a password change or deactivation). Same namespace as :func:`dashboard_config`."""
    return SessionStore(connection, settings.channel_namespace, settings.idle_timeout_s)


def settings_of(app: Flask) -> Settings:
    """The settings ``app`` was built with (or last reconfigured with)."""
    settings = app.extensions[SETTINGS]
    assert isinstance(settings, Settings)
    return settings


def configure(app: Flask, settings: Settings) -> None:
    """Apply changed settings to a built app: the demo learns its port only after binding, and tests
    point an app at their own server. Engine and Redis are not rebuilt; the per-request configs are.
    Test-only dashboard overrides (flag channel, Redis key namespace) are kept."""
    app.extensions[SETTINGS] = settings
    configure_telephony(app, telephony_config(settings))
    old = dashboard_config_of(app)
    configure_dashboard(
        app,
        replace(
            dashboard_config(settings),
            flag_channel=old.flag_channel,
            call_channel=old.call_channel,
            key_namespace=old.key_namespace,
            login_throttle_prefix=old.login_throttle_prefix,
            sse_heartbeat_s=old.sse_heartbeat_s,
            sse_max_stream_s=old.sse_max_stream_s,
        ),
    )


def begin_shutdown(app: Flask) -> None:
    """The server is stopping: end the dashboard's open event streams now (within a second).

    Called from gunicorn's SIGTERM (``painline.gunicorn_conf``) and the development server's stop.
    Media Streams are not touched: a call in progress keeps its socket for the graceful timeout.
    """
    from dashboard.live import begin_shutdown as end_event_streams

    end_event_streams(app)


def close_app(app: Flask) -> None:
    """Release the app's database pool and Redis connections (tests, the demo, a clean shutdown)."""
    engine: Engine | None = app.extensions.get("painline.engine")
    if engine is not None:
        engine.dispose()
    connection = app.extensions.get("painline.redis")
    if connection is not None:
        connection.close()


# ---------------------------------------------------------------------------------------------------
# health


def check_database(engine: Engine, expected_revision: str | None) -> str:
    """``"ok"``, ``"not migrated"`` (reachable but not at the shipped head) or ``"unavailable"``."""
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            revision = MigrationContext.configure(connection).get_current_revision()
    except SQLAlchemyError as exc:
        log.warning("health: database unavailable (%s)", type(exc).__name__)
        return "unavailable"
    if expected_revision is not None and revision != expected_revision:
        return "not migrated"
    return "ok"


def check_redis(connection: Redis) -> str:
    try:
        connection.ping()
    except (RedisError, OSError) as exc:
        log.warning("health: Redis unavailable (%s)", type(exc).__name__)
        return "unavailable"
    return "ok"


def health_report(engine: Engine, connection: Redis, expected_revision: str | None) -> tuple[bool, dict[str, object]]:
    """Whether this process can work, and the JSON body ``/healthz`` answers (web and stream alike)."""
    started = time.monotonic()
    checks = {
        "database": check_database(engine, expected_revision),
        "redis": check_redis(connection),
    }
    healthy = all(state == "ok" for state in checks.values())
    body: dict[str, object] = {
        "status": "ok" if healthy else "unavailable",
        "checks": checks,
        "elapsed_ms": round((time.monotonic() - started) * 1000),
    }
    return healthy, body


def health_blueprint() -> Blueprint:
    """``GET /healthz``: JSON with each dependency's state; 200 if all are ``ok``, else 503."""
    bp = Blueprint("health", __name__)
    expected = head_revision()

    @bp.get("/healthz")
    def healthz() -> ResponseReturnValue:
        healthy, body = health_report(
            current_app.extensions["painline.engine"], current_app.extensions["painline.redis"], expected
        )
        response = jsonify(body)
        response.status_code = 200 if healthy else 503
        response.headers["Cache-Control"] = "no-store"
        return response

    return bp


__all__ = [
    "PG_CONNECT_TIMEOUT_S",
    "SETTINGS",
    "check_database",
    "check_redis",
    "close_app",
    "configure",
    "create_app",
    "dashboard_config",
    "health_blueprint",
    "health_report",
    "job_options",
    "make_app_engine",
    "session_store",
    "settings_of",
    "telephony_config",
]
