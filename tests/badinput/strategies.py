"""Hypothesis strategies for Twilio Media Stream messages that are well-shaped but wrong.

The parser's job is to turn anything a socket can carry into either a validated message or a
:class:`~telephony.messages.ProtocolError`. Random bytes rarely get past ``json.loads``, so most of
the search here starts from a *documented* message (one per event) and mutates one or more fields:
deleted, replaced by a value of the wrong type, made huge, made unicode, given a negative or
non-finite number, or given an invalid base64 payload, an unexpected media format, an extra key.
That way the deep validation branches are exercised, not just the JSON decoder.
"""

from __future__ import annotations

import base64
import copy
import json
import math
from typing import Any

from hypothesis import strategies as st

STREAM = "MZ18ad3ab5a668481ce02b83e7395059f0"
CALL = "CA9c0d5f3e2b1a4c6d8e7f9a0b1c2d3e4f"
ACCOUNT = "AC2f9a7c8e1b3d4f5a6b7c8d9e0f1a2b3c"
FRAME_BYTES = 160  # 20 ms of 8 kHz mu-law, what Twilio sends

Path = tuple[str, ...]


def documented_messages() -> dict[str, dict[str, Any]]:
    """One message per event exactly as Twilio documents it (numbers as strings where Twilio sends them)."""
    return {
        "connected": {"event": "connected", "protocol": "Call", "version": "1.0.0"},
        "start": {
            "event": "start",
            "sequenceNumber": "1",
            "start": {
                "accountSid": ACCOUNT,
                "streamSid": STREAM,
                "callSid": CALL,
                "tracks": ["inbound"],
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                "customParameters": {"token": "v1.abc"},
            },
            "streamSid": STREAM,
        },
        "media": {
            "event": "media",
            "sequenceNumber": "3",
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": "5",
                "payload": base64.b64encode(b"\x7f" * FRAME_BYTES).decode("ascii"),
            },
            "streamSid": STREAM,
        },
        "stop": {
            "event": "stop",
            "sequenceNumber": "5",
            "stop": {"accountSid": ACCOUNT, "callSid": CALL},
            "streamSid": STREAM,
        },
        "mark": {"event": "mark", "sequenceNumber": "4", "streamSid": STREAM, "mark": {"name": "my label"}},
        "dtmf": {
            "event": "dtmf",
            "sequenceNumber": "5",
            "streamSid": STREAM,
            "dtmf": {"track": "inbound_track", "digit": "1"},
        },
    }


def field_paths(message: dict[str, Any], prefix: Path = ()) -> list[Path]:
    """Every key path in ``message`` (sections and their leaves), e.g. ``("start", "mediaFormat")``."""
    paths: list[Path] = []
    for key, value in message.items():
        path = (*prefix, key)
        paths.append(path)
        if isinstance(value, dict):
            paths.extend(field_paths(value, path))
    return paths


# -- wrong values ------------------------------------------------------------------------------------

huge_ints = st.integers(min_value=10**14, max_value=10**40) | st.integers(max_value=-1)
numeric_lookalikes = st.sampled_from(
    [
        "-5",
        "1.5",
        "1e3",
        "0x10",
        " 12",
        "12 ",
        "+12",
        "",
        "٣",
        "１２",
        "NaN",
        "Infinity",
        "-0",
        "9" * 16,
    ]
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
unicode_text = st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from(["\x00", "\u202e", "\ufeff", "\U0001f600", "\ud800"]),
    max_size=40,
)
huge_text = st.integers(min_value=257, max_value=70_000).map(lambda n: "A" * n)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | huge_ints
    | st.floats(allow_nan=True, allow_infinity=True)
    | non_finite
    | numeric_lookalikes
    | unicode_text
)
wrong_values = st.recursive(
    scalars | huge_text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3),
    max_leaves=6,
)

# media payloads: invalid base64, valid base64 of awkward lengths, oversized
invalid_base64 = st.sampled_from(
    [
        "not base64!",
        "%%%",
        "AAA",
        "A",
        "====",
        "AA=A",
        "AAAA\n",
        " AAAA",
        "AAAA====",
        "AA==AA==",
        "-_-_",
        "\u00e9\u00e9==",
    ]
) | st.text(alphabet="ABCDabcd0123+/=*!. \t", min_size=1, max_size=64)
awkward_payloads = st.one_of(
    st.integers(min_value=0, max_value=1000).map(lambda n: base64.b64encode(b"\xff" * n).decode()),
    st.integers(min_value=8001, max_value=20_000).map(lambda n: base64.b64encode(b"\x00" * n).decode()),
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode()),
    st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
)
encodings = (
    st.sampled_from(
        [
            "audio/x-mulaw ",
            "audio/X-MULAW",
            "audio/x-alaw",
            "audio/l16",
            "audio/pcm",
            "audio/mulaw",
            "opus",
            "",
        ]
    )
    | unicode_text
)
sample_rates = st.integers(min_value=-(10**6), max_value=10**6).filter(lambda r: r != 8000) | st.sampled_from(
    [16000, "16000", "8000.0", 0, 7999, 8001, 44100]
)
channel_counts = st.integers(min_value=-5, max_value=64).filter(lambda c: c != 1) | st.sampled_from([2, "2", 0])
sequence_numbers = st.integers(min_value=-(10**6), max_value=10**16).map(str) | st.integers(max_value=-1) | scalars

SPECIAL: dict[Path, st.SearchStrategy[Any]] = {
    ("media", "payload"): invalid_base64 | awkward_payloads,
    ("start", "mediaFormat", "encoding"): encodings,
    ("start", "mediaFormat", "sampleRate"): sample_rates,
    ("start", "mediaFormat", "channels"): channel_counts,
    ("sequenceNumber",): sequence_numbers,
    ("media", "timestamp"): huge_ints.map(str) | huge_ints | non_finite | numeric_lookalikes,
    ("media", "chunk"): huge_ints | numeric_lookalikes,
}


def _get_parent(message: dict[str, Any], path: Path) -> dict[str, Any] | None:
    node: Any = message
    for key in path[:-1]:
        if not isinstance(node, dict) or not isinstance(node.get(key), dict):
            return None
        node = node[key]
    return node if isinstance(node, dict) else None


@st.composite
def mutated_message(draw: st.DrawFn, events: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A documented message with 1-3 of its fields deleted, replaced or given a sibling."""
    documented = documented_messages()
    event = draw(st.sampled_from(events or tuple(documented)))
    message = copy.deepcopy(documented[event])
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        paths = field_paths(message)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = _get_parent(message, path)
        if parent is None:
            continue
        action = draw(st.sampled_from(["delete", "replace", "replace", "special", "extra"]))
        if action == "delete":
            parent.pop(path[-1], None)
        elif action == "extra":
            parent[draw(st.text(min_size=1, max_size=12))] = draw(wrong_values)
        elif action == "special" and path in SPECIAL:
            parent[path[-1]] = draw(SPECIAL[path])
        else:
            parent[path[-1]] = draw(wrong_values)
    return message


def encode(message: dict[str, Any], as_bytes: bool) -> str | bytes:
    """JSON text (NaN allowed, as a sloppy sender would write it), optionally as UTF-8 bytes."""
    text = json.dumps(message, allow_nan=True)  # ensure_ascii: lone surrogates survive as \ud800 escapes
    return text.encode("utf-8") if as_bytes else text


@st.composite
def corrupted_frames(draw: st.DrawFn) -> bytes:
    """A documented message's bytes with a few bytes flipped, inserted, removed or the frame truncated."""
    event = draw(st.sampled_from(tuple(documented_messages())))
    data = bytearray(json.dumps(documented_messages()[event]).encode())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if not data:
            break
        i = draw(st.integers(min_value=0, max_value=len(data) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip":
            data[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i]
        else:
            del data[i:]
    return bytes(data)


__all__ = [
    "ACCOUNT",
    "CALL",
    "FRAME_BYTES",
    "STREAM",
    "corrupted_frames",
    "documented_messages",
    "encode",
    "field_paths",
    "mutated_message",
    "wrong_values",
]
