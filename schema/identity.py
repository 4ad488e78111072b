"""Patient keys: how a caller is recognised across calls without storing their phone number.

A caller number is keyed as ``hmac:<hex>``, the HMAC-SHA256 of its E.164 form under a deployment
secret. A plain hash would not do: phone numbers are so few that every hash can be precomputed, so
only the keyed HMAC keeps a leaked database from revealing who called. Normalising first makes
``+1 (415) 555-0100`` and ``+14155550100`` the same patient.

When the hotline passes its own patient reference, that is used instead as ``ref:<reference>``: it is
already the hotline's identifier, and nurses need it to find the patient in their records.

The two kinds never meet: a call without a reference is keyed by its number, so a baseline enrolled
under ``ref:<the number written out>`` is never found for it. :class:`PatientKeyKind` names the kind
of a stored key so pages can say which one a patient has, and :func:`looks_like_phone_number` lets
enrolment warn when a reference was probably meant as a number.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from enum import StrEnum

CALLER_PREFIX = "hmac:"
REF_PREFIX = "ref:"
MAX_REF_LENGTH = 200  # patients.key is 255 characters

_SEPARATORS = re.compile(r"[\s().\-/]")
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# what people type for a number: digits, an optional leading "+" and the usual separators, nothing else
_DIALLED = re.compile(r"\+?[\d\s().\-/]+")
_MIN_DIALLED_DIGITS = 7  # the shortest E.164 number; shorter digit runs are ordinary reference numbers
_MAX_DIALLED_DIGITS = 15


class PatientKeyKind(StrEnum):
    """Which identifier a patient key was made from; the value is what the JSON API reports.

    Admins need to tell the two apart: a patient keyed by a hotline reference is only recognised on
    calls that pass that reference, one keyed by a caller number only on calls from that number.
    """

    HOTLINE_REFERENCE = "hotline_reference"
    CALLER_NUMBER = "caller_number"


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


def caller_key(number: str, hmac_key: bytes | str) -> str:
    """The patient key for a caller number: ``"hmac:"`` + HMAC-SHA256 hex of its E.164 form.

    Stable for a given secret. A text secret (``PAINLINE_HMAC_KEY`` as read from the environment) is
    used as its UTF-8 bytes, as the voice webhook does, so every caller of this function that is
    handed the setting derives the same key for the same number. Raises :class:`ValueError` if the
    secret is empty (an unkeyed digest of a phone number is trivially reversible) or the number is
    not a dialable E.164 number.
    """
    if not hmac_key:
        raise ValueError("caller_key needs a non-empty HMAC key")
    secret = hmac_key.encode("utf-8") if isinstance(hmac_key, str) else hmac_key
    digest = hmac.new(secret, normalise_e164(number).encode("ascii"), hashlib.sha256).hexdigest()
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


def key_kind(key: str) -> PatientKeyKind | None:
    """The kind of a stored patient key, or None for a key neither function here makes.

    Read from the prefix alone, so showing the kind never needs (or reveals) the HMAC itself.
    """
    if key.startswith(REF_PREFIX):
        return PatientKeyKind.HOTLINE_REFERENCE
    if key.startswith(CALLER_PREFIX):
        return PatientKeyKind.CALLER_NUMBER
    return None


def looks_like_phone_number(text: str) -> bool:
    """Whether ``text`` reads as a phone number: E.164, or only digits, a leading ``+`` and separators.

    Used to warn when a patient reference is probably a caller's number, whose calls are keyed by
    the number's HMAC and would never find a baseline enrolled under the reference. Purely numeric
    hotline references of phone-number length match too; callers should warn rather than refuse.
    """
    cleaned = text.strip()
    try:
        normalise_e164(cleaned)
    except ValueError:
        pass
    else:
        return True
    if not _DIALLED.fullmatch(cleaned):
        return False
    digits = sum(ch.isdigit() for ch in cleaned)
    return _MIN_DIALLED_DIGITS <= digits <= _MAX_DIALLED_DIGITS


def mask_number(number: str) -> str:
    """``number`` in E.164 with its middle digits starred (``+1555*****22``), or :class:`ValueError`.

    Enough for an operator to recognise the number they typed, too little to recover it from a
    terminal log: the middle digits stay hidden however short the number is.
    """
    digits = normalise_e164(number)[1:]
    head = min(4, max(1, len(digits) - _MIN_DIALLED_DIGITS))
    tail = 2
    return "+" + digits[:head] + "*" * (len(digits) - head - tail) + digits[-tail:]


__all__ = [
    "CALLER_PREFIX",
    "MAX_REF_LENGTH",
    "REF_PREFIX",
    "PatientKeyKind",
    "caller_key",
    "key_kind",
    "looks_like_phone_number",
    "mask_number",
    "normalise_e164",
    "patient_ref_key",
]
