"""Voice webhook and stream status callback: signatures, TwiML, patients, calls, a database outage."""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest
from flask import Flask
from rq import Queue
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from painline.config import Settings
from schema.identity import caller_key
from schema.models import AuditEvent, Call, Patient, StreamToken
from telephony import tokens
from tests.telephony.helpers import PUBLIC_URL, STREAM_WSS_URL, make_app
from tests.telephony_fixtures import AUTH_TOKEN, HMAC_KEY, new_sid, sign

CALLER = "+14155550123"


def voice_form(call_sid: str, **extra: str) -> dict[str, str]:
    return {
        "CallSid": call_sid,
        "AccountSid": new_sid("AC"),
        "From": CALLER,
        "To": "+14155550100",
        "CallStatus": "ringing",
        "Direction": "inbound",
        **extra,
    }


def post_signed(
    app: Flask,
    path: str,
    form: dict[str, str],
    query: str = "",
    *,
    token: str = AUTH_TOKEN,
    signed_url: str | None = None,
):
    url = signed_url or f"{PUBLIC_URL}{path}" + (f"?{query}" if query else "")
    headers = {"X-Twilio-Signature": sign(url, form, token)}
    return app.test_client().post(
        path + (f"?{query}" if query else ""), data=form, headers=headers, base_url="http://10.0.0.5:8000"
    )  # not the public host: must not matter


def parse(body: bytes) -> ET.Element:
    return ET.fromstring(body)


def test_good_signature_returns_stream_twiml(telephony_app: Flask, tel_sessions: sessionmaker[Session]) -> None:
    call_sid = new_sid("CA")
    response = post_signed(telephony_app, "/twilio/voice", voice_form(call_sid))
    assert response.status_code == 200 and response.mimetype == "application/xml"
    root = parse(response.data)
    assert [child.tag for child in root] == ["Say", "Start", "Dial"]
    assert root[0].text == Settings().consent_message
    stream = root.find("Start/Stream")
    assert stream is not None
    assert stream.get("url") == STREAM_WSS_URL
    assert stream.get("track") == "inbound_track"
    assert stream.get("statusCallback") == f"{PUBLIC_URL}/twilio/stream-status"
    params = {p.get("name"): p.get("value") for p in stream.findall("Parameter")}
    assert set(params) == {"token"}
    assert CALLER not in response.get_data(as_text=True)
    dial = root.find("Dial")
    assert dial is not None and dial.text == "+15550100"
    # the token works for this call and is on record, unused
    token = params["token"]
    assert token is not None
    nonce = tokens.verify(token, call_sid, HMAC_KEY, datetime.now(UTC))
    with tel_sessions() as session:
        row = session.get(StreamToken, nonce)
        assert row is not None and row.used_at is None and row.call_sid == call_sid
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        assert call.consent is True
        patient = session.get(Patient, call.patient_id)
        assert patient is not None and patient.key == caller_key(CALLER, HMAC_KEY.encode())
        audit = session.scalars(select(AuditEvent).where(AuditEvent.object_id == str(call.id))).one()
        assert audit.action == "call.received" and CALLER not in str(audit.detail)


@pytest.mark.parametrize("case", ["missing", "wrong-token", "tampered-form", "host-url"])
def test_bad_signature_is_403(telephony_app: Flask, case: str, tel_sessions: sessionmaker[Session]) -> None:
    form = voice_form(new_sid("CA"))
    client = telephony_app.test_client()
    if case == "missing":
        response = client.post("/twilio/voice", data=form)
    elif case == "wrong-token":
        response = post_signed(telephony_app, "/twilio/voice", form, token="not-the-auth-token")
    elif case == "tampered-form":
        headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twilio/voice", form)}
        response = client.post("/twilio/voice", data={**form, "From": "+15550000000"}, headers=headers)
    else:  # signed for the URL the app sees, not the configured public URL
        response = post_signed(telephony_app, "/twilio/voice", form, signed_url="http://10.0.0.5:8000/twilio/voice")
    assert response.status_code == 403
    with tel_sessions() as session:
        assert session.scalars(select(Call)).all() == []


def test_query_string_is_part_of_the_signed_url_and_patient_ref_is_used(
    telephony_app: Flask, tel_sessions: sessionmaker[Session]
) -> None:
    call_sid = new_sid("CA")
    response = post_signed(telephony_app, "/twilio/voice", voice_form(call_sid), query="patient_ref=MRN-42")
    assert response.status_code == 200
    params = {p.get("name"): p.get("value") for p in parse(response.data).findall("Start/Stream/Parameter")}
    assert params["patient_ref"] == "MRN-42"
    with tel_sessions() as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        patient = session.get(Patient, call.patient_id)
        assert patient is not None and patient.key == "ref:MRN-42"
    # the same query string, signed without it, is refused
    form = voice_form(new_sid("CA"))
    headers = {"X-Twilio-Signature": sign(f"{PUBLIC_URL}/twilio/voice", form)}
    refused = telephony_app.test_client().post("/twilio/voice?patient_ref=MRN-42", data=form, headers=headers)
    assert refused.status_code == 403


def test_repeat_webhook_and_repeat_caller_reuse_rows(telephony_app: Flask, tel_sessions: sessionmaker[Session]) -> None:
    first, second = new_sid("CA"), new_sid("CA")
    for call_sid in (first, first, second):
        assert post_signed(telephony_app, "/twilio/voice", voice_form(call_sid)).status_code == 200
    with tel_sessions() as session:
        calls = session.scalars(select(Call).order_by(Call.id)).all()
        assert [c.call_sid for c in calls] == [first, second]
        assert calls[0].patient_id == calls[1].patient_id
        assert len(session.scalars(select(Patient)).all()) == 1
        assert len(session.scalars(select(StreamToken)).all()) == 3


def test_anonymous_caller_gets_a_call_without_a_patient(
    telephony_app: Flask, tel_sessions: sessionmaker[Session]
) -> None:
    call_sid = new_sid("CA")
    response = post_signed(telephony_app, "/twilio/voice", voice_form(call_sid, From="anonymous"))
    assert response.status_code == 200 and parse(response.data).find("Start/Stream") is not None
    with tel_sessions() as session:
        assert session.scalars(select(Call).where(Call.call_sid == call_sid)).one().patient_id is None


@pytest.mark.parametrize(
    ("next_settings", "verb", "text"),
    [
        ({"next_redirect_url": "https://hotline.example/flow"}, "Redirect", "https://hotline.example/flow"),
        ({"next_enqueue": "nurses"}, "Enqueue", "nurses"),
    ],
)
def test_next_step_follows_the_stream(
    tel_settings: Settings,
    tel_sessions: sessionmaker[Session],
    rq_queue: Queue,
    next_settings: dict[str, str],
    verb: str,
    text: str,
) -> None:
    app = make_app(tel_settings.with_(next_dial="", consent_message="", **next_settings), tel_sessions, rq_queue)
    root = parse(post_signed(app, "/twilio/voice", voice_form(new_sid("CA"))).data)
    assert [child.tag for child in root] == ["Start", verb]
    assert root[1].text == text


def test_database_down_still_continues_the_call(
    tel_settings: Settings,
    down_sessions: sessionmaker[Session],
    rq_queue: Queue,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = make_app(tel_settings, down_sessions, rq_queue)
    with caplog.at_level(logging.INFO):
        response = post_signed(app, "/twilio/voice", voice_form(new_sid("CA")))
    assert response.status_code == 200
    root = parse(response.data)
    assert [child.tag for child in root] == ["Dial"]  # no stream, but the hotline's flow goes on
    assert "continuing call without stream" in caplog.text
    assert CALLER not in caplog.text and CALLER[2:] not in caplog.text


def test_missing_hmac_key_continues_without_stream(
    tel_settings: Settings, tel_sessions: sessionmaker[Session], rq_queue: Queue
) -> None:
    app = make_app(tel_settings.with_(hmac_key=""), tel_sessions, rq_queue)
    root = parse(post_signed(app, "/twilio/voice", voice_form(new_sid("CA"))).data)
    assert root.find("Start") is None and root.find("Dial") is not None


def test_stream_status_callback_records_events(telephony_app: Flask, tel_sessions: sessionmaker[Session]) -> None:
    call_sid = new_sid("CA")
    post_signed(telephony_app, "/twilio/voice", voice_form(call_sid))
    base = {
        "AccountSid": new_sid("AC"),
        "CallSid": call_sid,
        "StreamSid": new_sid("MZ"),
        "StreamName": "x",
        "Timestamp": "2025-03-01T12:00:00Z",
    }
    started = post_signed(telephony_app, "/twilio/stream-status", {**base, "StreamEvent": "stream-started"})
    assert started.status_code == 204
    with tel_sessions() as session:
        assert session.scalars(select(Call.stream_status).where(Call.call_sid == call_sid)).one() == "started"
    post_signed(
        telephony_app,
        "/twilio/stream-status",
        {**base, "StreamEvent": "stream-error", "StreamError": "31920 handshake failed"},
    )
    with tel_sessions() as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        assert (call.stream_status, call.stream_error) == ("error", "31920 handshake failed")
    unsigned = telephony_app.test_client().post("/twilio/stream-status", data={**base, "StreamEvent": "stream-stopped"})
    assert unsigned.status_code == 403
