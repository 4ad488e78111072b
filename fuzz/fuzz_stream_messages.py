"""atheris harness: Media Stream frames into the parser and a streaming StreamSession.

Run: ``python fuzz/fuzz_stream_messages.py -atheris_runs=20000`` (any libFuzzer flag works; pass a
directory to keep a corpus). A crash is any exception other than ProtocolError with a documented
close code, or a parsed message that breaks the invariants the rest of painline relies on.

Why coverage-guided fuzzing on top of the hypothesis tests: hypothesis explores the shapes we thought
of; libFuzzer follows branch coverage of ``telephony`` itself, so it finds inputs that reach parser,
jitter-buffer and segmenter paths nobody wrote a strategy for. Three input modes share one budget:
raw frames, documented messages with fuzzed field values, and documented messages with fuzz bytes
spliced into their JSON text. The session runs without a database (its call is not persisted), so
the harness needs no services and each input costs microseconds.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import atheris

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in a checkout

with atheris.instrument_imports(include=["telephony"]):
    from telephony.messages import (
        CLOSE_INVALID_DATA,
        CLOSE_POLICY_VIOLATION,
        CLOSE_TOO_BIG,
        MAX_PAYLOAD_BYTES,
        Media,
        ProtocolError,
        Start,
        parse_message,
    )
    from telephony.session import StreamConfig, StreamSession, StreamState

DOCUMENTED_CODES = frozenset({CLOSE_INVALID_DATA, CLOSE_POLICY_VIOLATION, CLOSE_TOO_BIG})
STREAM = "MZ" + "0" * 32
CALL = "CA" + "0" * 32
ACCOUNT = "AC" + "0" * 32
EVENTS = ("connected", "start", "media", "stop", "mark", "dtmf", "clear", "")
TRACKS = ("inbound", "outbound", "both", "")
MAX_FRAMES = 24


def streaming_session() -> StreamSession:
    """A session already past ``start`` (token checks need the database; they are tested elsewhere)."""

    def no_database() -> Any:
        raise AssertionError("the harness session must not reach the database")

    session = StreamSession(no_database, None, StreamConfig(hmac_key="fuzz", flood_burst_messages=8))
    session.state = StreamState.STREAMING
    session.stream_sid, session.call_sid = STREAM, CALL
    session._streaming_since = 0.0
    return session


def fuzzed_value(fdp: atheris.FuzzedDataProvider) -> Any:
    """A JSON value of a fuzzer-chosen type: the parser's type checks are the target."""
    kind = fdp.ConsumeIntInRange(0, 6)
    if kind == 0:
        return fdp.ConsumeInt(8)
    if kind == 1:
        return str(fdp.ConsumeInt(8))
    if kind == 2:
        return fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 40))
    if kind == 3:
        return fdp.ConsumeRegularFloat()
    if kind == 4:
        return None
    if kind == 5:
        return [fdp.ConsumeIntInRange(0, 9)]
    return {"k": fdp.ConsumeUnicode(4)}


def structured_frame(fdp: atheris.FuzzedDataProvider) -> str:
    """A documented-looking message whose values the fuzzer picks (often valid, often not)."""
    event = EVENTS[fdp.ConsumeIntInRange(0, len(EVENTS) - 1)]
    valid = fdp.ConsumeBool()
    message: dict[str, Any] = {
        "event": event,
        "streamSid": STREAM if valid else fuzzed_value(fdp),
        "sequenceNumber": str(fdp.ConsumeIntInRange(0, 10**6)),
    }
    if event == "media":
        payload = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 400))
        encoded = base64.b64encode(payload).decode() if fdp.ConsumeBool() else fdp.ConsumeUnicode(12)
        message["media"] = {
            "track": TRACKS[fdp.ConsumeIntInRange(0, len(TRACKS) - 1)],
            "chunk": str(fdp.ConsumeIntInRange(0, 10**6)),
            "timestamp": str(fdp.ConsumeIntInRange(0, 200_000)) if valid else fuzzed_value(fdp),
            "payload": encoded,
        }
    elif event == "start":
        message["start"] = {
            "streamSid": STREAM,
            "callSid": CALL,
            "accountSid": ACCOUNT,
            "tracks": ["inbound"],
            "customParameters": {"token": fdp.ConsumeUnicode(20)},
            "mediaFormat": {
                "encoding": "audio/x-mulaw" if valid else fuzzed_value(fdp),
                "sampleRate": 8000 if fdp.ConsumeBool() else fuzzed_value(fdp),
                "channels": 1 if fdp.ConsumeBool() else fuzzed_value(fdp),
            },
        }
    elif event == "stop":
        message["stop"] = {"accountSid": ACCOUNT, "callSid": CALL if valid else fuzzed_value(fdp)}
    elif event == "mark":
        message["mark"] = {"name": fuzzed_value(fdp)}
    elif event == "dtmf":
        message["dtmf"] = {"track": "inbound_track", "digit": fuzzed_value(fdp)}
    return json.dumps(message, allow_nan=True)


def spliced_frame(fdp: atheris.FuzzedDataProvider) -> bytes:
    """A valid media message's bytes with a fuzz-chosen span replaced by fuzz bytes."""
    base = json.dumps(
        {
            "event": "media",
            "streamSid": STREAM,
            "media": {
                "track": "inbound",
                "chunk": "1",
                "timestamp": "20",
                "payload": base64.b64encode(b"\xff" * 160).decode(),
            },
        }
    ).encode()
    at = fdp.ConsumeIntInRange(0, len(base))
    cut = fdp.ConsumeIntInRange(0, len(base) - at)
    return base[:at] + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 32)) + base[at + cut :]


def check_message(raw: str | bytes) -> None:
    """The parser alone: a message or a documented ProtocolError, and parsed messages are sane."""
    try:
        message = parse_message(raw)
    except ProtocolError as exc:
        if exc.close_code not in DOCUMENTED_CODES or not exc.reason:
            raise AssertionError(f"undocumented close {exc.close_code} ({exc.reason})") from None
        return
    if isinstance(message, Media) and len(message.payload) > MAX_PAYLOAD_BYTES:
        raise AssertionError("payload over the cap parsed")
    if isinstance(message, Start) and (message.sample_rate, message.channels) != (8000, 1):
        raise AssertionError("unsupported media format parsed")


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    frames: list[str | bytes] = []
    for _ in range(fdp.ConsumeIntInRange(1, MAX_FRAMES)):
        mode = fdp.ConsumeIntInRange(0, 3)
        if mode == 0:
            frames.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 300)))
        elif mode == 1:
            frames.append(fdp.ConsumeUnicode(fdp.ConsumeIntInRange(0, 300)))
        elif mode == 2:
            frames.append(structured_frame(fdp))
        else:
            frames.append(spliced_frame(fdp))
    session = streaming_session()
    for raw in frames:
        check_message(raw)
        try:
            session.receive(raw)
        except ProtocolError as exc:
            if exc.close_code not in DOCUMENTED_CODES:
                raise AssertionError(f"session closed with undocumented code {exc.close_code}") from None
            break
    # the end of a stream: flush everything still buffered (what finish() does, minus the database)
    for frame in session.jitter.flush():
        session.segmenter.push(frame.timestamp_ms, frame.data)
    session.segmenter.flush()


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
