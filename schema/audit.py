"""The audit trail: one :class:`~schema.models.AuditEvent` per thing a person or process did.

Audit rows are kept longer than calls and read by auditors, so ``detail`` is checked before it is
written: audio (any bytes) and anything that looks like a phone number are refused, as are keys
whose names say they hold one. Refusing loudly beats writing them and hoping nobody looks; callers
should put ids and outcomes in ``detail`` (a call id, a verdict, a count), never caller data.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum
from typing import Any

from sqlalchemy.orm import Session

from schema.models import AuditEvent, utcnow

FORBIDDEN_KEYS = frozenset(
    {
        "audio",
        "mulaw",
        "pcm",
        "wav",
        "payload",
        "number",
        "phone",
        "phone_number",
        "caller",
        "from",
        "to",
        "caller_number",
        "msisdn",
    }
)
"""Detail keys that name caller data; ``record`` refuses them whatever their value."""

# a "+" followed by 7-15 digits, separators allowed: the shape of an E.164 number
_PLUS_NUMBER = re.compile(r"\+\s*\d(?:[\s().\-]*\d){6,14}")
# a value that is nothing but a long run of digits and separators: a national or E.164 number
_BARE_NUMBER = re.compile(r"\d(?:[\s().\-]*\d){6,14}")


class AuditDetailError(ValueError):
    """``detail`` held something the audit trail must never contain. Never includes the value."""


def _clean(value: Any, path: str) -> Any:
    """A JSON-ready copy of ``value``, refusing audio and phone numbers anywhere inside it."""
    if isinstance(value, bytes | bytearray | memoryview):
        raise AuditDetailError(f"audit detail {path!r} holds bytes; audio never goes in the audit trail")
    if isinstance(value, Enum):
        value = value.value
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        if _PLUS_NUMBER.search(value) or _BARE_NUMBER.fullmatch(value.strip()):
            raise AuditDetailError(f"audit detail {path!r} looks like a phone number")
        return value
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            name = str(key)
            if name.lower() in FORBIDDEN_KEYS:
                raise AuditDetailError(f"audit detail key {path}.{name!r} is not allowed")
            out[name] = _clean(item, f"{path}.{name}")
        return out
    if isinstance(value, list | tuple | set | frozenset):
        return [_clean(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise AuditDetailError(f"audit detail {path!r} has unsupported type {type(value).__name__}")


def record(
    session: Session,
    actor: str,
    action: str,
    object_type: str,
    object_id: str | int,
    **detail: Any,
) -> AuditEvent:
    """Add an audit event to ``session`` (the caller's transaction commits it) and return it.

    ``actor`` is a username or a process name such as ``"worker"`` or ``"twilio"``. Raises
    :class:`AuditDetailError` if ``detail`` holds bytes, a phone-number-like string, a forbidden key
    or a value JSON cannot store.
    """
    event = AuditEvent(
        at=utcnow(),
        actor=actor,
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        detail=_clean(detail, "detail"),
    )
    session.add(event)
    return event


__all__ = ["FORBIDDEN_KEYS", "AuditDetailError", "record"]
