"""The security primitives behind sign-in, kept free of Flask so they can be tested and reused alone.

- passwords are hashed with werkzeug's default (scrypt) and compared in constant time; a sign-in for an
  unknown username still spends one hash comparison, so response time does not reveal which
  usernames exist;
- API tokens are random, shown once, and stored only as their SHA-256 (a token is 256 random bits, so
  a fast hash is enough: there is nothing to brute-force, unlike a password);
- (the sign-in limiter, which needs Redis, is :mod:`dashboard.limiter`; sessions are :mod:`dashboard.sessions`);
- ``safe_next_url`` stops the ``?next=`` parameter of the login page from becoming an open redirect.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from functools import lru_cache
from urllib.parse import urlsplit

from werkzeug.security import check_password_hash, generate_password_hash

MIN_PASSWORD_LENGTH = 12
"""Shorter passwords are refused when an account is created (NIST SP 800-63B asks for at least 8)."""

API_TOKEN_PREFIX = "pl_"
"""Makes a leaked token recognisable in logs and by secret scanners."""


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    """A real hash of a random password, so a sign-in for an unknown user costs the same as a wrong one.

    Made on first use rather than at import, so importing this module (the CLI does) costs nothing.
    """
    return generate_password_hash(secrets.token_urlsafe(16))


def hash_password(password: str) -> str:
    """The werkzeug hash (scrypt with a random salt) that ``User.password_hash`` stores."""
    return generate_password_hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches; ``None`` (no such user) still spends one comparison, then fails."""
    if password_hash is None:
        check_password_hash(_dummy_hash(), password)
        return False
    return check_password_hash(password_hash, password)


def new_api_token() -> str:
    """A fresh bearer token (shown to its owner once; only :func:`hash_api_token` of it is stored)."""
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_api_token(token: str) -> str:
    """The hex SHA-256 stored in ``ApiToken.token_hash`` and looked up on every API request."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison that is false when either side is missing."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def safe_next_url(target: str | None, default: str) -> str:
    """``target`` if it is a path on this site (``/calls/3``), else ``default``.

    Refuses absolute URLs, scheme-relative ``//host`` and backslash tricks that browsers read as
    ``//host``, so a crafted login link cannot send a nurse to another site after sign-in.
    """
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    return target


__all__ = [
    "API_TOKEN_PREFIX",
    "MIN_PASSWORD_LENGTH",
    "hash_api_token",
    "hash_password",
    "new_api_token",
    "new_csrf_token",
    "safe_next_url",
    "tokens_match",
    "verify_password",
]
