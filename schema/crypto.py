"""Encryption at rest for the columns that hold biometric and health data.

What is encrypted, and why those columns: call audio awaiting scoring (``utterance_audio.mulaw``),
every stored embedding (``scores.embedding``, ``baseline_contributions.embedding``), the per-utterance
voice measures (``scores.features``), each patient's baseline statistics (``baselines.stats``) and the
speaker voiceprint (``voiceprints.vector``). Each of these is either a recording of a person or a
vector derived from one that characterises their voice (a d-vector is a biometric identifier; a
baseline is a person's "normal" in measurable terms). A copy of the database, a backup or a replica
should not hand them out. Ids, timestamps, probabilities, verdicts and flags stay in the clear: the
dashboards filter and sort on them in SQL, and they say nothing about a voice. The population
statistics (``population_stats``) are an average over every caller, not one person's data, and stay
plain JSON.

How. The columns use :class:`EncryptedBytes` / :class:`EncryptedJSON`, SQLAlchemy type decorators
over ``LargeBinary`` that encrypt on the way in and decrypt on the way out, so no query or job
changes. Encryption is Fernet (AES-128-CBC with HMAC-SHA256, from ``cryptography``) through
:class:`~cryptography.fernet.MultiFernet`: the first key encrypts, every key is tried to decrypt, so a
key can be rotated without downtime (add the new key first, re-encrypt with ``painline keys rotate``,
then drop the old one). Every stored value starts with a marker saying how it is stored:

- ``fernet:`` + a Fernet token;
- ``plain:`` + the bytes as they are: written when no key is configured.

Where the key ring comes from. One ring per process, installed once at start-up by the composition
root (:func:`install_key_ring`, called by ``painline.datakeys`` from the app factory, the worker
context and the CLI) from ``PAINLINE_DATA_KEYS``. Module state rather than engine state because a
type decorator only sees the dialect, not the engine or session; every process of a deployment has
exactly one database and one key configuration, so a process-wide ring is the honest model. Tests
that need keys install a ring and restore the previous one.

Without keys. The embedded demo and the tests run without ``PAINLINE_DATA_KEYS``; values are then
written with the ``plain:`` marker and the composition root logs a warning at start-up, so an
unencrypted production deployment is visible in its own logs and in the data (``painline keys
rotate`` encrypts every ``plain:`` value once keys are configured). A value that *is* encrypted is
never returned without the right key: reading it raises :class:`DataKeyError`, which says what to
check, instead of handing out ciphertext or guessing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import LargeBinary
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

log = logging.getLogger(__name__)

ENCRYPTED_MARKER = b"fernet:"
PLAIN_MARKER = b"plain:"
KEYS_VARIABLE = "PAINLINE_DATA_KEYS"


class DataKeyError(RuntimeError):
    """An encrypted value could not be decrypted with the configured keys (or a key is malformed).

    Never carries the value or a key.
    """


class KeyRing:
    """The process's data keys, newest first: the first encrypts, all of them decrypt."""

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if not keys:
            raise DataKeyError(f"{KEYS_VARIABLE}: a key ring needs at least one key")
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key))
            except (ValueError, TypeError):
                raise DataKeyError(
                    f"{KEYS_VARIABLE}: key {position} is not a Fernet key (32 url-safe base64-encoded bytes; "
                    "make one with 'painline keys generate')"
                ) from None
        self.size = len(fernets)
        self._multi = MultiFernet(fernets)

    @classmethod
    def parse(cls, value: str) -> KeyRing | None:
        """A ring from ``PAINLINE_DATA_KEYS`` (comma-separated, newest first), or None if it is empty."""
        keys = [k.strip() for k in value.split(",") if k.strip()]
        return cls(keys) if keys else None

    def encrypt(self, plaintext: bytes) -> bytes:
        return ENCRYPTED_MARKER + self._multi.encrypt(plaintext)

    def decrypt(self, stored: bytes) -> bytes:
        try:
            return self._multi.decrypt(stored[len(ENCRYPTED_MARKER) :])
        except InvalidToken:
            raise DataKeyError(
                f"an encrypted value could not be decrypted with any of the {self.size} key(s) in "
                f"{KEYS_VARIABLE}: was it written with a key that has since been removed, or is this "
                "process configured with another deployment's keys?"
            ) from None

    def rotate(self, stored: bytes) -> bytes:
        """``stored`` re-encrypted under the newest key (``plain:`` values are encrypted for the first time)."""
        if stored.startswith(PLAIN_MARKER):
            return self.encrypt(stored[len(PLAIN_MARKER) :])
        if not stored.startswith(ENCRYPTED_MARKER):
            raise DataKeyError("a stored value has no storage marker; has migration 0002 run?")
        try:
            return ENCRYPTED_MARKER + self._multi.rotate(stored[len(ENCRYPTED_MARKER) :])
        except InvalidToken:
            raise DataKeyError(
                f"an encrypted value could not be re-encrypted: none of the {self.size} key(s) in "
                f"{KEYS_VARIABLE} opens it"
            ) from None


def generate_key() -> str:
    """A new random Fernet key, as text for ``PAINLINE_DATA_KEYS``."""
    return Fernet.generate_key().decode("ascii")


_ring: KeyRing | None = None


def install_key_ring(ring: KeyRing | None) -> KeyRing | None:
    """Make ``ring`` the process's key ring (None: store new values unencrypted); returns the previous one."""
    global _ring
    previous, _ring = _ring, ring
    return previous


def current_key_ring() -> KeyRing | None:
    return _ring


def seal(plaintext: bytes, ring: KeyRing | None = None) -> bytes:
    """How ``plaintext`` is stored: encrypted under the newest key, or marked plain when there is no ring."""
    ring = ring if ring is not None else _ring
    if ring is None:
        return PLAIN_MARKER + plaintext
    return ring.encrypt(plaintext)


def unseal(stored: bytes, ring: KeyRing | None = None) -> bytes:
    """The plaintext of a stored value; raises :class:`DataKeyError` if it cannot be opened."""
    stored = bytes(stored)
    if stored.startswith(PLAIN_MARKER):
        return stored[len(PLAIN_MARKER) :]
    if stored.startswith(ENCRYPTED_MARKER):
        ring = ring if ring is not None else _ring
        if ring is None:
            raise DataKeyError(
                f"this value is encrypted but no data keys are configured: set {KEYS_VARIABLE} to the deployment's keys"
            )
        return ring.decrypt(stored)
    raise DataKeyError("a stored value has no storage marker; has migration 0002 run?")


def is_encrypted(stored: bytes) -> bool:
    return bytes(stored).startswith(ENCRYPTED_MARKER)


class EncryptedBytes(TypeDecorator[bytes]):
    """Bytes stored encrypted (see the module docstring); the database sees ``LargeBinary``."""

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        if not isinstance(value, bytes | bytearray | memoryview):
            raise TypeError(f"expected bytes, got {type(value).__name__}")
        return seal(bytes(value))

    def process_result_value(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return unseal(value)


class EncryptedJSON(TypeDecorator[Any]):
    """A JSON document stored encrypted; the database sees ``LargeBinary``, so it cannot query inside it.

    Only for documents that are read whole in Python (baseline statistics, voice measures).
    """

    impl = LargeBinary
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> bytes | None:
        if value is None:
            return None
        return seal(json.dumps(value, separators=(",", ":"), allow_nan=True).encode("utf-8"))

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        return json.loads(unseal(value))


ENCRYPTED_COLUMNS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("utterance_audio", ("utterance_id",), "mulaw"),
    ("scores", ("id",), "embedding"),
    ("scores", ("id",), "features"),
    ("scores", ("id",), "speaker_vector"),
    ("baselines", ("id",), "stats"),
    ("baseline_contributions", ("id",), "embedding"),
    ("voiceprints", ("id",), "vector"),
)
"""Every encrypted column as (table, primary key columns, column): what key rotation walks.
A test checks this matches the models' encrypted columns."""


def describe(ring: KeyRing | None) -> str:
    """One log line's worth about the ring, never the keys themselves."""
    if ring is None:
        return "no data keys: biometric columns are stored UNENCRYPTED (marked 'plain:')"
    return f"{ring.size} data key(s): biometric columns encrypted with the first"


__all__ = [
    "ENCRYPTED_COLUMNS",
    "ENCRYPTED_MARKER",
    "KEYS_VARIABLE",
    "PLAIN_MARKER",
    "DataKeyError",
    "EncryptedBytes",
    "EncryptedJSON",
    "KeyRing",
    "current_key_ring",
    "describe",
    "generate_key",
    "install_key_ring",
    "is_encrypted",
    "seal",
    "unseal",
]
