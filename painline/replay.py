"""Play an audio file into painline exactly as Twilio would deliver a live call.

:func:`replay_call` goes through every step a real call takes, over real HTTP and a real WebSocket:

1. the voice webhook: a form POST of the fields Twilio sends for an incoming call (random ``CA...``
   CallSid), signed with ``X-Twilio-Signature`` over the *public* URL;
2. the TwiML answer is parsed for ``<Start><Stream url>`` and its ``<Parameter>`` children;
3. the Media Stream: a WebSocket whose handshake carries a signature over the stream URL with no
   parameters; then ``connected``, ``start`` (the parameters as ``customParameters``), one ``media``
   message per 20 ms of 8 kHz mu-law (numbers as strings, base64 payload, track ``inbound``) paced
   in real time (or faster with ``speed``), and ``stop``;
4. the ``<Stream statusCallback>`` POSTs (``stream-started`` / ``stream-stopped``), signed as well.

Which URL is signed and which is reached. Twilio signs the URL it was configured with, and painline
checks signatures against its configured ``public_url``. So ``public_url`` here must equal the
server's ``PAINLINE_PUBLIC_URL``; ``base_url`` is where the requests actually go. For a local run the
two are the same (``http://127.0.0.1:8000``). When the server's public URL is a real host behind a
proxy, the TwiML's ``wss://public.host/twilio/stream`` is signed as given, but the socket is
opened to ``base_url``'s host with the TwiML URL's path: the replay reaches the server directly
while presenting exactly what Twilio would.

Nothing here logs the caller number or the patient reference.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import websocket
from twilio.request_validator import RequestValidator

from analysis.audio import load_audio
from analysis.channel import TELEPHONE_RATE, mulaw_encode, telephone

log = logging.getLogger(__name__)

CHUNK_MS = 20
CHUNK_BYTES = TELEPHONE_RATE * CHUNK_MS // 1000  # 160 bytes of mu-law
VOICE_PATH = "/twilio/voice"
SIGNATURE_HEADER = "X-Twilio-Signature"
API_VERSION = "2010-04-01"
DEFAULT_FROM = "+15551234567"
DEFAULT_TO = "+15557654321"
HTTP_TIMEOUT_S = 10.0


class ReplayError(RuntimeError):
    """The server refused or mis-answered a step of the call (the message says which)."""


def new_sid(prefix: str) -> str:
    """A Twilio-shaped SID: two-letter prefix and 32 lowercase hex digits."""
    return prefix + secrets.token_hex(16)


# ---------------------------------------------------------------------------------------------------
# audio


def load_call_audio(path: str | Path) -> bytes:
    """Any audio file as the 8 kHz mu-law bytes a Twilio stream would carry for it."""
    samples, rate = load_audio(path)
    return mulaw_encode(telephone(samples, rate))


def chunks(mulaw: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """Split into ``size``-byte payloads; the last one is padded with mu-law silence (0xFF)."""
    out = [mulaw[i : i + size] for i in range(0, len(mulaw), size)]
    if out and len(out[-1]) < size:
        out[-1] = out[-1] + b"\xff" * (size - len(out[-1]))
    return out


# ---------------------------------------------------------------------------------------------------
# the Twilio side of the protocol


@dataclass
class StreamMessages:
    """Builds the Media Stream messages of one stream, keeping ``sequenceNumber`` and ``chunk`` right.

    ``sequenceNumber`` counts every message after ``connected`` from 1; ``chunk`` counts media
    messages from 1; ``timestamp`` is milliseconds since the stream started. Numbers are strings,
    as Twilio sends them.
    """

    account_sid: str
    call_sid: str
    stream_sid: str = field(default_factory=lambda: new_sid("MZ"))
    _sequence: int = 0
    _chunk: int = 0

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def connected(self) -> dict[str, object]:
        return {"event": "connected", "protocol": "Call", "version": "1.0.0"}

    def start(self, custom_parameters: dict[str, str]) -> dict[str, object]:
        return {
            "event": "start",
            "sequenceNumber": self._next_sequence(),
            "start": {
                "accountSid": self.account_sid,
                "streamSid": self.stream_sid,
                "callSid": self.call_sid,
                "tracks": ["inbound"],
                "customParameters": dict(custom_parameters),
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": TELEPHONE_RATE, "channels": 1},
            },
            "streamSid": self.stream_sid,
        }

    def media(self, payload: bytes, timestamp_ms: int) -> dict[str, object]:
        self._chunk += 1
        return {
            "event": "media",
            "sequenceNumber": self._next_sequence(),
            "media": {
                "track": "inbound",
                "chunk": str(self._chunk),
                "timestamp": str(timestamp_ms),
                "payload": base64.b64encode(payload).decode("ascii"),
            },
            "streamSid": self.stream_sid,
        }

    def stop(self) -> dict[str, object]:
        return {
            "event": "stop",
            "sequenceNumber": self._next_sequence(),
            "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            "streamSid": self.stream_sid,
        }


def voice_webhook_params(account_sid: str, call_sid: str, from_number: str, to_number: str) -> dict[str, str]:
    """The form fields of Twilio's incoming-call webhook (the location fields left empty)."""
    return {
        "AccountSid": account_sid,
        "ApiVersion": API_VERSION,
        "CallSid": call_sid,
        "CallStatus": "ringing",
        "Called": to_number,
        "CalledCity": "",
        "CalledCountry": "US",
        "CalledState": "",
        "CalledZip": "",
        "Caller": from_number,
        "CallerCity": "",
        "CallerCountry": "US",
        "CallerState": "",
        "CallerZip": "",
        "Direction": "inbound",
        "From": from_number,
        "FromCity": "",
        "FromCountry": "US",
        "FromState": "",
        "FromZip": "",
        "To": to_number,
        "ToCity": "",
        "ToCountry": "US",
        "ToState": "",
        "ToZip": "",
    }


def stream_status_params(
    account_sid: str, call_sid: str, stream_sid: str, event: str, stream_name: str | None = None
) -> dict[str, str]:
    """The form fields of a ``<Stream statusCallback>`` request (unnamed streams use their SID)."""
    return {
        "AccountSid": account_sid,
        "CallSid": call_sid,
        "StreamSid": stream_sid,
        "StreamName": stream_name or stream_sid,
        "StreamEvent": event,
        "Timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }


@dataclass(frozen=True)
class StreamInstruction:
    """What the TwiML told Twilio to do: the stream URL, its parameters and its status callback."""

    url: str
    parameters: dict[str, str]
    status_callback: str | None
    track: str | None


def parse_twiml(body: str) -> StreamInstruction:
    """The ``<Start><Stream>`` in a TwiML response; :class:`ReplayError` if there is none."""
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise ReplayError(f"the voice webhook did not return XML ({exc})") from None
    stream = root.find("./Start/Stream")
    if stream is None or not stream.get("url"):
        raise ReplayError(
            "the voice webhook answered without <Start><Stream>: painline did not take the "
            "call (check the server log: database down, or no PAINLINE_HMAC_KEY?)"
        )
    parameters = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return StreamInstruction(
        url=stream.get("url", ""),
        parameters=parameters,
        status_callback=stream.get("statusCallback"),
        track=stream.get("track"),
    )


def connect_url(stream_url: str, base_url: str) -> str:
    """Where to open the socket: the TwiML URL, re-pointed at ``base_url``'s host if it differs."""
    stream = urllib.parse.urlsplit(stream_url)
    base = urllib.parse.urlsplit(base_url)
    if stream.netloc == base.netloc:
        return stream_url
    scheme = {"https": "wss", "http": "ws"}.get(base.scheme, base.scheme)
    return urllib.parse.urlunsplit((scheme, base.netloc, stream.path, stream.query, ""))


def reroute(url: str, base_url: str) -> str:
    """An http(s) callback URL from the TwiML, re-pointed at ``base_url`` (path and query kept)."""
    target = urllib.parse.urlsplit(url)
    base = urllib.parse.urlsplit(base_url)
    return urllib.parse.urlunsplit((base.scheme, base.netloc, target.path, target.query, ""))


# ---------------------------------------------------------------------------------------------------
# the call


@dataclass
class ReplayResult:
    call_sid: str
    stream_sid: str
    account_sid: str
    twiml: str
    stream: StreamInstruction
    media_messages: int
    audio_s: float
    elapsed_s: float
    close_code: int | None
    sent: list[dict[str, object]] = field(default_factory=list)  # only when record_messages=True


def form_headers(auth_token: str, signed_url: str, params: dict[str, str]) -> dict[str, str]:
    """The headers Twilio sends with a form POST to ``signed_url`` (the public URL it was configured with)."""
    return {
        SIGNATURE_HEADER: RequestValidator(auth_token).compute_signature(signed_url, params),
        "Content-Type": "application/x-www-form-urlencoded",
        "User-Agent": "TwilioProxy/1.1 (painline replay)",
    }


def handshake_headers(auth_token: str, stream_url: str) -> dict[str, str]:
    """The stream handshake's signature: over the TwiML's stream URL with no parameters."""
    return {SIGNATURE_HEADER: RequestValidator(auth_token).compute_signature(stream_url, {})}


def voice_webhook_urls(public_url: str, base_url: str, patient_ref: str | None = None) -> tuple[str, str]:
    """``(signed, reached)``: the webhook URL Twilio signs and the one the request is sent to."""
    query = "?" + urllib.parse.urlencode({"patient_ref": patient_ref}) if patient_ref else ""
    return public_url.rstrip("/") + VOICE_PATH + query, base_url.rstrip("/") + VOICE_PATH + query


def check_voice_answer(status: int, body: str) -> StreamInstruction:
    """The stream instruction of the voice webhook's answer; :class:`ReplayError` for a refusal."""
    if status == 403:
        raise ReplayError(
            "the voice webhook refused the signature (403): the replay's public URL and auth "
            "token must equal the server's PAINLINE_PUBLIC_URL and TWILIO_AUTH_TOKEN"
        )
    if status != 200:
        raise ReplayError(f"the voice webhook answered HTTP {status}")
    return parse_twiml(body)


def _post_form(url: str, signed_url: str, params: dict[str, str], auth_token: str) -> tuple[int, str]:
    data = urllib.parse.urlencode(params).encode("ascii")
    request = urllib.request.Request(
        url, data=data, method="POST", headers=form_headers(auth_token, signed_url, params)
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")
    except urllib.error.URLError as exc:
        raise ReplayError(f"cannot reach {url.split('?', 1)[0]}: {exc.reason}") from None


def _paced(items: list[bytes], speed: float, sleep: Callable[[float], None]) -> Iterator[tuple[int, bytes]]:
    """Yield ``(index, payload)`` on Twilio's 20 ms clock divided by ``speed`` (0: no waiting)."""
    started = time.monotonic()
    for i, item in enumerate(items):
        if speed > 0:
            due = started + i * CHUNK_MS / 1000.0 / speed
            delay = due - time.monotonic()
            if delay > 0:
                sleep(delay)
        yield i, item


def replay_call(
    mulaw: bytes,
    *,
    base_url: str,
    public_url: str,
    auth_token: str,
    from_number: str = DEFAULT_FROM,
    to_number: str = DEFAULT_TO,
    patient_ref: str | None = None,
    speed: float = 1.0,
    status_callbacks: bool = True,
    record_messages: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    stream_base_url: str | None = None,
) -> ReplayResult:
    """Run one call through the server at ``base_url`` (see the module docstring for each step).

    ``stream_base_url`` is where the stream socket is opened when ``painline stream`` serves it on
    an address of its own (no load balancer in front); by default the socket goes to ``base_url``.
    """
    if not auth_token:
        raise ReplayError("no Twilio auth token: set TWILIO_AUTH_TOKEN to the server's token")
    started = time.monotonic()
    account_sid = new_sid("AC")
    call_sid = new_sid("CA")
    webhook_public, webhook_reached = voice_webhook_urls(public_url, base_url, patient_ref)
    params = voice_webhook_params(account_sid, call_sid, from_number, to_number)
    status, body = _post_form(webhook_reached, webhook_public, params, auth_token)
    instruction = check_voice_answer(status, body)

    builder = StreamMessages(account_sid=account_sid, call_sid=call_sid)
    sent: list[dict[str, object]] = []
    target = connect_url(instruction.url, stream_base_url or base_url)
    try:
        ws = websocket.create_connection(
            target,
            header=[f"{k}: {v}" for k, v in handshake_headers(auth_token, instruction.url).items()],
            timeout=HTTP_TIMEOUT_S,
        )
    except websocket.WebSocketBadStatusException as exc:
        raise ReplayError(
            f"the stream handshake was refused (HTTP {exc.status_code}): the signature is "
            f"checked against the server's public URL"
        ) from None
    except OSError as exc:
        raise ReplayError(f"cannot open the stream socket: {exc}") from None

    def send(message: dict[str, object]) -> None:
        ws.send(json.dumps(message))
        if record_messages:
            sent.append(message)

    payloads = chunks(mulaw)
    close_code: int | None = None
    try:
        send(builder.connected())
        send(builder.start(instruction.parameters))
        if status_callbacks and instruction.status_callback:
            _status(instruction, base_url, builder, "stream-started", auth_token)
        for i, payload in _paced(payloads, speed, sleep):
            send(builder.media(payload, i * CHUNK_MS))
        send(builder.stop())
        close_code = _await_close(ws)
    except websocket.WebSocketConnectionClosedException:
        close_code = _await_close(ws)
        raise ReplayError(f"the server closed the stream early (close code {close_code})") from None
    finally:
        ws.close()
    if status_callbacks and instruction.status_callback:
        _status(instruction, base_url, builder, "stream-stopped", auth_token)
    return ReplayResult(
        call_sid=call_sid,
        stream_sid=builder.stream_sid,
        account_sid=account_sid,
        twiml=body,
        stream=instruction,
        media_messages=len(payloads),
        audio_s=len(mulaw) / TELEPHONE_RATE,
        elapsed_s=time.monotonic() - started,
        close_code=close_code,
        sent=sent,
    )


def _status(
    instruction: StreamInstruction, base_url: str, builder: StreamMessages, event: str, auth_token: str
) -> None:
    assert instruction.status_callback is not None
    params = stream_status_params(builder.account_sid, builder.call_sid, builder.stream_sid, event)
    status, _ = _post_form(
        reroute(instruction.status_callback, base_url), instruction.status_callback, params, auth_token
    )
    if status >= 400:
        log.warning("stream status callback %s answered HTTP %d", event, status)


def _await_close(ws: websocket.WebSocket, timeout_s: float = 10.0) -> int | None:
    """Wait for the server's close frame after ``stop``; returns its close code (None if none came)."""
    ws.settimeout(timeout_s)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else None
    except (websocket.WebSocketException, OSError):
        return None


__all__ = [
    "CHUNK_BYTES",
    "CHUNK_MS",
    "ReplayError",
    "ReplayResult",
    "StreamInstruction",
    "StreamMessages",
    "chunks",
    "connect_url",
    "load_call_audio",
    "new_sid",
    "parse_twiml",
    "replay_call",
    "stream_status_params",
    "voice_webhook_params",
]
