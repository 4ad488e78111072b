"""How the pages spell things: times, durations, probabilities, verdicts and baseline status.

Kept apart from the views so the nurse pages, the admin pages and their tests agree on one spelling.
Patients are named by :func:`dashboard.store.base.patient_label` (the hotline reference, or
``caller #<id>`` for callers keyed by an HMAC of their number), the same label the JSON API gives;
:func:`key_kind` says which of the two a patient is keyed by, since only calls keyed the same way
reach that patient's baseline.

Two things a reader could not work out alone are spelled here too: where an audit row's object can
be opened (:func:`audit_object_url`), and what absolute pitch in semitones is measured from
(:func:`measure_unit`: eGeMAPS counts semitones above 27.5 Hz, so "33 semitones" means nothing
without "re 27.5 Hz"; a *change* in semitones needs no reference).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, tzinfo
from enum import StrEnum
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from flask import Blueprint, url_for

from dashboard.config import config_of
from dashboard.params import MAX_ID
from dashboard.store.patients import BaselineRecord, BaselineStatus, PatientSummary
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


def clock(value: datetime | None, zone: tzinfo = UTC) -> str:
    """``2024-05-01 14:03 UTC``: the pages state the zone rather than guess the reader's.

    Every page shows times in the deployment's one display zone (``DashboardConfig.display_timezone``,
    :func:`deployment_clock`); the browser never re-renders absolute times in its own zone, so a
    nurse never sees UTC beside local time. Only relative times (:func:`ago`) change in the browser.
    """
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")


@lru_cache(maxsize=8)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def display_zone() -> ZoneInfo:
    """The current app's display time zone."""
    return _zone(config_of().display_timezone)


def deployment_clock(value: datetime | None) -> str:
    """:func:`clock` in the current app's display zone (the ``clock`` filter)."""
    return clock(value, display_zone())


def ago(value: datetime | None, now: datetime | None = None) -> str:
    """``just now``, ``3 min ago``, ``2 h 05 min ago``, ``4 d ago``: the server's first rendering of a
    relative time; ``static/live.js`` keeps it current with the same rule (a test pins them equal)."""
    if value is None:
        return "–"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    seconds = max(0, int(((now or datetime.now(UTC)) - value).total_seconds()))
    if seconds < 60:
        return "just now"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min ago"
    hours = minutes // 60
    if hours < 24:
        return f"{hours} h {minutes % 60:02d} min ago"
    return f"{hours // 24} d ago"


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
    if value is None:
        return "–"
    try:
        return KEY_KIND_LABELS[PatientKeyKind(value)]
    except ValueError:
        return "–"


def phone_like_reference(patient: PatientSummary | None) -> bool:
    """Whether a patient is keyed by a hotline reference that reads as a phone number.

    Such a patient was most likely enrolled by number under the reference by mistake: calls from
    that number are keyed by its HMAC and never reach this baseline, so the page says so.
    """
    if patient is None or patient.key_kind != PatientKeyKind.HOTLINE_REFERENCE:
        return False
    return looks_like_phone_number(patient.label)


def baseline_status(utterances: int, calls: int) -> str:
    """``none yet``, ``n utterances over m calls``, or ``n utterances from enrolment`` (clips of no call)."""
    if utterances <= 0:
        return "none yet"
    counted = f"{utterances} utterance{'s' if utterances != 1 else ''}"
    if calls <= 0:
        return f"{counted} from enrolment"
    return f"{counted} over {calls} call{'s' if calls != 1 else ''}"


def baseline_text(status: BaselineStatus | BaselineRecord | None) -> str:
    """:func:`baseline_status` of a patient's baseline (None: no baseline yet)."""
    if status is None:
        return baseline_status(0, 0)
    return baseline_status(status.n_utterances, status.n_calls)


PITCH_REFERENCE_HZ = 27.5
"""What eGeMAPS' pitch (``F0semitoneFrom27.5Hz``) counts semitones from: the piano's lowest A."""
UNIT_REFERENCES = {"pitch": f"re {PITCH_REFERENCE_HZ:g} Hz"}
"""Measures whose absolute values are relative to a reference, by measure key. Pitch *range* is a
difference between two pitches, so like every change it needs none."""


def measure_unit(key: str | None, unit: str | None) -> str:
    """The unit of an absolute value of measure ``key``: ``semitones re 27.5 Hz`` for pitch."""
    reference = UNIT_REFERENCES.get(key or "")
    return f"{unit or ''} {reference}".strip() if reference else unit or ""


def measure_text(measure: Mapping[str, Any]) -> str:
    """An evidence measure's ``text`` (``pitch 33.0 semitones``) with its reference, where it has one."""
    reference = UNIT_REFERENCES.get(str(measure.get("measure") or measure.get("key") or ""))
    text = str(measure.get("text") or "")
    return f"{text} {reference}" if reference and text else text


class AuditObject(StrEnum):
    """Audit object types that name a row with a page (other types, e.g. ``audit`` or ``user``, have none)."""

    PATIENT = "patient"
    CALL = "call"
    FLAG = "flag"


def _row_id(value: object) -> int | None:
    text = str(value)
    if not text.isdigit() or not 1 <= int(text) <= MAX_ID:
        return None
    return int(text)


def audit_object_url(object_type: str, object_id: str, detail: Mapping[str, Any] | None = None) -> str | None:
    """The page of an audit row's object, or None: patients open their baseline page, calls the call page,
    and flags (which have no page) their call's page, whose id the flag's audit rows carry."""
    try:
        kind = AuditObject(object_type)
    except ValueError:
        return None
    if kind is AuditObject.FLAG:
        call_id = _row_id((detail or {}).get("call_id"))
        return None if call_id is None else url_for("nurse.call", call_id=call_id)
    row_id = _row_id(object_id)
    if row_id is None:
        return None
    if kind is AuditObject.PATIENT:
        return url_for("admin.patient", patient_id=row_id)
    return url_for("nurse.call", call_id=row_id)


def register(bp: Blueprint) -> None:
    """Make every helper above a Jinja filter for the whole app."""
    filters: dict[str, Callable[..., Any]] = {
        "clock": deployment_clock,
        "ago": ago,
        "iso": iso,
        "duration": duration,
        "prob": probability,
        "verdict": verdict,
        "flag_label": label,
        "baseline_text": baseline_text,
        "key_kind": key_kind,
        "measure_text": measure_text,
    }
    for name, fn in filters.items():
        bp.add_app_template_filter(fn, name)
    bp.add_app_template_test(phone_like_reference, "phone_like_reference")
    bp.add_app_template_global(audit_object_url, "audit_object_url")
    bp.add_app_template_global(measure_unit, "measure_unit")
    bp.add_app_template_global(lambda: config_of().display_timezone, "display_timezone")


__all__ = [
    "PITCH_REFERENCE_HZ",
    "AuditObject",
    "ago",
    "audit_object_url",
    "baseline_status",
    "baseline_text",
    "clock",
    "deployment_clock",
    "display_zone",
    "duration",
    "iso",
    "key_kind",
    "label",
    "measure_text",
    "measure_unit",
    "phone_like_reference",
    "probability",
    "register",
    "verdict",
]
