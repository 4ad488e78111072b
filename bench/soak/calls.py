"""Calls for the soak: RAVDESS speech as 8 kHz mu-law, played in as Twilio would, ending in various ways.

A normal call goes through :func:`painline.replay.replay_call` (webhook, signed socket, paced media,
``stop``). A faulty call is built from the same pieces but ends badly: the socket is dropped halfway
without ``stop`` or close frame, or a malformed message is sent halfway (the server closes that
stream with 1007/1008 and keeps what it had).
"""

from __future__ import annotations

import contextlib
import csv
import json
import random
import socket
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import websocket
from twilio.request_validator import RequestValidator

from analysis.audio import load_audio
from analysis.channel import TELEPHONE_RATE, mulaw_encode, telephone
from painline.replay import (
    CHUNK_MS,
    ReplayError,
    StreamMessages,
    chunks,
    connect_url,
    new_sid,
    parse_twiml,
    replay_call,
    voice_webhook_params,
)

GAP_S = 0.8  # silence between clips: longer than the VAD hangover, so each clip is its own utterance


def load_clip_pool(data_dir: Path, count: int, rng: random.Random) -> list[np.ndarray]:
    """``count`` random RAVDESS clips on the telephone channel (8 kHz float, before mu-law)."""
    manifest = data_dir / "ravdess" / "manifest.csv"
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    chosen = rng.sample(rows, min(count, len(rows)))
    pool = []
    for row in chosen:
        samples, rate = load_audio(data_dir / "ravdess" / row["path"])
        pool.append(telephone(samples, rate))
    return pool


def compose_call(pool: list[np.ndarray], rng: random.Random) -> bytes:
    """One or two clips with a gap and some room tone: a 3-6 s call, as mu-law bytes."""
    pieces: list[np.ndarray] = [np.zeros(int(0.3 * TELEPHONE_RATE), dtype=np.float32)]
    for clip in rng.sample(pool, rng.choice((1, 2))):
        pieces.append(clip.astype(np.float32))
        pieces.append(np.zeros(int(GAP_S * TELEPHONE_RATE), dtype=np.float32))
    audio = np.concatenate(pieces)
    audio = audio + np.random.default_rng(rng.randrange(1 << 30)).normal(0, 0.001, audio.size).astype(np.float32)
    return mulaw_encode(np.clip(audio, -1.0, 1.0))


@dataclass
class CallResult:
    kind: str  # normal | drop | malformed
    outcome: str  # streamed | no-stream (webhook answered without a stream) | error
    detail: str = ""
    close_code: int | None = None


def voice_webhook(base_url: str, auth_token: str, call_sid: str, *, timeout_s: float = 15.0) -> tuple[int, str]:
    """POST Twilio's signed incoming-call webhook; returns the HTTP status and the TwiML."""
    params = voice_webhook_params(new_sid("AC"), call_sid, "+15551234567", "+15557654321")
    url = base_url + "/twilio/voice"
    request = urllib.request.Request(
        url,
        data=urllib.parse.urlencode(params).encode(),
        method="POST",
        headers={
            "X-Twilio-Signature": RequestValidator(auth_token).compute_signature(url, params),
            "Content-Type": "application/x-www-form-urlencoded",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def faulty_call(mulaw: bytes, base_url: str, auth_token: str, kind: str, speed: float) -> CallResult:
    """Stream half the call, then drop the socket (``drop``) or send garbage (``malformed``)."""
    call_sid = new_sid("CA")
    try:
        status, twiml = voice_webhook(base_url, auth_token, call_sid)
    except OSError as exc:  # the server is restarting
        return CallResult(kind, "error", type(exc).__name__)
    if status != 200:
        return CallResult(kind, "error", f"webhook HTTP {status}")
    try:
        instruction = parse_twiml(twiml)
    except ReplayError:
        return CallResult(kind, "no-stream")
    signature = RequestValidator(auth_token).compute_signature(instruction.url, {})
    try:
        ws = websocket.create_connection(
            connect_url(instruction.url, base_url), header=[f"X-Twilio-Signature: {signature}"], timeout=15
        )
    except (websocket.WebSocketException, OSError) as exc:
        return CallResult(kind, "error", type(exc).__name__)
    messages = StreamMessages(account_sid=new_sid("AC"), call_sid=call_sid)
    close_code = None
    try:
        ws.send(json.dumps(messages.connected()))
        ws.send(json.dumps(messages.start(instruction.parameters)))
        payloads = chunks(mulaw)
        half = payloads[: max(1, len(payloads) * 2 // 3)]
        started = time.monotonic()
        for i, payload in enumerate(half):
            delay = started + i * CHUNK_MS / 1000.0 / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            ws.send(json.dumps(messages.media(payload, i * CHUNK_MS)))
        if kind == "drop":
            sock = ws.sock
            assert sock is not None, "an open WebSocket has a socket"
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            return CallResult(kind, "streamed")
        ws.send('{"event": "media", "media": {"payload": "%%% not base64')
        ws.settimeout(10)
        try:
            while True:
                opcode, data = ws.recv_data(control_frame=True)
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    close_code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                    break
        except (websocket.WebSocketException, OSError):
            pass
        return CallResult(kind, "streamed", close_code=close_code)
    except (websocket.WebSocketException, OSError) as exc:
        return CallResult(kind, "error", type(exc).__name__)
    finally:
        with contextlib.suppress(websocket.WebSocketException, OSError):
            ws.close()


def normal_call(mulaw: bytes, base_url: str, auth_token: str, speed: float) -> CallResult:
    try:
        result = replay_call(
            mulaw, base_url=base_url, public_url=base_url, auth_token=auth_token, speed=speed, status_callbacks=False
        )
    except ReplayError as exc:
        if "without <Start><Stream>" in str(exc):
            return CallResult("normal", "no-stream")
        return CallResult("normal", "error", str(exc)[:200])
    except (websocket.WebSocketException, OSError) as exc:
        return CallResult("normal", "error", type(exc).__name__)
    return CallResult("normal", "streamed", close_code=result.close_code)
