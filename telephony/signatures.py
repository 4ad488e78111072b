"""Check ``X-Twilio-Signature`` against the URL Twilio was configured with, not the one we were reached at.

Behind a load balancer or tunnel, the Host header, scheme and port the app sees are not the ones
Twilio signed, so the URL is rebuilt from the configured public URL plus the request's path (and,
for webhooks, its raw query string). An empty auth token refuses everything: accepting unsigned
requests would let anyone create calls or stream audio into the system.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.request_validator import RequestValidator

SIGNATURE_HEADER = "X-Twilio-Signature"


def public_http_url(public_url: str, path: str, query_string: bytes | str = b"") -> str:
    """The https URL Twilio requested: configured base + path (+ ``?query`` exactly as sent)."""
    query = query_string.decode("latin-1") if isinstance(query_string, bytes) else query_string
    url = public_url.rstrip("/") + path
    return f"{url}?{query}" if query else url


def public_ws_url(public_url: str, path: str) -> str:
    """The WebSocket URL for ``path`` under the public URL: ``https`` becomes ``wss``, ``http`` ``ws``."""
    parts = urlsplit(public_url.rstrip("/"))
    scheme = {"https": "wss", "http": "ws"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path + path, "", ""))


def is_valid(auth_token: str, url: str, params: Mapping[str, Any] | None, signature: str | None) -> bool:
    if not auth_token or not signature:
        return False
    return bool(RequestValidator(auth_token).validate(url, params or {}, signature))
