"""The environment an operator's shell has on a deployment, for tests that run ``painline`` commands in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from painline.config import Settings
from tests.app_fixtures import AUTH_TOKEN

SETTINGS_ENV = [
    "PAINLINE_DATABASE_URL",
    "PAINLINE_REDIS_URL",
    "PAINLINE_VAR_DIR",
    "PAINLINE_PUBLIC_URL",
    "PAINLINE_QUEUE_NAME",
    "PAINLINE_MODEL_PATH",
    "PAINLINE_HMAC_KEY",
    "TWILIO_AUTH_TOKEN",
    "PAINLINE_FLAG_THRESHOLD",
]


def clear_settings_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every variable ``Settings.from_env`` reads, whatever the shell running the tests has."""
    for name in SETTINGS_ENV:
        monkeypatch.delenv(name, raising=False)


def point_env_at(monkeypatch: pytest.MonkeyPatch, settings: Settings, model_path: Path) -> None:
    """Set the variables a deployed process has so they name ``settings``' services and ``model_path``."""
    monkeypatch.setenv("PAINLINE_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("PAINLINE_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("PAINLINE_VAR_DIR", str(settings.var_dir))
    monkeypatch.setenv("PAINLINE_QUEUE_NAME", settings.queue_name)
    monkeypatch.setenv("PAINLINE_HMAC_KEY", settings.hmac_key)
    monkeypatch.setenv("PAINLINE_MODEL_PATH", str(model_path))
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", AUTH_TOKEN)
