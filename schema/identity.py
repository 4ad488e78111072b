"""Patient keys: how a caller is recognised across calls without storing their phone number.

A caller number is keyed as ``hmac:<hex>``, the HMAC-SHA256 of its E.164 form under a deployment
secret. A plain hash would not do: phone numbers are so few that every hash can be precomputed, so
only the keyed HMAC keeps a leaked database from revealing who called. Normalising first makes
``+1 (415) 555-0100`` and ``+14155550100`` the same patient.

When the hotline passes its own patient reference, that is used instead as ``ref:<reference>``: it is
already the hotline's identifier, and nurses need it to find the patient in their records.
"""

from __future__ import annotations

import hashlib
import hmac
import re

CALLER_PREFIX = "hmac:"
REF_PREFIX = "ref:"
MAX_REF_LENGTH = 200  # patients.key is 255 characters

_SEPARATORS = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")


def normalise_e164(number: str) -> str:
    """``number`` in E.164 form (``+`` and up to 15 digits), or :class:`ValueError`.

    Spaces, dots, dashes, slashes and parentheses are dropped and a leading international ``00``
    becomes ``+``. A number without a country code is refused rather than guessed at; Twilio sends
    E.164 already, and its non-numbers (``anonymous``, ``client:...``, SIP URIs) are refused too.
    The error message never contains the number.
    """
    compact = _SEPARATORS.sub("", number.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not _E164.fullmatch(compact):
        raise ValueError("not an E.164 phone number")
    return compact


def caller_key(number: str, hmac_key: bytes) -> str:
    """The patient key for a caller number: ``"hmac:"`` + HMAC-SHA256 hex of its E.164 form.

    Stable for a given secret. Raises :class:`ValueError` if the secret is empty (an unkeyed digest
    of a phone number is trivially reversible) or the number is not a dialable E.164 number.
    """
    if not hmac_key:
        raise ValueError("caller_key needs a non-empty HMAC key")
    digest = hmac.new(hmac_key, normalise_e164(number).encode("ascii"), hashlib.sha256).hexdigest()
    return CALLER_PREFIX + digest


def patient_ref_key(ref: str) -> str:
    """The patient key for the hotline's own patient reference: ``"ref:"`` + the trimmed reference.

    Raises :class:`ValueError` for an empty, over-long or control-character reference, so a bad
    value from a webhook cannot create a junk patient.
    """
    cleaned = ref.strip()
    if not cleaned:
        raise ValueError("empty patient reference")
    if len(cleaned) > MAX_REF_LENGTH:
        raise ValueError(f"patient reference longer than {MAX_REF_LENGTH} characters")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in cleaned):
        raise ValueError("patient reference contains control characters")
    return REF_PREFIX + cleaned


__all__ = ["CALLER_PREFIX", "MAX_REF_LENGTH", "REF_PREFIX", "caller_key", "normalise_e164", "patient_ref_key"]
