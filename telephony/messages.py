"""Parse the JSON text frames of a Twilio Media Stream into validated, immutable messages.

Everything that arrives on the socket is untrusted until it passes through :func:`parse_message`.
Twilio sends many numbers as strings, so integers are accepted in either form. Any input that is not
a well-formed message raises :class:`ProtocolError`, which carries the WebSocket close code the
socket handler should use, so one bad stream is closed cleanly and nothing else is affected.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

# RFC 6455 close codes the stream handler uses.
CLOSE_NORMAL = 1000
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011

MAX_MESSAGE_BYTES = 64 * 1024
# One second of 8 kHz mu-law: Twilio sends 20 ms (160 bytes); anything near this is not a real frame.
MAX_PAYLOAD_BYTES = 8000

EXPECTED_ENCODING = "audio/x-mulaw"
EXPECTED_SAMPLE_RATE = 8000
EXPECTED_CHANNELS = 1

_MAX_INT_DIGITS = 15  # ~31 000 years of milliseconds: anything longer is garbage, not a timestamp
_MAX_CUSTOM_PARAMETERS = 32
_MAX_PARAMETER_CHARS = 1024
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_TRACKS = frozenset({"inbound", "outbound"})


class ProtocolError(ValueError):
    """A message that breaks the Media Streams protocol; closes this stream only.

    ``reason`` is short, safe to log and to send as the WebSocket close reason (it never contains
    message content). ``close_code`` is the RFC 6455 code for the kind of violation.
    """

    def __init__(self, reason: str, close_code: int = CLOSE_INVALID_DATA) -> None:
        super().__init__(reason)
        self.reason = reason
        self.close_code = close_code


@dataclass(frozen=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True)
class Start:
    sequence_number: int | None
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    custom_parameters: Mapping[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Media:
    sequence_number: int | None
    stream_sid: str
    track: str
    chunk: int
    timestamp_ms: int
    payload: bytes


@dataclass(frozen=True)
class Stop:
    sequence_number: int | None
    stream_sid: str
    account_sid: str
    call_sid: str


@dataclass(frozen=True)
class Mark:
    sequence_number: int | None
    stream_sid: str
    name: str


@dataclass(frozen=True)
class Dtmf:
    sequence_number: int | None
    stream_sid: str
    track: str
    digit: str


Message = Connected | Start | Media | Stop | Mark | Dtmf


def parse_message(
    raw: str | bytes,
    *,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
    max_payload_bytes: int = MAX_PAYLOAD_BYTES,
) -> Message:
    """Parse one WebSocket frame; raise :class:`ProtocolError` for anything malformed."""
    obj = _load_json(raw, max_message_bytes)
    event = obj.get("event")
    if not isinstance(event, str):
        raise ProtocolError("message has no event name")
    parser = _PARSERS.get(event)
    if parser is None:
        raise ProtocolError("unknown event", CLOSE_POLICY_VIOLATION)
    return parser(obj, max_payload_bytes)


def _load_json(raw: str | bytes, max_bytes: int) -> dict[str, Any]:
    if isinstance(raw, bytes | bytearray | memoryview):
        data = bytes(raw)
        if len(data) > max_bytes:
            raise ProtocolError("message too big", CLOSE_TOO_BIG)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError("message is not UTF-8") from None
    elif isinstance(raw, str):
        # a str of n characters encodes to at most 4n bytes: only measure when it could be too big
        if len(raw) * 4 > max_bytes and len(raw.encode("utf-8", "surrogatepass")) > max_bytes:
            raise ProtocolError("message too big", CLOSE_TOO_BIG)
        text = raw
    else:
        raise ProtocolError("message is neither text nor bytes")
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        raise ProtocolError("message is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("message is not a JSON object")
    return obj


def _section(obj: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = obj.get(name)
    if not isinstance(value, dict):
        raise ProtocolError(f"{name} section missing")
    return value


def _str(obj: Mapping[str, Any], name: str, *, max_chars: int = 256) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not value or len(value) > max_chars:
        raise ProtocolError(f"{name} must be a non-empty string")
    return value


def _sid(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str) or not _SID.fullmatch(value):
        raise ProtocolError(f"{name} is not a valid sid")
    return value


def _opt_int(obj: Mapping[str, Any], name: str) -> int | None:
    return None if obj.get(name) is None else _int(obj, name)


def _int(obj: Mapping[str, Any], name: str) -> int:
    """Twilio sends counters as decimal strings ("12") and format numbers as JSON numbers."""
    value = obj.get(name)
    if isinstance(value, bool):
        raise ProtocolError(f"{name} must be an integer")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= _MAX_INT_DIGITS:
        number = int(value)
    else:
        raise ProtocolError(f"{name} must be an integer")
    if number < 0 or number >= 10**_MAX_INT_DIGITS:
        raise ProtocolError(f"{name} out of range")
    return number


def _track(value: object) -> str:
    if not isinstance(value, str) or value not in _TRACKS:
        raise ProtocolError("unknown track")
    return value


def _parse_connected(obj: Mapping[str, Any], _max_payload: int) -> Connected:
    return Connected(protocol=_str(obj, "protocol", max_chars=64), version=_str(obj, "version", max_chars=64))


def _parse_start(obj: Mapping[str, Any], _max_payload: int) -> Start:
    start = _section(obj, "start")
    stream_sid = _sid(start, "streamSid")
    if "streamSid" in obj and obj.get("streamSid") != stream_sid:
        raise ProtocolError("streamSid disagrees with start.streamSid")
    tracks_raw = start.get("tracks")
    if not isinstance(tracks_raw, list) or not tracks_raw or len(tracks_raw) > 2:
        raise ProtocolError("start.tracks must be a list of tracks")
    tracks = tuple(_track(t) for t in tracks_raw)
    fmt = _section(start, "mediaFormat")
    encoding = _str(fmt, "encoding", max_chars=64)
    sample_rate = _int(fmt, "sampleRate")
    channels = _int(fmt, "channels")
    if encoding != EXPECTED_ENCODING:
        raise ProtocolError("unsupported media encoding", CLOSE_POLICY_VIOLATION)
    if sample_rate != EXPECTED_SAMPLE_RATE:
        raise ProtocolError("unsupported sample rate", CLOSE_POLICY_VIOLATION)
    if channels != EXPECTED_CHANNELS:
        raise ProtocolError("unsupported channel count", CLOSE_POLICY_VIOLATION)
    return Start(
        sequence_number=_opt_int(obj, "sequenceNumber"),
        stream_sid=stream_sid,
        call_sid=_sid(start, "callSid"),
        account_sid=_sid(start, "accountSid"),
        tracks=tracks,
        custom_parameters=_custom_parameters(start.get("customParameters")),
        encoding=encoding,
        sample_rate=sample_rate,
        channels=channels,
    )


def _custom_parameters(value: object) -> Mapping[str, str]:
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, dict) or len(value) > _MAX_CUSTOM_PARAMETERS:
        raise ProtocolError("customParameters must be a small object")
    for key, item in value.items():
        if not isinstance(item, str) or len(key) > _MAX_PARAMETER_CHARS or len(item) > _MAX_PARAMETER_CHARS:
            raise ProtocolError("customParameters values must be short strings")
    return MappingProxyType(dict(value))


def _parse_media(obj: Mapping[str, Any], max_payload: int) -> Media:
    media = _section(obj, "media")
    encoded = media.get("payload")
    if not isinstance(encoded, str):
        raise ProtocolError("media.payload must be a base64 string")
    # base64 is 4 characters per 3 bytes: refuse before decoding anything too big
    if len(encoded) > (max_payload + 2) // 3 * 4:
        raise ProtocolError("media payload too big", CLOSE_TOO_BIG)
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media.payload is not valid base64") from None
    # the length check above rounds up to whole base64 quanta, so up to 2 bytes over the cap get past it
    if len(payload) > max_payload:
        raise ProtocolError("media payload too big", CLOSE_TOO_BIG)
    return Media(
        sequence_number=_opt_int(obj, "sequenceNumber"),
        stream_sid=_sid(obj, "streamSid"),
        track=_track(media.get("track")),
        chunk=_int(media, "chunk"),
        timestamp_ms=_int(media, "timestamp"),
        payload=payload,
    )


def _parse_stop(obj: Mapping[str, Any], _max_payload: int) -> Stop:
    stop = _section(obj, "stop")
    return Stop(
        sequence_number=_opt_int(obj, "sequenceNumber"),
        stream_sid=_sid(obj, "streamSid"),
        account_sid=_sid(stop, "accountSid"),
        call_sid=_sid(stop, "callSid"),
    )


def _parse_mark(obj: Mapping[str, Any], _max_payload: int) -> Mark:
    mark = _section(obj, "mark")
    return Mark(
        sequence_number=_opt_int(obj, "sequenceNumber"),
        stream_sid=_sid(obj, "streamSid"),
        name=_str(mark, "name"),
    )


def _parse_dtmf(obj: Mapping[str, Any], _max_payload: int) -> Dtmf:
    dtmf = _section(obj, "dtmf")
    digit = _str(dtmf, "digit", max_chars=1)
    return Dtmf(
        sequence_number=_opt_int(obj, "sequenceNumber"),
        stream_sid=_sid(obj, "streamSid"),
        track=_str(dtmf, "track", max_chars=32),
        digit=digit,
    )


_PARSERS: dict[str, Callable[[Mapping[str, Any], int], Message]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "stop": _parse_stop,
    "mark": _parse_mark,
    "dtmf": _parse_dtmf,
}
