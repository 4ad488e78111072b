"""Twilio's HTTP webhooks: the voice webhook that starts a stream, and the stream status callback.

The voice webhook sits in the hotline's call path, so it must answer even when painline cannot:
any database problem produces TwiML that continues the hotline's own flow without a stream, and
the call is never delayed by analysis. Nothing here logs a phone number or patient reference.
"""

from __future__ import annotations

import logging
import re

from flask import Blueprint, Response, abort, current_app, request
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from schema import audit
from schema.db import session_scope
from schema.identity import caller_key, patient_ref_key
from schema.models import Call, CallStatus, Patient, StreamStatus
from telephony import tokens
from telephony.config import TelephonyConfig, config_of
from telephony.signatures import SIGNATURE_HEADER, is_valid, public_http_url, public_ws_url
from telephony.twiml import continue_only, stream_response

log = logging.getLogger(__name__)

STREAM_PATH = "/twilio/stream"
STATUS_PATH = "/twilio/stream-status"
PATIENT_REF_PARAM = "patient_ref"  # the hotline may pass its own reference in the query or form
_SID = re.compile(r"[A-Za-z0-9]{1,64}")
_STREAM_EVENTS = {
    "stream-started": StreamStatus.STARTED.value,
    "stream-stopped": StreamStatus.STOPPED.value,
    "stream-error": StreamStatus.ERROR.value,
}
_MAX_ERROR_CHARS = 1000
MAX_WEBHOOK_BYTES = 64 * 1024
"""Twilio's webhook bodies are a few kilobytes; anything bigger is refused (413) before it is parsed."""
# characters XML 1.0 cannot carry at all: one in a value echoed into TwiML would make Twilio reject it
_NOT_XML = re.compile("[^\t\n\r\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# what PostgreSQL text cannot hold (NUL) and what has no business in a log-like error text
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def settings() -> TelephonyConfig:
    return config_of()


def sessions() -> sessionmaker[Session]:
    return current_app.extensions["painline.sessions"]


def twiml(body: str) -> Response:
    return Response(body, status=200, mimetype="application/xml")


def require_signature() -> None:
    """Abort with 403 unless the request is signed by Twilio for the configured public URL."""
    cfg = settings()
    # before request.form is first read: the cap only applies to bodies not yet parsed
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    request.max_content_length = MAX_WEBHOOK_BYTES if limit is None else min(limit, MAX_WEBHOOK_BYTES)
    url = public_http_url(cfg.public_url, request.path, request.query_string)
    if not is_valid(cfg.twilio_auth_token, url, request.form, request.headers.get(SIGNATURE_HEADER)):
        log.warning("refused unsigned or mis-signed request to %s", request.path)
        abort(403)


def voice() -> Response:
    """Start the stream for this call, or just continue the hotline's flow if painline is unwell."""
    require_signature()
    cfg = settings()
    next_step = cfg.next_step
    if not next_step.configured:
        log.warning("no next step configured (next_redirect_url/next_dial/next_enqueue): Twilio will hang up")
    call_sid = request.form.get("CallSid", "")
    if not _SID.fullmatch(call_sid):
        abort(400)
    consent_message = cfg.consent_message or ""
    ref = _patient_ref()
    try:
        with session_scope(sessions()) as session:
            patient_id = patient_id_for(session, cfg.hmac_key, ref, request.form.get("From"))
            ensure_call(session, call_sid, patient_id, consent=bool(consent_message))
            issued = tokens.issue(call_sid, cfg.hmac_key, cfg.stream_token_ttl_s)
            tokens.record(session, issued)
    except (SQLAlchemyError, ValueError) as exc:
        # ValueError: no hmac_key configured. Either way the caller must still reach a nurse.
        log.error("voice webhook: continuing call without stream (%s)", type(exc).__name__)
        return twiml(continue_only(next_step))
    stream_url = public_ws_url(cfg.public_url, STREAM_PATH)
    status_url = public_http_url(cfg.public_url, STATUS_PATH)
    return twiml(
        stream_response(
            stream_url=stream_url,
            status_callback_url=status_url,
            token=issued.token,
            next_step=next_step,
            consent_message=consent_message,
            patient_ref=ref,
        )
    )


def _patient_ref() -> str | None:
    """The hotline's patient reference (query or form), trimmed, or None if absent or unusable.

    It is both a patient key and echoed to Twilio as a stream ``<Parameter>``, so a reference that
    cannot be a key (empty, over-long, control characters) or cannot be written in XML at all
    (U+FFFE, U+FFFF) is ignored here, once: echoing it would make the whole TwiML unparseable and
    Twilio would drop the caller, where ignoring it only loses the patient link for this call.
    """
    ref = request.values.get(PATIENT_REF_PARAM)
    if not ref:
        return None
    try:
        patient_ref_key(ref)
    except ValueError:
        log.warning("voice webhook: ignoring an invalid patient reference")
        return None
    if _NOT_XML.search(ref):
        log.warning("voice webhook: ignoring a patient reference that XML cannot carry")
        return None
    return ref.strip()


def patient_id_for(session: Session, hmac_key: str, ref: str | None, number: str | None) -> int | None:
    """The patient for this call: the hotline's reference if given and valid, else the keyed number."""
    key = None
    if ref:
        try:
            key = patient_ref_key(ref)
        except ValueError:
            log.warning("voice webhook: ignoring an invalid patient reference")
    if key is None and number:
        try:
            key = caller_key(number, hmac_key.encode("utf-8"))
        except ValueError:
            key = None  # withheld or non-E.164 caller ("anonymous", SIP): an unknown patient
    if key is None:
        return None
    patient_id = session.scalar(select(Patient.id).where(Patient.key == key))
    if patient_id is not None:
        return patient_id
    try:
        with session.begin_nested():
            patient = Patient(key=key)
            session.add(patient)
        return patient.id
    except IntegrityError:
        # another webhook created the same patient between our SELECT and INSERT
        return session.scalar(select(Patient.id).where(Patient.key == key))


def ensure_call(session: Session, call_sid: str, patient_id: int | None, *, consent: bool) -> int:
    """The call row for ``call_sid``, created on first sight (Twilio may retry the webhook)."""
    existing = session.scalars(select(Call).where(Call.call_sid == call_sid)).one_or_none()
    if existing is not None:
        return existing.id
    try:
        with session.begin_nested():
            call = Call(call_sid=call_sid, patient_id=patient_id, consent=consent, status=CallStatus.STREAMING.value)
            session.add(call)
    except IntegrityError:
        return session.scalars(select(Call.id).where(Call.call_sid == call_sid)).one()
    audit.record(
        session,
        "twilio",
        "call.received",
        "call",
        call.id,
        consent_notice=consent,
        patient_known=patient_id is not None,
    )
    return call.id


def stream_status() -> Response:
    """Record Twilio's view of the stream (started, stopped, error) on the call."""
    require_signature()
    call_sid = request.form.get("CallSid", "")
    status = _STREAM_EVENTS.get(request.form.get("StreamEvent", ""))
    if not _SID.fullmatch(call_sid) or status is None:
        return Response(status=204)
    # Twilio's own text, but a NUL in it would make PostgreSQL refuse the whole update (a 503)
    error = _CONTROL.sub("", request.form.get("StreamError") or "")[:_MAX_ERROR_CHARS] or None
    try:
        with session_scope(sessions()) as session:
            call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one_or_none()
            if call is not None:
                call.stream_status = status
                if error is not None:
                    call.stream_error = error
    except SQLAlchemyError as exc:
        log.error("stream status callback not recorded (%s)", type(exc).__name__)
        return Response(status=503)
    if status == StreamStatus.ERROR.value:
        log.warning("Twilio reported a stream error for a call")
    return Response(status=204)


def register(bp: Blueprint) -> None:
    bp.add_url_rule("/twilio/voice", "voice", voice, methods=["POST"])
    bp.add_url_rule(STATUS_PATH, "stream_status", stream_status, methods=["POST"])
