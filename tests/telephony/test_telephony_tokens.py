"""Stream tokens: MAC, CallSid binding, expiry; single use against the real database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session, sessionmaker

from schema.db import session_scope
from telephony import tokens
from tests.telephony_fixtures import new_sid

KEY = "token-test-key"
NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_round_trip() -> None:
    call = new_sid("CA")
    issued = tokens.issue(call, KEY, 120, now=NOW)
    assert tokens.verify(issued.token, call, KEY, NOW + timedelta(seconds=60)) == issued.nonce
    assert call not in issued.token


def test_token_is_bound_to_its_call() -> None:
    issued = tokens.issue(new_sid("CA"), KEY, 120, now=NOW)
    with pytest.raises(tokens.TokenError, match="not valid for this call"):
        tokens.verify(issued.token, new_sid("CA"), KEY, NOW)


def test_expired_token_is_refused() -> None:
    call = new_sid("CA")
    issued = tokens.issue(call, KEY, 120, now=NOW)
    with pytest.raises(tokens.TokenError, match="expired"):
        tokens.verify(issued.token, call, KEY, NOW + timedelta(seconds=121))


def test_forged_or_mangled_tokens_are_refused() -> None:
    call = new_sid("CA")
    issued = tokens.issue(call, KEY, 120, now=NOW)
    version, nonce, expiry, mac = issued.token.split(".")
    later = f"{version}.{nonce}.{int(expiry) + 3600}.{mac}"  # extend the expiry without the key
    for bad in [later, issued.token + "x", "", "v1...", issued.token.replace("v1", "v2", 1)]:
        with pytest.raises(tokens.TokenError):
            tokens.verify(bad, call, KEY, NOW)
    with pytest.raises(tokens.TokenError):
        tokens.verify(issued.token, call, "another-key", NOW)


def test_empty_key_is_refused() -> None:
    with pytest.raises(ValueError):
        tokens.issue(new_sid("CA"), "", 120)


def test_consume_is_single_use(tel_sessions: sessionmaker[Session]) -> None:
    call = new_sid("CA")
    now = datetime.now(UTC)
    issued = tokens.issue(call, KEY, 120, now=now)
    with session_scope(tel_sessions) as session:
        tokens.record(session, issued)
    with session_scope(tel_sessions) as session:
        assert tokens.consume(session, issued.nonce, call, now) is True
    with session_scope(tel_sessions) as session:
        assert tokens.consume(session, issued.nonce, call, now) is False


def test_consume_refuses_other_call_and_expired_rows(tel_sessions: sessionmaker[Session]) -> None:
    call = new_sid("CA")
    now = datetime.now(UTC)
    issued = tokens.issue(call, KEY, 60, now=now)
    with session_scope(tel_sessions) as session:
        tokens.record(session, issued)
    with session_scope(tel_sessions) as session:
        assert tokens.consume(session, issued.nonce, new_sid("CA"), now) is False
        assert tokens.consume(session, issued.nonce, call, now + timedelta(seconds=61)) is False
        assert tokens.consume(session, "never-issued-nonce-0000", call, now) is False
        assert tokens.consume(session, issued.nonce, call, now) is True
