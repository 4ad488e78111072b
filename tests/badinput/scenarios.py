"""The bad-stream classes, each as the message sequence a misbehaving peer sends and the close it earns.

Shared by the StreamSession tests (messages fed directly) and the real-socket tests (the same
messages sent over a WebSocket to the real app), so both layers are held to the same table. Each
scenario starts from a valid call (a call row and an unused stream token, as the voice webhook
leaves them) and ends with the message that must be refused.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from telephony.messages import CLOSE_INVALID_DATA, CLOSE_NORMAL, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG
from tests.telephony_fixtures import TwilioStream, connected_msg, media_msg, new_sid, start_msg, stop_msg

FRAME = b"\x7f" * 160
Frame = str | bytes


@dataclass(frozen=True)
class Scenario:
    """``build`` returns the frames to send; the last one (or, for floods, some frame) must be refused."""

    name: str
    detail: str
    build: Callable[[TwilioStream], Sequence[Frame]]
    code: int
    reason: str  # a substring of the close reason
    started: bool = True  # the stream got past ``start`` (so its call must end up ENDED)


def _opening(s: TwilioStream, frames: int = 10) -> list[Frame]:
    """connected, start, and a few valid media frames."""
    out: list[Frame] = [connected_msg(), start_msg(s.stream_sid, s.call_sid, s.account_sid, {"token": s.token})]
    out += [media_msg(s.stream_sid, i + 1, 20 * i, FRAME, sequence=i + 2) for i in range(frames)]
    return out


def _media_with(s: TwilioStream, **fields: Any) -> str:
    message = json.loads(media_msg(s.stream_sid, 11, 200, FRAME, sequence=12))
    message["media"].update(fields)
    return json.dumps(message)


def _start_with(s: TwilioStream, **media_format: Any) -> str:
    message = json.loads(start_msg(s.stream_sid, s.call_sid, s.account_sid, {"token": s.token}))
    message["start"]["mediaFormat"].update(media_format)
    return json.dumps(message)


def _with_token(s: TwilioStream, token: str | None) -> str:
    parameters = {} if token is None else {"token": token}
    return start_msg(s.stream_sid, s.call_sid, s.account_sid, parameters)


FLOOD_MESSAGES = 6000
"""Duplicates sent back to back: far more than the default burst allowance (1000) plus 150 per second."""


SCENARIOS: list[Scenario] = [
    Scenario(
        "malformed-json",
        "a media frame that is not JSON",
        lambda s: [*_opening(s), '{"event": "media",'],
        CLOSE_INVALID_DATA,
        "not valid JSON",
    ),
    Scenario(
        "not-utf8",
        "a binary frame that is not UTF-8",
        lambda s: [*_opening(s), b"\xff\xfe\x00{"],
        CLOSE_INVALID_DATA,
        "not UTF-8",
    ),
    Scenario(
        "deep-nesting",
        "JSON nested 30 000 deep",
        lambda s: [*_opening(s), "[" * 30_000 + "]" * 30_000],
        CLOSE_INVALID_DATA,
        "not valid JSON",
    ),
    Scenario(
        "wrong-type",
        "media.timestamp is a list",
        lambda s: [*_opening(s), _media_with(s, timestamp=[1])],
        CLOSE_INVALID_DATA,
        "timestamp must be an integer",
    ),
    Scenario(
        "negative-timestamp",
        "media.timestamp is -20",
        lambda s: [*_opening(s), _media_with(s, timestamp="-20")],
        CLOSE_INVALID_DATA,
        "timestamp",
    ),
    Scenario(
        "invalid-base64",
        "media.payload is not base64",
        lambda s: [*_opening(s), _media_with(s, payload="%%%not base64")],
        CLOSE_INVALID_DATA,
        "base64",
    ),
    Scenario(
        "oversized-payload",
        "a 9000-byte media payload (cap 8000)",
        lambda s: [*_opening(s), _media_with(s, payload=base64.b64encode(bytes(9000)).decode())],
        CLOSE_TOO_BIG,
        "payload too big",
    ),
    Scenario(
        "oversized-frame",
        "a 70 KiB text frame (cap 64 KiB)",
        lambda s: [*_opening(s), "x" * (70 * 1024)],
        CLOSE_TOO_BIG,
        "",
    ),
    Scenario(
        "wrong-encoding",
        "start announces audio/l16",
        lambda s: [connected_msg(), _start_with(s, encoding="audio/l16")],
        CLOSE_POLICY_VIOLATION,
        "encoding",
        started=False,
    ),
    Scenario(
        "wrong-sample-rate",
        "start announces 16 kHz",
        lambda s: [connected_msg(), _start_with(s, sampleRate=16000)],
        CLOSE_POLICY_VIOLATION,
        "sample rate",
        started=False,
    ),
    Scenario(
        "wrong-channels",
        "start announces 2 channels",
        lambda s: [connected_msg(), _start_with(s, channels=2)],
        CLOSE_POLICY_VIOLATION,
        "channel",
        started=False,
    ),
    Scenario(
        "missing-token",
        "start without the stream token",
        lambda s: [connected_msg(), _with_token(s, None)],
        CLOSE_POLICY_VIOLATION,
        "token",
        started=False,
    ),
    Scenario(
        "forged-token",
        "start with a token that is not painline's",
        lambda s: [connected_msg(), _with_token(s, "v1." + "A" * 24 + ".9999999999." + "B" * 43)],
        CLOSE_POLICY_VIOLATION,
        "not valid for this call",
        started=False,
    ),
    Scenario(
        "media-before-start",
        "media straight after connected",
        lambda s: [connected_msg(), media_msg(s.stream_sid, 1, 0, FRAME, sequence=1)],
        CLOSE_POLICY_VIOLATION,
        "not started",
        started=False,
    ),
    Scenario(
        "connected-repeated",
        "connected sent twice (would hold a socket without a token)",
        lambda s: [connected_msg(), connected_msg()],
        CLOSE_POLICY_VIOLATION,
        "connected repeated",
        started=False,
    ),
    Scenario(
        "second-start",
        "a second start on the same stream",
        lambda s: [*_opening(s), start_msg(s.stream_sid, s.call_sid, s.account_sid, {"token": s.token})],
        CLOSE_POLICY_VIOLATION,
        "second start",
    ),
    Scenario(
        "media-for-another-stream",
        "media whose streamSid is another stream's",
        lambda s: [*_opening(s), media_msg(new_sid("MZ"), 11, 200, FRAME, sequence=12)],
        CLOSE_POLICY_VIOLATION,
        "another stream",
    ),
    Scenario(
        "stop-for-another-stream",
        "stop whose streamSid is another stream's",
        lambda s: [*_opening(s), stop_msg(new_sid("MZ"), s.call_sid, s.account_sid, sequence=12)],
        CLOSE_POLICY_VIOLATION,
        "another stream",
    ),
    Scenario(
        "stop-for-another-call",
        "stop naming another CallSid",
        lambda s: [*_opening(s), stop_msg(s.stream_sid, new_sid("CA"), s.account_sid, sequence=12)],
        CLOSE_POLICY_VIOLATION,
        "another call",
    ),
    Scenario(
        "unknown-event",
        "an event Twilio never sends",
        lambda s: [*_opening(s), '{"event": "hangup"}'],
        CLOSE_POLICY_VIOLATION,
        "unknown event",
    ),
    Scenario(
        "timestamp-jump",
        "media 2 minutes ahead of the last (max gap 60 s)",
        lambda s: [*_opening(s), media_msg(s.stream_sid, 11, 120_000, FRAME, sequence=12)],
        CLOSE_POLICY_VIOLATION,
        "jumps too far ahead",
    ),
    Scenario(
        "stream-too-long",
        "media timestamped after the 4-hour limit",
        lambda s: [*_opening(s), media_msg(s.stream_sid, 11, 4 * 3600 * 1000 + 20, FRAME, sequence=12)],
        CLOSE_POLICY_VIOLATION,
        "longer than allowed",
    ),
    Scenario(
        "duplicate-flood",
        f"{FLOOD_MESSAGES} copies of one media frame, back to back",
        lambda s: _opening(s) + [media_msg(s.stream_sid, 10, 180, FRAME, sequence=11)] * FLOOD_MESSAGES,
        CLOSE_POLICY_VIOLATION,
        "message flood",
    ),
    Scenario(
        "mark-flood",
        f"{FLOOD_MESSAGES} mark events, back to back",
        lambda s: (
            _opening(s)
            + [json.dumps({"event": "mark", "streamSid": s.stream_sid, "mark": {"name": "x"}})] * FLOOD_MESSAGES
        ),
        CLOSE_POLICY_VIOLATION,
        "message flood",
    ),
]

TOLERATED: list[Scenario] = [
    # not errors: Twilio's numbering is informational; audio is placed by timestamp
    Scenario(
        "scrambled-sequence-numbers",
        "sequenceNumber repeated, backwards and skipping",
        lambda s: (
            [connected_msg(), start_msg(s.stream_sid, s.call_sid, s.account_sid, {"token": s.token}, sequence=900)]
            + [media_msg(s.stream_sid, i + 1, 20 * i, FRAME, sequence=(7 * i) % 5) for i in range(50)]
            + [stop_msg(s.stream_sid, s.call_sid, s.account_sid, sequence=0)]
        ),
        CLOSE_NORMAL,
        "stream stopped",
    ),
    Scenario(
        "odd-payload-sizes",
        "payloads of 1..400 bytes instead of 160",
        lambda s: (
            [connected_msg(), start_msg(s.stream_sid, s.call_sid, s.account_sid, {"token": s.token})]
            + [
                media_msg(s.stream_sid, i + 1, 20 * i, FRAME[:1] * (1 + (i * 37) % 400), sequence=i + 2)
                for i in range(100)
            ]
            + [stop_msg(s.stream_sid, s.call_sid, s.account_sid, sequence=200)]
        ),
        CLOSE_NORMAL,
        "stream stopped",
    ),
    Scenario(
        "messages-after-stop",
        "media and another stop after stop (the server stops reading at stop)",
        lambda s: [
            *_opening(s),
            stop_msg(s.stream_sid, s.call_sid, s.account_sid, sequence=12),
            media_msg(s.stream_sid, 11, 200, FRAME, sequence=13),
            stop_msg(s.stream_sid, s.call_sid, s.account_sid, sequence=14),
        ],
        CLOSE_NORMAL,
        "stream stopped",
    ),
]

__all__ = ["FLOOD_MESSAGES", "SCENARIOS", "TOLERATED", "Scenario"]
