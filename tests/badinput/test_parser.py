"""Property tests for the Media Streams parser: wrong-but-plausible messages and raw bytes.

The contract under test (telephony/messages.py): every input either parses into a message whose
invariants hold (payload within the cap, the one media format painline decodes) or raises
:class:`ProtocolError` with a close code from the documented set. Any other exception would escape
the socket handler's ``ProtocolError`` branch and end the stream with 1011 instead of a clear code.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from telephony.messages import (
    CLOSE_INVALID_DATA,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    EXPECTED_CHANNELS,
    EXPECTED_ENCODING,
    EXPECTED_SAMPLE_RATE,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    Message,
    ProtocolError,
    Start,
    Stop,
    parse_message,
)
from tests.badinput.strategies import (
    channel_counts,
    corrupted_frames,
    documented_messages,
    encode,
    encodings,
    invalid_base64,
    mutated_message,
    sample_rates,
)
from tests.reliability import ReliabilityRecorder

DOCUMENTED_CODES = frozenset({CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG})
"""What the parser may close with (1011 is reserved for painline's own failures, never the input's)."""

EVENT_TYPES: dict[str, type] = {
    "connected": Connected,
    "start": Start,
    "media": Media,
    "stop": Stop,
    "mark": Mark,
    "dtmf": Dtmf,
}
FAST = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_or_code(raw: str | bytes) -> Message | int:
    """The parsed message, or the close code of the ProtocolError; any other exception fails the test."""
    try:
        return parse_message(raw)
    except ProtocolError as exc:
        assert exc.close_code in DOCUMENTED_CODES, (exc.reason, exc.close_code)
        assert exc.reason and len(exc.reason.encode()) <= 123  # must fit a close frame's reason
        return exc.close_code


def assert_invariants(message: Message) -> None:
    """What the rest of painline relies on once a message has parsed."""
    if isinstance(message, Start):
        assert (message.encoding, message.sample_rate, message.channels) == (
            EXPECTED_ENCODING,
            EXPECTED_SAMPLE_RATE,
            EXPECTED_CHANNELS,
        )
        assert message.tracks and set(message.tracks) <= {"inbound", "outbound"}
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in message.custom_parameters.items())
    if isinstance(message, Media):
        assert len(message.payload) <= MAX_PAYLOAD_BYTES
        assert message.track in {"inbound", "outbound"}
        assert message.timestamp_ms >= 0 and message.chunk >= 0
    for sid in ("stream_sid", "call_sid", "account_sid"):
        value = getattr(message, sid, None)
        assert value is None or (value.isascii() and value.isalnum())
    sequence = getattr(message, "sequence_number", None)
    assert sequence is None or (isinstance(sequence, int) and sequence >= 0)


@FAST
@given(mutated_message(), st.booleans())
def test_mutated_documented_messages_parse_or_close_cleanly(message: dict[str, Any], as_bytes: bool) -> None:
    outcome = parse_or_code(encode(message, as_bytes))
    if not isinstance(outcome, int):
        assert isinstance(outcome, EVENT_TYPES[message["event"]])
        assert_invariants(outcome)


@FAST
@given(corrupted_frames())
def test_corrupted_frames_parse_or_close_cleanly(raw: bytes) -> None:
    outcome = parse_or_code(raw)
    if not isinstance(outcome, int):
        assert_invariants(outcome)


@FAST
@given(st.binary(max_size=2000) | st.text(max_size=2000))
def test_random_frames_parse_or_close_cleanly(raw: bytes | str) -> None:
    outcome = parse_or_code(raw)
    if not isinstance(outcome, int):
        assert_invariants(outcome)


def _media(payload: Any) -> str:
    message = documented_messages()["media"]
    message["media"]["payload"] = payload
    return json.dumps(message)


def _start(**media_format: Any) -> str:
    message = documented_messages()["start"]
    message["start"]["mediaFormat"].update(media_format)
    return json.dumps(message)


@settings(max_examples=200, deadline=None)
@given(invalid_base64)
def test_invalid_base64_is_invalid_data(payload: str) -> None:
    try:
        base64.b64decode(payload, validate=True)
    except ValueError:
        assert parse_or_code(_media(payload)) == CLOSE_INVALID_DATA
    else:  # a few generated strings happen to be valid base64: they must parse
        assert isinstance(parse_or_code(_media(payload)), Media)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=MAX_PAYLOAD_BYTES))
def test_any_payload_length_within_the_cap_parses(length: int) -> None:
    """Twilio sends 160 bytes, but nothing downstream may rely on frame-sized payloads."""
    message = parse_message(_media(base64.b64encode(b"\x55" * length).decode()))
    assert isinstance(message, Media) and len(message.payload) == length


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=MAX_PAYLOAD_BYTES + 1, max_value=MAX_MESSAGE_BYTES))
def test_payload_over_the_cap_is_too_big(length: int) -> None:
    assert parse_or_code(_media(base64.b64encode(b"\x55" * length).decode())) == CLOSE_TOO_BIG


@settings(max_examples=150, deadline=None)
@given(encodings.filter(lambda e: e != "audio/x-mulaw"))
def test_other_encodings_are_policy_violations(encoding: str) -> None:
    code = parse_or_code(_start(encoding=encoding))
    # an empty or over-long encoding is malformed rather than unsupported
    assert code == (CLOSE_POLICY_VIOLATION if 0 < len(encoding) <= 64 else CLOSE_INVALID_DATA)


@settings(max_examples=150, deadline=None)
@given(sample_rates)
def test_other_sample_rates_are_refused(rate: Any) -> None:
    code = parse_or_code(_start(sampleRate=rate))
    valid_integer = (isinstance(rate, int) and rate >= 0) or (isinstance(rate, str) and rate.isdigit())
    assert code == (CLOSE_POLICY_VIOLATION if valid_integer else CLOSE_INVALID_DATA)


@settings(max_examples=100, deadline=None)
@given(channel_counts)
def test_other_channel_counts_are_refused(channels: Any) -> None:
    code = parse_or_code(_start(channels=channels))
    valid_integer = (isinstance(channels, int) and channels >= 0) or (isinstance(channels, str) and channels.isdigit())
    assert code == (CLOSE_POLICY_VIOLATION if valid_integer else CLOSE_INVALID_DATA)


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "-1", "-0.0", "1e400", "1.0"])
def test_non_finite_and_negative_timestamps_are_invalid_data(value: str) -> None:
    raw = _media("AAAA").replace('"timestamp": "5"', f'"timestamp": {value}')
    assert parse_or_code(raw) == CLOSE_INVALID_DATA


@pytest.mark.parametrize("event", ["hangup", "Media", "MEDIA", "media ", "", "clear", "\u0000", "x" * 1000])
def test_unknown_events_are_policy_violations_or_invalid(event: str) -> None:
    assert parse_or_code(json.dumps({"event": event})) == CLOSE_POLICY_VIOLATION


def test_parser_classes_recorded(reliability: ReliabilityRecorder) -> None:
    """One row for the parser as a whole: the property tests above are its evidence."""
    checks = {
        "malformed-json": ("{not json", CLOSE_INVALID_DATA),
        "wrong-type": (_media(12), CLOSE_INVALID_DATA),
        "invalid-base64": (_media("%%%"), CLOSE_INVALID_DATA),
        "oversized-payload": (_media(base64.b64encode(bytes(MAX_PAYLOAD_BYTES + 1)).decode()), CLOSE_TOO_BIG),
        "oversized-message": ("x" * (MAX_MESSAGE_BYTES + 1), CLOSE_TOO_BIG),
        "wrong-encoding": (_start(encoding="audio/l16"), CLOSE_POLICY_VIOLATION),
        "wrong-sample-rate": (_start(sampleRate=16000), CLOSE_POLICY_VIOLATION),
        "wrong-channels": (_start(channels=2), CLOSE_POLICY_VIOLATION),
        "unknown-event": ('{"event": "hangup"}', CLOSE_POLICY_VIOLATION),
    }
    results = {name: parse_or_code(raw) == code for name, (raw, code) in checks.items()}
    reliability.record_outcome(
        "bad-input-parser",
        "bad input",
        "parse_message on hypothesis-mutated Twilio messages, corrupted and random frames: every input parses "
        "or raises ProtocolError with 1007/1008/1009; spot checks: " + ", ".join(sorted(results)),
        survived=all(results.values()),
        classes=len(results),
    )
    assert all(results.values()), results


@pytest.mark.parametrize("extra", [1, 2])
def test_payload_just_over_the_cap_is_too_big(extra: int) -> None:
    """Found by hypothesis: the pre-decode length check rounds up to whole base64 quanta, so 8001 and
    8002 bytes used to parse; the decoded length is now checked too."""
    raw = _media(base64.b64encode(b"\x55" * (MAX_PAYLOAD_BYTES + extra)).decode())
    assert parse_or_code(raw) == CLOSE_TOO_BIG
