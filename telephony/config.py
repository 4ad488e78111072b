"""What the telephony layer needs from the deployment's settings, typed and passed in by the composition root.

``painline.app`` builds a :class:`TelephonyConfig` from ``painline.config.Settings`` and hands it to
:func:`telephony.blueprint.init_app`; the webhooks and the stream socket read it per request with
:func:`config_of`. Nothing here reads the environment or the settings object.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from telephony.session import StreamConfig
from telephony.twiml import NextStep

EXTENSION = "painline.telephony"


@dataclass(frozen=True)
class TelephonyConfig:
    """Twilio's side of a deployment: the URL it calls, its token, the call flow and the stream."""

    public_url: str  # Twilio signs requests for this URL, so signatures are checked against it
    twilio_auth_token: str
    consent_message: str
    stream_token_ttl_s: int
    next_step: NextStep
    stream: StreamConfig

    @property
    def hmac_key(self) -> str:
        return self.stream.hmac_key


def configure(app: Flask, config: TelephonyConfig) -> None:
    """Install (or replace) the telephony config on ``app``."""
    app.extensions[EXTENSION] = config


def config_of(app: Flask | None = None) -> TelephonyConfig:
    """The config of ``app`` (the current app by default)."""
    config = (app or current_app).extensions[EXTENSION]
    assert isinstance(config, TelephonyConfig)
    return config


__all__ = ["EXTENSION", "TelephonyConfig", "config_of", "configure"]
