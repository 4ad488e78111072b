"""What the dashboard needs from the deployment's settings, typed and passed in by the composition root.

``painline.app`` builds a :class:`DashboardConfig` from ``painline.config.Settings`` and hands it to
:func:`dashboard.init_app`; nothing in the dashboard reads the environment or the settings object.
Tests replace it with :func:`configure` (their own flag channel, a short heartbeat).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app

EXTENSION = "painline.dashboard"
FLAG_CHANNEL = "painline:flags"
"""Same value as ``worker.flags.FLAG_CHANNEL`` (the dashboard may not import ``worker``)."""


@dataclass(frozen=True)
class DashboardConfig:
    """The settings the web UI reads per request."""

    model_path: Path | None = None  # the model card beside it gives the flag threshold
    flag_threshold: float | None = None  # the deployment's override of the card's threshold
    secure_cookies: bool = False  # behind https: session cookies only over TLS
    idle_timeout_s: int = 30 * 60
    login_limit: int = 5
    login_window_s: int = 5 * 60
    login_throttle_prefix: str = "painline:login-failures:"  # Redis key prefix of the sign-in limiter
    flag_channel: str = FLAG_CHANNEL
    sse_heartbeat_s: float = 15.0
    sse_max_stream_s: float = 300.0


def configure(app: Flask, config: DashboardConfig) -> None:
    """Install (or replace) the dashboard's config on ``app``."""
    app.extensions[EXTENSION] = config
    app.config["SESSION_COOKIE_SECURE"] = config.secure_cookies


def config_of(app: Flask | None = None) -> DashboardConfig:
    """The config of ``app`` (the current app by default)."""
    config = (app or current_app).extensions[EXTENSION]
    assert isinstance(config, DashboardConfig)
    return config


__all__ = ["EXTENSION", "FLAG_CHANNEL", "DashboardConfig", "config_of", "configure"]
