"""Each bad-stream class over a real WebSocket to the real app, beside a good call on the same server.

The app is :func:`painline.app.create_app` served by werkzeug (``app_server``), on real PostgreSQL and
Redis. Both calls start as Twilio starts them: a signed ``POST /twilio/voice`` whose TwiML carries the
stream token, then a signed WebSocket handshake. The good call streams half its audio, the bad stream
runs to its close code, the good call streams the rest: it must close normally with every utterance
saved and queued, and the server must still answer ``/healthz``.
"""

from __future__ import annotations

import json
import struct
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import replace

import pytest
import requests
import websocket
from sqlalchemy import select

from painline.app import settings_of, telephony_config
from schema.models import Call, CallStatus, Utterance
from telephony.messages import CLOSE_NORMAL
from telephony.signatures import public_ws_url
from tests.app_fixtures import AUTH_TOKEN, AppServer
from tests.badinput.scenarios import SCENARIOS, TOLERATED, Frame, Scenario
from tests.reliability import ReliabilityRecorder
from tests.stream_servers import running_stream_server
from tests.telephony_fixtures import TwilioStream, new_sid, sign, synthetic_call

BURSTS = [(1.0, 2.0), (4.5, 1.5), (7.5, 2.5)]
TOTAL_S = 11.0


def start_call(server: AppServer) -> TwilioStream:
    """The real voice webhook, signed as Twilio signs it; returns the stream it told Twilio to open."""
    call_sid = new_sid("CA")
    form = {"CallSid": call_sid, "AccountSid": new_sid("AC"), "From": "+14155550123", "To": "+14155550100"}
    url = f"{server.url}/twilio/voice"
    response = requests.post(url, data=form, headers={"X-Twilio-Signature": sign(url, form, AUTH_TOKEN)}, timeout=10)
    assert response.status_code == 200, response.text
    parameters = {p.get("name"): p.get("value") for p in ET.fromstring(response.content).iter("Parameter")}
    token = parameters["token"]
    assert token is not None
    return TwilioStream(call_sid=call_sid, token=token)


@pytest.fixture(params=["flask", "asyncio"])
def socket_server(request: pytest.FixtureRequest, app_server: AppServer) -> Iterator[AppServer]:
    """The app, its stream served by the Flask route or by ``painline stream``'s server."""
    if request.param == "flask":
        yield app_server
        return
    app = app_server.app
    config = telephony_config(settings_of(app))
    with running_stream_server(app.extensions["painline.sessions"], app_server.queue, config) as stream:
        yield replace(app_server, stream_port=stream.port)


def open_stream(server: AppServer) -> websocket.WebSocket:
    signed = public_ws_url(server.settings.public_url, "/twilio/stream")
    header = [f"X-Twilio-Signature: {sign(signed, None, AUTH_TOKEN)}"]
    return websocket.create_connection(server.stream_url, header=header, timeout=20)


def send_all(ws: websocket.WebSocket, frames: Sequence[Frame]) -> int:
    """Send until done or the server closes on us; returns how many frames went out."""
    for i, raw in enumerate(frames):
        try:
            if isinstance(raw, bytes):
                ws.send_binary(raw)
            else:
                ws.send(raw)
        except (websocket.WebSocketConnectionClosedException, OSError):  # the server closed on us
            return i
    return len(frames)


def read_close(ws: websocket.WebSocket) -> tuple[int, str]:
    """The server's close frame (code, reason); data frames before it are skipped.

    Raw frames, so websocket-client does not answer the close itself: the server may already have
    dropped the TCP connection, and that reply would fail with a broken pipe. No close handshake is
    owed by this side for the test's purposes: the caller just shuts the socket afterwards.
    """
    try:
        while True:
            frame = ws.recv_frame()
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                data = frame.data
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                return code, data[2:].decode("utf-8", "replace")
    except (websocket.WebSocketConnectionClosedException, OSError):
        return 1006, "connection dropped without a close frame"


def send_and_read_close(ws: websocket.WebSocket, frames: Sequence[Frame]) -> tuple[int, str]:
    """Send every frame while another thread waits for the close frame.

    A flood is still being sent when the server closes; reading concurrently takes the close frame
    off the socket as soon as it arrives, before the reset that follows a close with unread data.
    """
    closed: list[tuple[int, str]] = []
    reader = threading.Thread(target=lambda: closed.append(read_close(ws)), daemon=True)
    reader.start()
    send_all(ws, frames)
    reader.join(timeout=60)
    ws.shutdown()
    return closed[0] if closed else (1006, "no close frame within 60 s")


def utterances_of(server: AppServer, call_sid: str) -> tuple[str, list[Utterance]]:
    with server.app.extensions["painline.sessions"]() as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        rows = session.scalars(select(Utterance).where(Utterance.call_id == call.id).order_by(Utterance.seq)).all()
        return call.status, list(rows)


def run_beside_good_call(server: AppServer, scenario: Scenario) -> tuple[tuple[int, str], dict[str, object]]:
    """The bad stream between the two halves of a good call; returns its close and the good call's fate."""
    good, bad = start_call(server), start_call(server)
    good_frames = good.messages(synthetic_call(BURSTS, TOTAL_S))
    half = len(good_frames) // 2
    good_ws = open_stream(server)
    assert send_all(good_ws, good_frames[:half]) == half
    closed = send_and_read_close(open_stream(server), scenario.build(bad))
    assert send_all(good_ws, good_frames[half:]) == len(good_frames) - half
    good_close = read_close(good_ws)
    good_ws.shutdown()
    status, utterances = utterances_of(server, good.call_sid)
    queued = {f"score-utterance-{u.id}" for u in utterances} <= set(server.queue.job_ids)
    health = requests.get(f"{server.url}/healthz", timeout=10)
    return closed, {
        "good_close": good_close[0],
        "good_status": status,
        "utterances": len(utterances),
        "queued": queued,
        "healthz": health.status_code,
    }


def good_call_unaffected(fate: dict[str, object]) -> bool:
    return fate == {
        "good_close": CLOSE_NORMAL,
        "good_status": CallStatus.ENDED.value,
        "utterances": len(BURSTS),
        "queued": True,
        "healthz": 200,
    }


@pytest.mark.parametrize("scenario", SCENARIOS + TOLERATED, ids=[s.name for s in SCENARIOS + TOLERATED])
def test_bad_stream_closes_with_its_code_and_the_good_call_carries_on(
    socket_server: AppServer, scenario: Scenario, reliability: ReliabilityRecorder
) -> None:
    (code, reason), fate = run_beside_good_call(socket_server, scenario)
    ok = code == scenario.code and scenario.reason in reason and good_call_unaffected(fate)
    stream_process = socket_server.stream_port is not None
    reliability.record_outcome(
        f"bad-input-socket-{scenario.name}" + ("-stream-process" if stream_process else ""),
        "bad input",
        ("over painline stream's socket" if stream_process else "over the real socket")
        + f": {scenario.detail}; expect close {scenario.code}, while a concurrent good call on "
        "the same server closes 1000 with all utterances saved and queued, and /healthz answers 200",
        survived=ok,
        lost=max(0, len(BURSTS) - int(fate["utterances"])),  # type: ignore[call-overload]
        close_code=code,
        detected=len(BURSTS),
        saved=fate["utterances"],
    )
    assert (code, scenario.reason in reason) == (scenario.code, True), reason
    assert good_call_unaffected(fate), fate


def test_binary_garbage_between_good_frames(socket_server: AppServer) -> None:
    """Random binary frames on one socket, many sockets at once: each is closed, the server answers."""
    codes = []
    for payload in (b"\x00" * 10, json.dumps({"event": "connected"}).encode() + b"\xff", b"{}" * 10):
        codes.append(send_and_read_close(open_stream(socket_server), [payload])[0])
    assert codes == [1007, 1007, 1007]
    assert requests.get(f"{socket_server.url}/healthz", timeout=10).status_code == 200
