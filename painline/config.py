"""Configuration, read once from the environment: every setting painline has, typed, in one place.

Everything a deployment changes lives here, under ``PAINLINE_*`` (and Twilio's own
``TWILIO_AUTH_TOKEN``). Defaults are the embedded set-up: SQLite in ``./var`` and an embedded
Redis, so ``painline demo`` needs no services. Other packages never read the environment
themselves: the composition root (``painline.app``, ``painline.workers``, ``painline.cli``) builds
each layer's own typed config from these settings and passes it down, so tests can build settings
explicitly. ``docs/configuration.md`` is generated from this class (``python -m painline.config``)
and a test fails when the two differ.

:func:`production_problems` is what ``painline check`` reports, and what ``painline serve``,
``painline stream`` and ``painline worker`` refuse to start with when they are run for a deployment.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}
_PACKAGE_DIR = Path(__file__).resolve().parent


def _doc(text: str, **extra: object) -> dict[str, object]:
    """Field metadata: what the setting means (rendered into docs/configuration.md)."""
    return {"doc": text, **extra}


@dataclass(frozen=True)
class Settings:
    """All runtime settings. Build with :meth:`from_env`; override with :meth:`with_`."""

    # -- storage and services ---------------------------------------------------------------------
    var_dir: Path = field(
        default=Path("var"),
        metadata=_doc(
            "Folder for the embedded SQLite database and the embedded Redis (used when the URLs below are empty)."
        ),
    )
    database_url: str = field(
        default="",
        metadata=_doc(
            "SQLAlchemy URL of the database (`postgresql+psycopg://...` in production). Empty: SQLite under "
            "`PAINLINE_VAR_DIR`.",
            production=True,
        ),
    )
    redis_url: str = field(
        default="",
        metadata=_doc(
            "URL of the Redis server that carries the job queue and the flag channel. Empty: an embedded "
            "redis-server under `PAINLINE_VAR_DIR`, started by the first painline process and stopped with the "
            "last.",
            production=True,
        ),
    )
    queue_name: str = field(
        default="painline", metadata=_doc("Name of the RQ queue the web and worker processes share.")
    )
    deployment_name: str = field(
        default="",
        metadata=_doc(
            "Names this deployment's Redis pub/sub channels (`painline:<name>:flags`), which every database of a "
            "Redis server shares. Letters, digits, `.`, `_` and `-`. Empty: derived from the Redis database number "
            "and the database URL, so processes with the same `PAINLINE_REDIS_URL` and `PAINLINE_DATABASE_URL` "
            "agree; set it when they reach the same servers by different URLs."
        ),
    )
    # -- Twilio and the call flow ------------------------------------------------------------------
    public_url: str = field(
        default="http://localhost:8000",
        metadata=_doc(
            "The https URL Twilio is configured with; Twilio's request signatures are checked against it.",
            production=True,
        ),
    )
    twilio_auth_token: str = field(
        default="",
        metadata=_doc(
            "The Twilio account's auth token, which verifies X-Twilio-Signature.", production=True, secret=True
        ),
    )
    next_redirect_url: str = field(
        default="", metadata=_doc("The hotline's own TwiML URL, `<Redirect>`ed to once the stream has started.")
    )
    next_dial: str = field(default="", metadata=_doc("A number to `<Dial>` once the stream has started."))
    next_enqueue: str = field(
        default="", metadata=_doc("A Twilio queue to `<Enqueue>` the caller in once the stream has started.")
    )
    consent_message: str = field(
        default=("This call may be analysed by an automated system to help our nurses prioritise callers."),
        metadata=_doc("What the caller hears before any audio is analysed."),
    )
    stream_token_ttl_s: int = field(
        default=120,
        metadata=_doc("Seconds a single-use stream token stays valid between the webhook and the stream's start."),
    )
    vad_aggressiveness: int = field(
        default=2, metadata=_doc("webrtcvad aggressiveness (0-3) used to cut the caller's speech into utterances.")
    )
    # -- secrets -----------------------------------------------------------------------------------
    hmac_key: str = field(
        default="",
        metadata=_doc(
            "Long random secret that keys caller numbers and signs stream tokens; never change it once calls are "
            "stored.",
            production=True,
            secret=True,
        ),
    )
    secret_key: str = field(
        default="",
        metadata=_doc(
            "Long random secret signing the web UI's sessions; every web process must share it.",
            production=True,
            secret=True,
        ),
    )
    data_keys: str = field(
        default="",
        metadata=_doc(
            "Fernet keys, comma-separated, newest first, encrypting audio, embeddings and baselines at rest "
            "(`painline keys generate`). Empty stores them unencrypted: the demo and tests only.",
            production=True,
            secret=True,
        ),
    )
    # -- the model and scoring ---------------------------------------------------------------------
    model_path: Path = field(
        default=_PACKAGE_DIR / "models" / "default.joblib",
        metadata=_doc(
            "The trained model artifact (`.joblib`, with its `.card.json` beside it).", default_text="the bundled model"
        ),
    )
    embedder: str = field(default="", metadata=_doc("Embedder to score with. Empty: the one the model card names."))
    hear_path: Path = field(
        default=Path(""), metadata=_doc("A local Google HeAR SavedModel folder, for the `hear` embedder.")
    )
    flag_threshold: float = field(
        default=0.0, metadata=_doc("Call probability at which a call is flagged. 0: the model card's threshold.")
    )
    min_speech_s: float = field(
        default=3.0, metadata=_doc("Seconds of scored speech below which a call's verdict is inconclusive.")
    )
    flag_webhook_url: str = field(default="", metadata=_doc("The hotline's URL told about every flag (signed POST)."))
    flag_webhook_secret: str = field(default="", metadata=_doc("Secret signing the flag webhook.", secret=True))
    # -- jobs --------------------------------------------------------------------------------------
    job_retries: int = field(default=5, metadata=_doc("Retries of a failed job before it waits for `painline sweep`."))
    failure_ttl_s: int = field(default=24 * 3600, metadata=_doc("Seconds RQ keeps a failed job for inspection."))
    # -- the web UI --------------------------------------------------------------------------------
    idle_timeout_s: int = field(
        default=30 * 60,
        metadata=_doc("Seconds without a page load (background refreshes excluded) after which a nurse is signed out."),
    )
    login_limit: int = field(
        default=5,
        metadata=_doc(
            "Sign-in attempts allowed for one username from one client address per window; a successful one is "
            "not counted. Beyond it that pair waits for the window to end (429 with Retry-After)."
        ),
    )
    login_address_limit: int = field(
        default=20,
        metadata=_doc(
            "Failed sign-ins allowed from one client address per window, whatever the username (password spraying)."
        ),
    )
    login_user_limit: int = field(
        default=50,
        metadata=_doc(
            "Failed sign-ins allowed for one username per window, from all addresses together (distributed "
            "guessing). Beyond it the account signs in only from addresses it has signed in from before."
        ),
    )
    login_window_s: int = field(default=5 * 60, metadata=_doc("The window of the sign-in limits, in seconds."))
    trusted_proxies: int = field(
        default=0,
        metadata=_doc(
            "Reverse proxies in front of the web processes whose `X-Forwarded-For` entries are trusted (as "
            "werkzeug's ProxyFix `x_for`). 0: the socket's address is the client's. Behind one proxy set 1, or "
            "every client shares the proxy's address for the sign-in limits."
        ),
    )
    display_timezone: str = field(
        default="UTC",
        metadata=_doc(
            "IANA time zone the web UI shows every time in (`Europe/London`), so a nurse reads one zone "
            'everywhere; relative times ("raised 3 min ago") need none.'
        ),
    )
    stream_connect_s: int = field(
        default=60,
        metadata=_doc(
            "Seconds after the voice webhook within which a call's Media Stream must start for the triage queue "
            "to show it as live; a call whose stream never connected is not shown as in progress after that."
        ),
    )
    # -- retention ---------------------------------------------------------------------------------
    audio_retention_hours: float = field(
        default=24.0, metadata=_doc("Unscored audio older than this is deleted by `painline retention`.")
    )
    score_retention_days: float = field(
        default=365.0,
        metadata=_doc(
            "Scores and utterances of calls older than this are deleted (flags and the audit trail are kept)."
        ),
    )
    # -- research and operations -------------------------------------------------------------------
    data_dir: Path = field(
        default=Path("../shared/data"),
        metadata=_doc("Corpora for `painline train` and `painline evaluate` (a `manifest.csv` per corpus)."),
    )
    cache_dir: Path = field(default=Path(".cache"), metadata=_doc("Feature cache for train and evaluate."))
    log_level: str = field(default="INFO", metadata=_doc("Log level of every painline process."))

    @classmethod
    def from_env(cls, environ: typing.Mapping[str, str] | None = None) -> Settings:
        """Read ``PAINLINE_<FIELD>`` for every field (``TWILIO_AUTH_TOKEN`` for the token).

        A value that does not parse as its field's type raises :class:`SettingsError` naming the variable.
        """
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = environ.get(env_name(f.name))
            if raw is None:
                continue
            values[f.name] = _coerce(env_name(f.name), raw, field_type(f.name))
        return cls(**values)  # type: ignore[arg-type]

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.var_dir / 'painline.sqlite').resolve()}"

    @property
    def channel_namespace(self) -> str:
        """The deployment's namespace for Redis pub/sub channels (``schema.contract.flag_channel``).

        Pub/sub ignores the Redis database number, so a second painline on the same Redis server (in
        another database) used to feed this one's nurses flags for calls that do not exist here. A
        required explicit name would fix that only where someone remembered to set it, and a shared
        default would bring the bug back silently; so the default is derived from what makes two
        processes one deployment anyway: the same Redis database (their queue) and the same database
        (their flags). Flags from the same database are real flags here, whichever Redis carried them,
        and vice versa. The database URL is hashed without its password (the name is visible to every
        Redis client through ``PUBSUB CHANNELS``), and truncated: a name, not a secret.
        """
        if self.deployment_name:
            return self.deployment_name
        return f"{_redis_db_label(self.redis_url)}-{_database_digest(self.resolved_database_url)}"

    @property
    def uses_embedded_redis(self) -> bool:
        return not self.redis_url

    @property
    def flag_threshold_override(self) -> float | None:
        """The configured threshold, or None to use the model card's."""
        return self.flag_threshold if self.flag_threshold > 0 else None


_NAMESPACE = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _redis_db_label(redis_url: str) -> str:
    """``db<n>`` for a Redis URL (``/n`` or ``?db=n``, default 0); ``embedded`` for the embedded server."""
    if not redis_url:
        return "embedded"
    url = urlsplit(redis_url)
    db = parse_qs(url.query).get("db", [""])[0] or url.path.strip("/") or "0"
    return f"db{db}"


def _database_digest(database_url: str) -> str:
    """12 hex digits of SHA-256 over the database URL without its password (driver and query ignored)."""
    url = urlsplit(database_url)
    scheme = url.scheme.split("+", 1)[0]
    host = (url.hostname or "").lower()
    port = f":{url.port}" if url.port else ""
    user = f"{url.username}@" if url.username else ""
    identity = f"{scheme}://{user}{host}{port}{url.path}"
    return hashlib.sha256(identity.encode()).hexdigest()[:12]


class SettingsError(ValueError):
    """An environment variable holds a value its setting cannot take."""


def env_name(field_name: str) -> str:
    """The environment variable of a :class:`Settings` field."""
    return "TWILIO_AUTH_TOKEN" if field_name == "twilio_auth_token" else f"PAINLINE_{field_name.upper()}"


def env_names() -> list[str]:
    """Every environment variable painline reads, in :class:`Settings` order."""
    return [env_name(f.name) for f in fields(Settings)]


def field_type(field_name: str) -> type:
    hints = typing.get_type_hints(Settings)
    kind = hints[field_name]
    if isinstance(kind, types.UnionType):  # pragma: no cover - no optional fields today
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    return typing.cast(type, kind)


def _coerce(name: str, raw: str, kind: type) -> object:
    try:
        if kind is Path:
            return Path(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is bool:
            value = raw.strip().lower()
            if value in _TRUE:
                return True
            if value in _FALSE:
                return False
            raise ValueError(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    return raw


# ---------------------------------------------------------------------------------------------------
# production checks

SECRET_KEY_HINT = "make one with: python -c 'import secrets; print(secrets.token_hex(32))'"


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`production_problems`. ``fatal``: the processes would run broken, so
    ``painline serve`` and ``painline worker`` refuse to start; otherwise only a deployment is wrong
    (a laptop or the demo runs fine) and start-up logs it as a warning."""

    message: str
    fatal: bool = False


def production_problems(settings: Settings, *, web_processes: int = 1) -> list[Problem]:
    """Every missing or contradictory setting for serving real calls, one sentence each.

    Empty means the settings are fit for production. ``web_processes`` is the number of web processes
    that will share sessions (``painline serve --gunicorn --workers N``).
    """
    problems: list[Problem] = []

    def warn(message: str) -> None:
        problems.append(Problem(message))

    def refuse(message: str) -> None:
        problems.append(Problem(message, fatal=True))

    url = urlsplit(settings.public_url)
    if url.scheme != "https" or not url.hostname:
        warn(f"PAINLINE_PUBLIC_URL must be the https URL Twilio calls (is {settings.public_url!r})")
    elif url.hostname in {"localhost", "127.0.0.1", "::1"}:
        warn("PAINLINE_PUBLIC_URL points at this machine; Twilio cannot reach it")
    if not settings.twilio_auth_token:
        warn("TWILIO_AUTH_TOKEN is not set: every Twilio request would be refused as unsigned")
    if not settings.hmac_key:
        warn("PAINLINE_HMAC_KEY is not set: caller numbers cannot be keyed; " + SECRET_KEY_HINT)
    if not settings.secret_key:
        message = "PAINLINE_SECRET_KEY is not set: sign-ins would not survive a restart"
        if web_processes > 1:
            refuse(
                f"{message} or be shared between the {web_processes} web processes (sign-ins fail at random); "
                + SECRET_KEY_HINT
            )
        else:
            warn(f"{message}; {SECRET_KEY_HINT}")
    if not settings.data_keys:
        warn(
            "PAINLINE_DATA_KEYS is not set: voice data would be stored unencrypted; "
            "make one with: painline keys generate"
        )
    if not settings.database_url:
        warn("PAINLINE_DATABASE_URL is not set: the embedded SQLite database is for the demo only")
    elif settings.database_url.startswith("sqlite"):
        warn("PAINLINE_DATABASE_URL is SQLite: use PostgreSQL for a deployment")
    if not settings.redis_url:
        warn("PAINLINE_REDIS_URL is not set: the embedded Redis is for the demo only")
    if sum(bool(x) for x in (settings.next_redirect_url, settings.next_dial, settings.next_enqueue)) > 1:
        refuse("set only one of PAINLINE_NEXT_REDIRECT_URL, PAINLINE_NEXT_DIAL and PAINLINE_NEXT_ENQUEUE")
    if settings.next_redirect_url and urlsplit(settings.next_redirect_url).scheme not in {"http", "https"}:
        refuse("PAINLINE_NEXT_REDIRECT_URL must be an http(s) URL")
    if settings.flag_webhook_url and not settings.flag_webhook_secret:
        refuse(
            "PAINLINE_FLAG_WEBHOOK_URL is set without PAINLINE_FLAG_WEBHOOK_SECRET: the hotline could not "
            "tell painline's flags from forged ones"
        )
    if not settings.model_path.exists():
        warn(f"PAINLINE_MODEL_PATH: no model at {settings.model_path}; workers cannot start")
    if settings.deployment_name and not _NAMESPACE.fullmatch(settings.deployment_name):
        refuse("PAINLINE_DEPLOYMENT_NAME may hold only letters, digits, '.', '_' and '-' (at most 64)")
    if settings.trusted_proxies < 0:
        refuse("PAINLINE_TRUSTED_PROXIES must be 0 or more")
    if min(settings.login_limit, settings.login_address_limit, settings.login_user_limit) < 1:
        refuse("PAINLINE_LOGIN_LIMIT, PAINLINE_LOGIN_ADDRESS_LIMIT and PAINLINE_LOGIN_USER_LIMIT must be 1 or more")
    if not 0 <= settings.vad_aggressiveness <= 3:
        refuse("PAINLINE_VAD_AGGRESSIVENESS must be 0, 1, 2 or 3")
    if not 0 <= settings.flag_threshold < 1:
        refuse("PAINLINE_FLAG_THRESHOLD must be in [0, 1) (0: the model card's)")
    if not _known_timezone(settings.display_timezone):
        refuse(f"PAINLINE_DISPLAY_TIMEZONE: {settings.display_timezone!r} is not an IANA time zone")
    if settings.stream_connect_s < 1:
        refuse("PAINLINE_STREAM_CONNECT_S must be 1 or more")
    return problems


def _known_timezone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


# ---------------------------------------------------------------------------------------------------
# docs/configuration.md

_SECTIONS = (
    ("Storage and services", "var_dir"),
    ("Twilio and the call flow", "public_url"),
    ("Secrets", "hmac_key"),
    ("The model and scoring", "model_path"),
    ("Jobs", "job_retries"),
    ("The web UI", "idle_timeout_s"),
    ("Retention", "audio_retention_hours"),
    ("Research and operations", "data_dir"),
)


def _default_text(f: typing.Any) -> str:
    if "default_text" in f.metadata:
        return str(f.metadata["default_text"])
    value = f.default
    if value == "" or value == Path(""):
        return "(empty)"
    return f"`{value}`"


def configuration_markdown() -> str:
    """``docs/configuration.md``: every setting with its variable, type, default and meaning."""
    starts = {start: title for title, start in _SECTIONS}
    lines = [
        "# Configuration",
        "",
        "Every setting painline reads, from the environment of each process (web, stream, worker, sweep,",
        "retention). Generated from `painline.config.Settings` by `python -m painline.config >",
        "docs/configuration.md`; a test fails when this page and the code differ. **Required in production**",
        "marks what `painline check` reports when it is missing. `painline serve`, `painline stream` and",
        "`painline worker` run the same check at start-up: they log each finding, and refuse to start on",
        "those that would leave them running broken (no `PAINLINE_SECRET_KEY` with more than one web",
        "process, contradictory call-flow settings, a missing model, values out of range).",
        "",
    ]
    for f in fields(Settings):
        if f.name in starts:
            if lines[-1]:
                lines.append("")
            lines += [f"## {starts[f.name]}", "", "| variable | type | default | meaning |", "|---|---|---|---|"]
        meaning = str(f.metadata["doc"])
        if f.metadata.get("production"):
            meaning = "**Required in production.** " + meaning
        if f.metadata.get("secret"):
            meaning += " Secret: never logged."
        lines.append(f"| `{env_name(f.name)}` | {field_type(f.name).__name__} | {_default_text(f)} | {meaning} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(configuration_markdown())
