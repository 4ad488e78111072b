"""Every Twilio-facing POST route, fed hypothesis-generated form bodies that carry *valid* signatures.

A signature only proves Twilio (or whoever holds the auth token) sent the request, not that its
fields are sane, so the webhooks must cope with anything a signed form can hold: missing fields,
duplicate keys, huge or unicode values, CallSids of every wrong shape. The contract: 2xx with
well-formed TwiML (voice) or an empty 204 (status), or a clear 4xx; never a 5xx, never a traceback.
Oversized bodies are refused with 413 before they are parsed; bad signatures with 403.

Routes are found from ``app.url_map`` (the telephony blueprint's POST rules), so a new webhook is
fuzzed without editing this file.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import quote

import pytest
import requests
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from twilio.request_validator import RequestValidator
from werkzeug.datastructures import MultiDict
from werkzeug.test import TestResponse

from painline.app import configure, settings_of
from schema.models import Call, Patient
from telephony.blueprint import BLUEPRINT_NAME
from telephony.webhooks import MAX_WEBHOOK_BYTES
from tests.app_fixtures import AUTH_TOKEN, AppServer
from tests.reliability import ReliabilityRecorder

PUBLIC_URL = "https://painline.example"
FIELDS = (
    "CallSid",
    "AccountSid",
    "From",
    "To",
    "Caller",
    "CallStatus",
    "Direction",
    "ApiVersion",
    "StreamSid",
    "StreamEvent",
    "StreamError",
    "StreamName",
    "Timestamp",
    "patient_ref",
)

# -- strategies -----------------------------------------------------------------------------------------

# anything that survives form encoding (lone surrogates cannot be sent as UTF-8)
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)
nasty_text = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "a\x00b",
        "\r\n",
        "\ufffe",
        "\uffff",
        "\u202e",
        "\U0001f600",
        "<Response/>",
        "]]>",
        "&amp;",
        "'; DROP TABLE calls; --",
        "%00",
        "+14155550123",
        "anonymous",
        "client:alice",
        "sip:x@y",
    ]
)
huge = st.integers(min_value=256, max_value=20_000).map(lambda n: "Z" * n)
valid_call_sids = st.from_regex(r"CA[0-9a-f]{32}", fullmatch=True)
call_sids = st.one_of(
    valid_call_sids,
    st.from_regex(r"[A-Za-z0-9]{65,80}", fullmatch=True),  # too long
    st.from_regex(r"CA[0-9a-f]{0,8}[ ;/.\-'\"<>][0-9a-f]{0,8}", fullmatch=True),  # punctuation
    st.sampled_from(["", "CA", "CA١٢٣", "ＣＡ１２", "ca" + "0" * 32, "CA" + "0" * 32 + "\n"]),
    text,
)
values = text | nasty_text | huge | st.integers().map(str) | st.floats().map(str)
stream_events = st.sampled_from(["stream-started", "stream-stopped", "stream-error", "STREAM-STARTED", "", "x"])


@st.composite
def twilio_forms(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Form pairs: some of Twilio's fields (possibly repeated, wrong or missing) plus unknown keys."""
    pairs: list[tuple[str, str]] = []
    if draw(st.integers(min_value=0, max_value=3)):  # mostly present, and then mostly well-formed, so the
        valid = draw(st.booleans())  # deeper branches (patient, stream status) get exercised
        pairs.append(("CallSid", draw(valid_call_sids if valid else call_sids)))
    if draw(st.booleans()):
        pairs.append(("StreamEvent", draw(stream_events)))
    for _ in range(draw(st.integers(min_value=0, max_value=8))):
        key = draw(st.sampled_from(FIELDS) | st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=20))
        pairs.append((key, draw(values | call_sids)))
    if len(pairs) > 0 and draw(st.booleans()):  # duplicate a key with another value
        key, _ = draw(st.sampled_from(pairs))
        pairs.append((key, draw(values)))
    return draw(st.permutations(pairs))


queries = st.one_of(
    st.just(""),
    (text | nasty_text | huge.map(lambda s: s[:300])).map(lambda ref: "patient_ref=" + quote(ref, safe="")),
)


def twilio_post_routes(app: Flask) -> list[str]:
    """Every POST rule of the telephony blueprint (the routes Twilio calls)."""
    return sorted(
        rule.rule
        for rule in app.url_map.iter_rules()
        if rule.endpoint.startswith(f"{BLUEPRINT_NAME}.") and "POST" in (rule.methods or ())
    )


def signed_post(
    app: Flask, path: str, pairs: list[tuple[str, str]], query: str = "", *, signature: str | None = None
) -> TestResponse:
    """POST the form as Twilio would, signed with the auth token over the configured public URL."""
    form = MultiDict(pairs)
    target = path + (f"?{query}" if query else "")
    if signature is None:
        signature = RequestValidator(AUTH_TOKEN).compute_signature(PUBLIC_URL + target, form)
    return app.test_client().post(target, data=form, headers={"X-Twilio-Signature": signature})


def assert_clean(response: TestResponse, route: str) -> None:
    """2xx with a well-formed body for that route, or a 4xx other than 403; no 5xx, no traceback."""
    body = response.get_data(as_text=True)
    assert "Traceback" not in body and 'File "' not in body
    assert response.status_code < 500, (response.status_code, body[:300])
    assert response.status_code != 403, "a valid signature was refused: the test signs wrongly"
    if response.status_code == 200:
        assert response.mimetype == "application/xml"
        root = ET.fromstring(response.data)  # Twilio must be able to parse it
        assert root.tag == "Response"
    elif response.status_code == 204:
        assert response.data == b""
    else:
        assert 400 <= response.status_code < 500


@pytest.fixture
def twilio_app(painline_app: Flask) -> Flask:
    """The real app, believing it is served at PUBLIC_URL (signatures are checked against that)."""
    configure(painline_app, settings_of(painline_app).with_(public_url=PUBLIC_URL))
    return painline_app


def test_the_fuzzed_routes_are_all_the_twilio_routes(twilio_app: Flask) -> None:
    assert twilio_post_routes(twilio_app) == ["/twilio/stream-status", "/twilio/voice"]


FORM_EXAMPLES = 150


def test_signed_garbage_forms_get_twiml_or_a_clear_4xx(twilio_app: Flask, reliability: ReliabilityRecorder) -> None:
    routes = twilio_post_routes(twilio_app)
    seen: dict[int, int] = {}

    @settings(max_examples=FORM_EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(pairs=twilio_forms(), query=queries, route_index=st.integers(min_value=0, max_value=10))
    def search(pairs: list[tuple[str, str]], query: str, route_index: int) -> None:
        route = routes[route_index % len(routes)]
        response = signed_post(twilio_app, route, pairs, query)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert_clean(response, route)

    failure: BaseException | None = None
    try:
        search()
    except BaseException as exc:  # recorded, then re-raised
        failure = exc
        raise
    finally:
        reliability.record_outcome(
            "bad-input-webhook-hypothesis",
            "bad input",
            "hypothesis: signed forms with missing, duplicate, huge, unicode and wrongly shaped fields (and "
            f"patient_ref queries) on {', '.join(routes)}: 200 with parseable TwiML, 204, or a 4xx; never 5xx",
            survived=failure is None,
            examples=sum(seen.values()),
            statuses={str(code): n for code, n in sorted(seen.items())},
        )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    signature=st.text(alphabet=st.characters(codec="latin-1", exclude_characters="\r\n"), max_size=40)
    | st.from_regex(r"[A-Za-z0-9+/]{27}=", fullmatch=True)
)
def test_invalid_signatures_are_403(twilio_app: Flask, signature: str) -> None:
    for route in twilio_post_routes(twilio_app):
        response = signed_post(twilio_app, route, [("CallSid", "CA" + "1" * 32)], signature=signature)
        assert response.status_code == 403


@pytest.mark.parametrize("size", [MAX_WEBHOOK_BYTES + 1, 600_000, 3 * 1024 * 1024])
def test_oversized_bodies_are_413(twilio_app: Flask, size: int) -> None:
    for route in twilio_post_routes(twilio_app):
        pairs = [("CallSid", "CA" + "1" * 32), ("Pad", "x" * size)]
        response = signed_post(twilio_app, route, pairs)
        assert response.status_code == 413, route
    with twilio_app.extensions["painline.sessions"]() as session:
        assert session.scalars(select(Call)).all() == []


def test_many_small_fields_over_the_cap_are_413(twilio_app: Flask) -> None:
    """Each field is small (werkzeug's per-field limit would pass it); the body as a whole is not."""
    pairs = [("CallSid", "CA" + "1" * 32)] + [(f"F{i}", "y" * 200) for i in range(400)]
    assert signed_post(twilio_app, "/twilio/voice", pairs).status_code == 413


# -- regressions for what the fuzzing found --------------------------------------------------------------


@pytest.mark.parametrize("ref", ["\x01abc", "ab\x00c", "x\uffff", "\ufffe", "R" * 300, "   "])
def test_unusable_patient_ref_is_not_echoed_into_the_twiml(twilio_app: Flask, ref: str) -> None:
    """Found by the fuzzer: a control character (or U+FFFF) in patient_ref made the TwiML unparseable.

    Twilio would have rejected the response and dropped the caller. Such a reference is now ignored:
    the call streams without a patient link.
    """
    call_sid = "CA" + "2" * 32
    response = signed_post(twilio_app, "/twilio/voice", [("CallSid", call_sid)], "patient_ref=" + quote(ref))
    assert_clean(response, "/twilio/voice")
    params = {p.get("name") for p in ET.fromstring(response.data).iter("Parameter")}
    assert params == {"token"}
    with twilio_app.extensions["painline.sessions"]() as session:
        assert session.scalars(select(Patient)).all() == []


def test_valid_patient_ref_is_still_echoed_trimmed(twilio_app: Flask) -> None:
    response = signed_post(twilio_app, "/twilio/voice", [("CallSid", "CA" + "3" * 32)], "patient_ref=%20MRN-7%20")
    params = {p.get("name"): p.get("value") for p in ET.fromstring(response.data).iter("Parameter")}
    assert params["patient_ref"] == "MRN-7"


def test_nul_in_stream_error_is_recorded_not_a_503(twilio_app: Flask) -> None:
    """Found by the fuzzer: PostgreSQL refuses NUL in text, so a StreamError with one answered 503."""
    call_sid = "CA" + "4" * 32
    assert signed_post(twilio_app, "/twilio/voice", [("CallSid", call_sid)]).status_code == 200
    pairs = [("CallSid", call_sid), ("StreamEvent", "stream-error"), ("StreamError", "codec\x00 failed\x07")]
    assert signed_post(twilio_app, "/twilio/stream-status", pairs).status_code == 204
    with twilio_app.extensions["painline.sessions"]() as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        assert (call.stream_status, call.stream_error) == ("error", "codec failed")


def test_webhooks_over_real_http(app_server: AppServer, reliability: ReliabilityRecorder) -> None:
    """The same classes through the real server (werkzeug's HTTP parsing, not the test client)."""
    base = app_server.url

    def post(path: str, pairs: list[tuple[str, str]], query: str = "", signature: str | None = None) -> int:
        url = base + path + (f"?{query}" if query else "")
        sig = signature or RequestValidator(AUTH_TOKEN).compute_signature(url, MultiDict(pairs))
        return requests.post(url, data=pairs, headers={"X-Twilio-Signature": sig}, timeout=30).status_code

    outcomes = {
        "missing-callsid": post("/twilio/voice", [("From", "+14155550123")]) == 400,
        "bad-callsid-shape": post("/twilio/voice", [("CallSid", "CA 1; DROP")]) == 400,
        "duplicate-keys": post("/twilio/voice", [("CallSid", "CA" + "5" * 32), ("CallSid", "CAx")]) == 200,
        "control-char-patient-ref": post("/twilio/voice", [("CallSid", "CA" + "6" * 32)], "patient_ref=%01") == 200,
        "nul-stream-error": post(
            "/twilio/stream-status",
            [("CallSid", "CA" + "6" * 32), ("StreamEvent", "stream-error"), ("StreamError", "\x00")],
        )
        == 204,
        "unknown-stream-event": post(
            "/twilio/stream-status", [("CallSid", "CA" + "6" * 32), ("StreamEvent", "exploded")]
        )
        == 204,
        "oversized-body": post("/twilio/voice", [("CallSid", "CA" + "7" * 32), ("Pad", "x" * (MAX_WEBHOOK_BYTES + 1))])
        == 413,
        "invalid-signature": post("/twilio/voice", [("CallSid", "CA" + "8" * 32)], signature="AAAA") == 403,
    }
    healthy = requests.get(f"{base}/healthz", timeout=10).status_code == 200
    for name, ok in outcomes.items():
        reliability.record_outcome(
            f"bad-input-webhook-{name}",
            "bad input",
            f"signed Twilio webhook over real HTTP with {name.replace('-', ' ')}: clear 2xx/4xx, never 5xx; "
            "server healthy afterwards",
            survived=ok and healthy,
        )
    assert outcomes == dict.fromkeys(outcomes, True)
    assert healthy
