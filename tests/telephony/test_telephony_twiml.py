"""TwiML building and public-URL reconstruction (pure, no app)."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from telephony.signatures import is_valid, public_http_url, public_ws_url
from telephony.twiml import NextStep, continue_only, stream_response
from tests.telephony_fixtures import AUTH_TOKEN, sign


def test_stream_response_order_and_attributes() -> None:
    root = ET.fromstring(
        stream_response(
            stream_url="wss://h.example/twilio/stream",
            status_callback_url="https://h.example/twilio/stream-status",
            token="tok",
            next_step=NextStep(redirect_url="https://hotline.example/next"),
            consent_message="Notice.",
            patient_ref="P-7",
        )
    )
    assert [c.tag for c in root] == ["Say", "Start", "Redirect"]
    stream = root.find("Start/Stream")
    assert stream is not None and stream.get("statusCallbackMethod") == "POST"
    assert [(p.get("name"), p.get("value")) for p in stream] == [("token", "tok"), ("patient_ref", "P-7")]
    redirect = root.find("Redirect")
    assert redirect is not None and redirect.get("method") == "POST"


def test_next_step_priority_and_continue_only() -> None:
    both = NextStep(redirect_url="https://hotline.example/next", dial="+15550100", enqueue="q")
    assert [c.tag for c in ET.fromstring(continue_only(both))] == ["Redirect"]
    assert [c.tag for c in ET.fromstring(continue_only(NextStep(dial="+15550100")))] == ["Dial"]
    assert not NextStep().configured and list(ET.fromstring(continue_only(NextStep()))) == []


def test_public_urls_come_from_configuration() -> None:
    assert (
        public_http_url("https://p.example/", "/twilio/voice", b"a=1&b=2") == "https://p.example/twilio/voice?a=1&b=2"
    )
    assert public_ws_url("https://p.example", "/twilio/stream") == "wss://p.example/twilio/stream"
    assert public_ws_url("http://localhost:8000/base/", "/twilio/stream") == "ws://localhost:8000/base/twilio/stream"


def test_signature_check_needs_token_and_signature() -> None:
    url = "https://p.example/twilio/voice"
    good = sign(url, {"CallSid": "CA1"})
    assert is_valid(AUTH_TOKEN, url, {"CallSid": "CA1"}, good)
    assert not is_valid("", url, {"CallSid": "CA1"}, good)
    assert not is_valid(AUTH_TOKEN, url, {"CallSid": "CA1"}, None)
    assert not is_valid(AUTH_TOKEN, url, {"CallSid": "CA2"}, good)
