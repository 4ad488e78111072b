"""What the dashboard needs from the deployment's settings, typed and passed in by the composition root.

``painline.app`` builds a :class:`DashboardConfig` from ``painline.config.Settings`` and hands it to
:func:`dashboard.init_app`; nothing in the dashboard reads the environment or the settings object.
Tests replace it with :func:`configure` (their own flag channel, a short heartbeat). The names the
dashboard shares with the workers (job names and ids, the flag channel's form, Redis keys) and the
one way to enqueue live in :mod:`schema.contract`; the deployment's values of them arrive here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, current_app

from schema.contract import JobOptions

EXTENSION = "painline.dashboard"


@dataclass(frozen=True)
class DashboardConfig:
    """The settings the web UI reads per request.

    ``flag_channel`` (and ``call_channel``) has no default: a dashboard listening on another deployment's channel shows
    nurses flags for calls that do not exist here, so the composition root must name it
    (``schema.contract.flag_channel(settings.channel_namespace)``). ``key_namespace`` has none for the
    same reason: a shared default would let two deployments on one Redis honour each other's sessions
    (``settings.channel_namespace`` again; tests give each app one of its own). ``jobs`` is the
    deployment's retry policy, the same the telephony layer enqueues with.
    """

    flag_channel: str
    key_namespace: str  # names the Redis keys of sessions and sign-in counters (schema.contract)
    # the telephony layer's stream start/end announcements (schema.contract.call_channel); no default
    # for the same reason as flag_channel
    call_channel: str
    jobs: JobOptions = field(default_factory=JobOptions)
    model_path: Path | None = None  # the model card beside it gives the flag threshold
    flag_threshold: float | None = None  # the deployment's override of the card's threshold
    secure_cookies: bool = False  # behind https: session cookies only over TLS
    idle_timeout_s: int = 30 * 60  # background refreshes do not count as activity
    login_limit: int = 5  # attempts per (username, address) and window
    login_address_limit: int = 20  # failures per address and window, all usernames
    login_user_limit: int = 50  # failures per username and window, all addresses
    login_window_s: int = 5 * 60
    # Deprecated and unused since the sign-in counters moved under ``key_namespace``; kept only because
    # tests/painline/test_privacy_leaks.py still passes it. Remove with that fixture's argument.
    login_throttle_prefix: str = ""
    sse_heartbeat_s: float = 15.0
    sse_max_stream_s: float = 300.0
    # a call still "streaming" whose Media Stream never started this long after the webhook is not
    # live (Twilio never connected, or the caller hung up during the consent notice)
    stream_connect_s: float = 60.0
    display_timezone: str = "UTC"  # IANA name; every time on every page is shown in it (formatting.clock)


def configure(app: Flask, config: DashboardConfig) -> None:
    """Install (or replace) the dashboard's config on ``app``."""
    app.extensions[EXTENSION] = config
    app.config["SESSION_COOKIE_SECURE"] = config.secure_cookies


def config_of(app: Flask | None = None) -> DashboardConfig:
    """The config of ``app`` (the current app by default)."""
    config = (app or current_app).extensions[EXTENSION]
    assert isinstance(config, DashboardConfig)
    return config


__all__ = ["EXTENSION", "DashboardConfig", "config_of", "configure"]
