"""How the pages spell things: times, durations, probabilities, verdicts and baseline status.

Kept apart from the views so the nurse pages, the admin pages and their tests agree on one spelling.
Patients are named by :func:`dashboard.queries.patient_label` (the hotline reference, or
``caller #<id>`` for callers keyed by an HMAC of their number), the same label the JSON API gives;
:func:`key_kind` says which of the two a patient is keyed by, since only calls keyed the same way
reach that patient's baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint

from schema.identity import PatientKeyKind, looks_like_phone_number

VERDICT_LABELS = {
    "pending": "in progress",
    "pain_likely": "pain likely",
    "no_pain": "no pain detected",
    "inconclusive": "inconclusive",
}

LABEL_LABELS = {
    "pain_confirmed": "pain confirmed",
    "no_pain": "no pain",
    "unsure": "unsure",
}

KEY_KIND_LABELS = {
    PatientKeyKind.HOTLINE_REFERENCE: "hotline reference",
    PatientKeyKind.CALLER_NUMBER: "caller number (keyed)",
}


def clock(value: datetime | None) -> str:
    """``2024-05-01 14:03 UTC``: the pages state the zone rather than guess the reader's."""
    if value is None:
        return "–"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def iso(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).isoformat(timespec="seconds")


def duration(seconds: float | None) -> str:
    """``42 s`` or ``3 min 05 s``."""
    if seconds is None:
        return "–"
    whole = max(0, round(float(seconds)))
    if whole < 60:
        return f"{whole} s"
    return f"{whole // 60} min {whole % 60:02d} s"


def probability(value: float | None) -> str:
    return "–" if value is None else f"{float(value):.2f}"


def verdict(value: str | None) -> str:
    return VERDICT_LABELS.get(value or "", value or "–")


def label(value: str | None) -> str:
    return LABEL_LABELS.get(value or "", value or "–")


def key_kind(value: str | None) -> str:
    """``hotline reference`` or ``caller number (keyed)``: what a patient's calls must carry to reach them.

    Takes the API's value (a :class:`~schema.identity.PatientKeyKind` or its string); never the key,
    so the HMAC cannot end up on a page through this filter.
    """
    try:
        return KEY_KIND_LABELS[PatientKeyKind(value)]
    except ValueError:
        return "–"


def phone_like_reference(patient: Mapping[str, Any] | None) -> bool:
    """Whether a patient is keyed by a hotline reference that reads as a phone number.

    Such a patient was most likely enrolled by number under the reference by mistake: calls from
    that number are keyed by its HMAC and never reach this baseline, so the page says so.
    """
    if not patient or patient.get("key_kind") != PatientKeyKind.HOTLINE_REFERENCE:
        return False
    return looks_like_phone_number(str(patient.get("label") or ""))


def baseline_status(utterances: int, calls: int) -> str:
    """``none yet``, ``n utterances over m calls``, or ``n utterances from enrolment`` (clips of no call)."""
    if utterances <= 0:
        return "none yet"
    counted = f"{utterances} utterance{'s' if utterances != 1 else ''}"
    if calls <= 0:
        return f"{counted} from enrolment"
    return f"{counted} over {calls} call{'s' if calls != 1 else ''}"


def baseline_text(doc: Mapping[str, Any] | None) -> str:
    """:func:`baseline_status` of a ``Store`` baseline document (None: no baseline yet)."""
    if not doc:
        return baseline_status(0, 0)
    return baseline_status(int(doc.get("n_utterances") or 0), int(doc.get("n_calls") or 0))


def register(bp: Blueprint) -> None:
    """Make every helper above a Jinja filter for the whole app."""
    for name, fn in {
        "clock": clock,
        "iso": iso,
        "duration": duration,
        "prob": probability,
        "verdict": verdict,
        "flag_label": label,
        "baseline_text": baseline_text,
        "key_kind": key_kind,
    }.items():
        bp.add_app_template_filter(fn, name)
    bp.add_app_template_test(phone_like_reference, "phone_like_reference")


__all__ = [
    "baseline_status",
    "baseline_text",
    "clock",
    "duration",
    "iso",
    "key_kind",
    "label",
    "phone_like_reference",
    "probability",
    "register",
    "verdict",
]
