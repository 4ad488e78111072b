"""The Media Streams parser: documented messages parse; every class of bad input closes with its code."""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from telephony.messages import (
    CLOSE_INVALID_DATA,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    MAX_MESSAGE_BYTES,
    Connected,
    Media,
    ProtocolError,
    Start,
    Stop,
    parse_message,
)
from tests.telephony_fixtures import connected_msg, media_msg, start_msg, stop_msg

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA9c0d5f3e2b1a4c6d8e7f9a0b1c2d3e4f"
ACCOUNT = "AC2f9a7c8e1b3d4f5a6b7c8d9e0f1a2b3c"


def test_connected() -> None:
    assert parse_message(connected_msg()) == Connected(protocol="Call", version="1.0.0")


def test_start_as_documented() -> None:
    msg = parse_message(start_msg(STREAM, CALL, ACCOUNT, {"token": "abc", "patient_ref": "P-1"}))
    assert isinstance(msg, Start)
    assert (msg.stream_sid, msg.call_sid, msg.account_sid) == (STREAM, CALL, ACCOUNT)
    assert msg.tracks == ("inbound",)
    assert dict(msg.custom_parameters) == {"token": "abc", "patient_ref": "P-1"}
    assert (msg.encoding, msg.sample_rate, msg.channels, msg.sequence_number) == ("audio/x-mulaw", 8000, 1, 1)
    with pytest.raises(TypeError):
        msg.custom_parameters["x"] = "y"  # type: ignore[index]


def test_media_numbers_arrive_as_strings_and_payload_is_decoded() -> None:
    payload = bytes(range(160))
    msg = parse_message(media_msg(STREAM, 7, 120, payload, sequence=9))
    assert msg == Media(
        sequence_number=9, stream_sid=STREAM, track="inbound", chunk=7, timestamp_ms=120, payload=payload
    )


def test_media_accepts_json_numbers_too() -> None:
    raw = json.loads(media_msg(STREAM, 1, 5, b"\xff" * 160, sequence=3))
    raw["media"]["chunk"], raw["media"]["timestamp"] = 1, 5
    msg = parse_message(json.dumps(raw).encode())
    assert isinstance(msg, Media) and (msg.chunk, msg.timestamp_ms) == (1, 5)


def test_stop() -> None:
    msg = parse_message(stop_msg(STREAM, CALL, ACCOUNT, sequence=5))
    assert msg == Stop(sequence_number=5, stream_sid=STREAM, account_sid=ACCOUNT, call_sid=CALL)


def _media(**changes: object) -> str:
    raw = json.loads(media_msg(STREAM, 1, 0, b"\x7f" * 160, sequence=2))
    raw["media"].update(changes)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", CLOSE_INVALID_DATA),
        (b"\xff\xfe{}", CLOSE_INVALID_DATA),  # not UTF-8
        ("[1, 2]", CLOSE_INVALID_DATA),
        ('{"protocol": "Call"}', CLOSE_INVALID_DATA),  # no event
        ('{"event": 5}', CLOSE_INVALID_DATA),
        ('{"event": "hangup"}', CLOSE_POLICY_VIOLATION),  # unknown event
        ("[" * 5000 + "]" * 5000, CLOSE_INVALID_DATA),  # nesting
        (_media(payload="not base64!"), CLOSE_INVALID_DATA),
        (_media(payload=12), CLOSE_INVALID_DATA),
        (_media(timestamp="-5"), CLOSE_INVALID_DATA),
        (_media(timestamp="1.5"), CLOSE_INVALID_DATA),
        (_media(timestamp=True), CLOSE_INVALID_DATA),
        (_media(chunk=None), CLOSE_INVALID_DATA),
        (_media(timestamp="9" * 40), CLOSE_INVALID_DATA),
        (_media(track="sideways"), CLOSE_INVALID_DATA),
        (_media(payload=base64.b64encode(b"\x00" * 9000).decode()), CLOSE_TOO_BIG),
        ('{"event": "media", "streamSid": "MZ1"}', CLOSE_INVALID_DATA),  # section missing
        (json.dumps({"event": "media", "streamSid": "MZ 1; DROP", "media": {}}), CLOSE_INVALID_DATA),
        ("x" * (MAX_MESSAGE_BYTES + 1), CLOSE_TOO_BIG),
        (b"x" * (MAX_MESSAGE_BYTES + 1), CLOSE_TOO_BIG),
        ("é" * (MAX_MESSAGE_BYTES // 2 + 1), CLOSE_TOO_BIG),  # fewer characters than the cap, more bytes
        (start_msg(STREAM, CALL, ACCOUNT, encoding="audio/l16"), CLOSE_POLICY_VIOLATION),
        (start_msg(STREAM, CALL, ACCOUNT, sample_rate=16000), CLOSE_POLICY_VIOLATION),
    ],
    ids=[
        "not-json",
        "not-utf8",
        "not-object",
        "no-event",
        "event-not-string",
        "unknown-event",
        "deep-nesting",
        "bad-base64",
        "payload-not-string",
        "negative-timestamp",
        "fractional-timestamp",
        "bool-timestamp",
        "missing-chunk",
        "huge-timestamp",
        "unknown-track",
        "payload-too-big",
        "missing-section",
        "bad-sid",
        "text-too-big",
        "bytes-too-big",
        "multibyte-too-big",
        "wrong-encoding",
        "wrong-rate",
    ],
)
def test_bad_input_closes_with_the_right_code(raw: str | bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_message(raw)
    assert info.value.close_code == code
    assert info.value.reason and len(info.value.reason) < 123  # fits a close frame


def test_start_with_bad_parameters() -> None:
    raw = json.loads(start_msg(STREAM, CALL, ACCOUNT))
    raw["start"]["customParameters"] = {"token": 5}
    with pytest.raises(ProtocolError):
        parse_message(json.dumps(raw))
    raw["start"]["customParameters"] = {}
    raw["start"]["tracks"] = "inbound"
    with pytest.raises(ProtocolError):
        parse_message(json.dumps(raw))


def test_reason_never_echoes_message_content() -> None:
    secret = "+15551234567"
    with pytest.raises(ProtocolError) as info:
        parse_message(json.dumps({"event": secret}))
    assert secret not in info.value.reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
events = st.sampled_from(["connected", "start", "media", "stop", "mark", "dtmf", "other"])
message_like = st.fixed_dictionaries(
    {"event": events},
    optional={
        "streamSid": st.text(max_size=40) | json_values,
        "sequenceNumber": st.text(max_size=5) | json_values,
        "start": st.dictionaries(
            st.sampled_from(["streamSid", "callSid", "accountSid", "tracks", "customParameters", "mediaFormat"]),
            json_values,
        ),
        "media": st.dictionaries(
            st.sampled_from(["track", "chunk", "timestamp", "payload"]),
            json_values | st.text(alphabet="ABCD0123+/=", max_size=12),
        ),
        "stop": st.dictionaries(st.sampled_from(["accountSid", "callSid"]), json_values),
    },
)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=300))
def test_arbitrary_input_only_raises_protocol_error(raw: bytes | str) -> None:
    try:
        parse_message(raw)
    except ProtocolError as exc:
        assert exc.close_code in (CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG)


@settings(max_examples=200, deadline=None)
@given(message_like)
def test_arbitrary_message_shaped_json_only_raises_protocol_error(obj: dict) -> None:
    try:
        message = parse_message(json.dumps(obj))
    except ProtocolError:
        return
    assert message.__class__.__name__.lower() == obj["event"]
