"""Build the TwiML painline returns to Twilio's voice webhook.

painline sits in front of a hotline's existing call flow. ``<Start><Stream>`` forks the caller's
audio to painline and Twilio immediately carries on with the next verb, so the response always
ends with the hotline's own next step (redirect to its TwiML, dial its number or enqueue into its
queue). Without one, Twilio would hang up after starting the stream. When painline cannot serve a
call (database down), :func:`continue_only` keeps the hotline working without analysis.
"""

from __future__ import annotations

from dataclasses import dataclass

from twilio.twiml.voice_response import Start, Stream, VoiceResponse

TOKEN_PARAMETER = "token"
PATIENT_REF_PARAMETER = "patient_ref"


@dataclass(frozen=True)
class NextStep:
    """The hotline's own continuation; the first non-empty of redirect, dial, enqueue wins."""

    redirect_url: str = ""
    dial: str = ""
    enqueue: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.redirect_url or self.dial or self.enqueue)

    def append_to(self, response: VoiceResponse) -> None:
        if self.redirect_url:
            response.redirect(self.redirect_url, method="POST")
        elif self.dial:
            response.dial(self.dial)
        elif self.enqueue:
            response.enqueue(self.enqueue)


def stream_response(
    *,
    stream_url: str,
    status_callback_url: str,
    token: str,
    next_step: NextStep,
    consent_message: str = "",
    patient_ref: str | None = None,
) -> str:
    """Consent notice, then start the inbound-only stream, then hand the call back to the hotline."""
    response = VoiceResponse()
    if consent_message:
        response.say(consent_message)
    stream = Stream(
        url=stream_url,
        track="inbound_track",
        status_callback=status_callback_url,
        status_callback_method="POST",
    )
    stream.parameter(name=TOKEN_PARAMETER, value=token)
    if patient_ref:
        stream.parameter(name=PATIENT_REF_PARAMETER, value=patient_ref)
    start = Start()
    start.append(stream)
    response.append(start)
    next_step.append_to(response)
    return str(response)


def continue_only(next_step: NextStep) -> str:
    """The hotline's flow with no stream: used whenever painline itself cannot take the call."""
    response = VoiceResponse()
    next_step.append_to(response)
    return str(response)
