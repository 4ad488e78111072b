"""Single-use, expiring tokens that tie a Media Stream WebSocket to the call whose webhook issued it.

The WebSocket handshake signature proves a connection comes from Twilio, but not which call it
belongs to or that it is not a replay of an earlier stream. The voice webhook therefore issues a
token bound to the CallSid, passes it to Twilio as a ``<Parameter>``, and the socket accepts the
stream only if the token's MAC checks out for the ``start`` message's CallSid, it has not expired,
and the database agrees it has not been used (the conditional UPDATE below is the single-use lock,
so two sockets racing with one token cannot both win).

Token format: ``v1.<nonce>.<expiry unix seconds>.<base64url HMAC-SHA256>``; the CallSid is covered
by the MAC but not carried, so the token reveals nothing about the call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from schema.models import StreamToken

_VERSION = "v1"
_TOKEN = re.compile(r"v1\.([A-Za-z0-9_-]{16,64})\.([0-9]{1,12})\.([A-Za-z0-9_-]{43})")
_DOMAIN = b"painline stream token v1"


class TokenError(ValueError):
    """The token is malformed, forged, bound to another call, expired or already used."""


@dataclass(frozen=True)
class IssuedToken:
    token: str
    nonce: str
    call_sid: str
    expires_at: datetime


def _subkey(key: str | bytes) -> bytes:
    """Derive a key used only for stream tokens, so the caller-number key is never used raw here."""
    raw = key.encode("utf-8") if isinstance(key, str) else key
    if not raw:
        raise ValueError("an HMAC key is required to issue or verify stream tokens")
    return hmac.new(raw, _DOMAIN, hashlib.sha256).digest()


def _mac(key: str | bytes, nonce: str, expiry: int, call_sid: str) -> str:
    message = f"{_VERSION}|{nonce}|{expiry}|{call_sid}".encode()
    digest = hmac.new(_subkey(key), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def issue(call_sid: str, key: str | bytes, ttl_s: int, *, now: datetime | None = None) -> IssuedToken:
    """A fresh token for ``call_sid`` that expires ``ttl_s`` seconds from ``now``."""
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    now = now or datetime.now(UTC)
    expires_at = (now + timedelta(seconds=ttl_s)).replace(microsecond=0)
    expiry = int(expires_at.timestamp())
    nonce = secrets.token_urlsafe(18)  # 24 characters of base64url: 144 random bits
    token = f"{_VERSION}.{nonce}.{expiry}.{_mac(key, nonce, expiry, call_sid)}"
    return IssuedToken(token=token, nonce=nonce, call_sid=call_sid, expires_at=expires_at)


def verify(token: str, call_sid: str, key: str | bytes, now: datetime) -> str:
    """Check MAC, CallSid binding and expiry; return the nonce to :func:`consume`.

    This does not check single use: that needs the database (:func:`consume`).
    """
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise TokenError("malformed stream token")
    nonce, expiry_text, mac = match.groups()
    expiry = int(expiry_text)
    if not hmac.compare_digest(mac, _mac(key, nonce, expiry, call_sid)):
        raise TokenError("stream token is not valid for this call")
    if now.timestamp() >= expiry:
        raise TokenError("stream token expired")
    return nonce


def record(session: Session, issued: IssuedToken) -> None:
    """Store the issued token so :func:`consume` can enforce single use."""
    session.add(StreamToken(nonce=issued.nonce, call_sid=issued.call_sid, expires_at=issued.expires_at))


def consume(session: Session, nonce: str, call_sid: str, now: datetime) -> bool:
    """Mark the token used; True only for the one caller that flipped ``used_at`` from NULL.

    The conditional UPDATE is atomic in both PostgreSQL and SQLite, so concurrent replays of the
    same token cannot both succeed. The row must also belong to ``call_sid`` and not be expired.
    """
    result = session.execute(
        update(StreamToken)
        .where(
            StreamToken.nonce == nonce,
            StreamToken.call_sid == call_sid,
            StreamToken.used_at.is_(None),
            StreamToken.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]
