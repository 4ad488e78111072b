"""atheris harness: signed Twilio webhook requests with fuzzed form fields and query strings.

Run: ``python fuzz/fuzz_webhooks.py -atheris_runs=5000``. The database is
``$PAINLINE_FUZZ_DATABASE_URL`` (migrated to head first; the pytest wrapper points it at the test
PostgreSQL, whose text columns refuse NUL where SQLite's do not) or, by default, a throwaway SQLite
file, so the harness runs anywhere. No Redis is needed: the webhooks never enqueue.

Every request carries a valid ``X-Twilio-Signature`` (computed over the configured public URL and
the exact form the app will parse), so the fuzzer gets past the signature check and into the
handlers. A crash is a 5xx, a traceback in a response, a 200 whose TwiML does not parse, or an
unexpected status.
"""

from __future__ import annotations

import os
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import quote

import atheris

from painline.app import telephony_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere in a checkout

with atheris.instrument_imports(include=["telephony"]):
    from flask import Flask
    from flask_sock import Sock
    from twilio.request_validator import RequestValidator
    from werkzeug.datastructures import MultiDict

    from painline.config import Settings
    from schema.db import make_engine, session_factory
    from schema.migrate import upgrade
    from telephony.blueprint import init_app

PUBLIC_URL = "https://painline.example"
AUTH_TOKEN = "fuzz-auth-token"
ROUTES = ("/twilio/voice", "/twilio/stream-status")
FIELDS = (
    "CallSid",
    "AccountSid",
    "From",
    "To",
    "CallStatus",
    "StreamSid",
    "StreamEvent",
    "StreamError",
    "patient_ref",
    "Direction",
)
EVENTS = ("stream-started", "stream-stopped", "stream-error", "")
ALLOWED = {"/twilio/voice": {200, 400, 413}, "/twilio/stream-status": {204, 400, 413}}


def build_app() -> Flask:
    """The telephony blueprint as painline wires it, on the fuzz database, with no queue."""
    url = os.environ.get("PAINLINE_FUZZ_DATABASE_URL")
    if not url:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='painline-fuzz-')}/fuzz.sqlite"
    upgrade(url)
    app = Flask("painline-fuzz")
    settings = Settings(
        public_url=PUBLIC_URL,
        twilio_auth_token=AUTH_TOKEN,
        hmac_key="fuzz-key",
        next_dial="+15550100",
        database_url=url,
    )
    app.extensions["painline.sessions"] = session_factory(make_engine(url))
    app.extensions["painline.queue"] = None
    init_app(app, Sock(app), telephony_config(settings))
    return app


APP = build_app()
CLIENT = APP.test_client()
VALIDATOR = RequestValidator(AUTH_TOKEN)


def call_sid(fdp: atheris.FuzzedDataProvider) -> str:
    """Mostly well-formed (so the handlers run past the CallSid check), sometimes anything."""
    if fdp.ConsumeIntInRange(0, 3):
        return "CA" + "".join("0123456789abcdef"[fdp.ConsumeIntInRange(0, 15)] for _ in range(32))
    return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 70))


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    route = ROUTES[fdp.ConsumeIntInRange(0, len(ROUTES) - 1)]
    pairs: list[tuple[str, str]] = []
    if fdp.ConsumeIntInRange(0, 3):
        pairs.append(("CallSid", call_sid(fdp)))
    if route.endswith("status") and fdp.ConsumeBool():
        pairs.append(("StreamEvent", EVENTS[fdp.ConsumeIntInRange(0, len(EVENTS) - 1)]))
    for _ in range(fdp.ConsumeIntInRange(0, 6)):
        if fdp.ConsumeBool():
            key = FIELDS[fdp.ConsumeIntInRange(0, len(FIELDS) - 1)]
        else:
            key = fdp.ConsumeUnicodeNoSurrogates(8)
        pairs.append((key, fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 300))))
    query = ""
    if fdp.ConsumeBool():
        query = "patient_ref=" + quote(fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 250)), safe="")
    form = MultiDict(pairs)
    target = route + (f"?{query}" if query else "")
    signature = VALIDATOR.compute_signature(PUBLIC_URL + target, form)
    response = CLIENT.post(target, data=form, headers={"X-Twilio-Signature": signature})
    body = response.get_data()
    if response.status_code not in ALLOWED[route] or b"Traceback" in body:
        raise AssertionError(f"{route}: {response.status_code} for {pairs!r} {query!r}: {body[:200]!r}")
    if response.status_code == 200 and ET.fromstring(body).tag != "Response":
        raise AssertionError(f"{route}: TwiML without a Response root")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
