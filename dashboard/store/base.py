"""What every subject of the store shares: its backends, its errors, the rules several subjects apply,
and the one JSON serialiser for its records.

The subjects (:mod:`~dashboard.store.flags_queue`, :mod:`~dashboard.store.calls`,
:mod:`~dashboard.store.patients`, :mod:`~dashboard.store.audit`) each hold one :class:`Backends`
rather than each reaching into ``app.extensions``, so a test or the facade can bind all of them to
the same session factory, queue and Redis client in one place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from flask import Flask, current_app
from redis import Redis
from rq import Queue
from sqlalchemy import ColumnElement, and_, or_
from sqlalchemy.orm import Session, sessionmaker

from dashboard.config import DashboardConfig, config_of
from schema.identity import PatientKeyKind, key_kind
from schema.models import Call, CallStatus

LIVE_CALL_MAX_AGE = timedelta(hours=4)
"""A call still marked streaming after this long lost its stop event; it is not shown as live."""


class NotFound(LookupError):
    """No such object (404)."""


class Conflict(RuntimeError):
    """The object is in a state that does not allow this change (409)."""


class Invalid(ValueError):
    """The request itself is wrong (400)."""


@dataclass(frozen=True)
class Backends:
    """One app's session factory, settings, job queue and Redis client, shared by every subject store."""

    sessions: sessionmaker[Session]
    config: DashboardConfig
    queue: Queue | None = None
    redis: Redis | None = None

    @classmethod
    def for_app(cls, app: Flask | None = None) -> Backends:
        app = app or current_app
        return cls(
            sessions=app.extensions["painline.sessions"],
            config=config_of(app),
            queue=app.extensions.get("painline.queue"),
            redis=app.extensions.get("painline.redis"),
        )


# ---------------------------------------------------------------------------------------------------
# rules more than one subject applies


def is_live(call: Call, now: datetime, stream_connect_s: float) -> bool:
    """Whether a call is shown as in progress: streaming, recent, and its stream connected (or may still).

    The webhook writes the call as ``streaming`` before Twilio opens the Media Stream; if the stream
    never connects (the caller hung up during the consent notice, Twilio could not reach us) nothing
    ends it but the sweep, hours later. So a call without a ``stream_sid`` counts as live only for
    ``stream_connect_s`` after the webhook. :func:`live_clause` is the same rule in SQL.
    """
    if call.status != CallStatus.STREAMING.value:
        return False
    started = call.started_at if call.started_at.tzinfo else call.started_at.replace(tzinfo=now.tzinfo)
    if started < now - LIVE_CALL_MAX_AGE:
        return False
    return call.stream_sid is not None or started >= now - timedelta(seconds=stream_connect_s)


def live_clause(now: datetime, stream_connect_s: float) -> ColumnElement[bool]:
    """:func:`is_live` as a SQL condition on :class:`Call`."""
    return and_(
        Call.status == CallStatus.STREAMING.value,
        Call.started_at >= now - LIVE_CALL_MAX_AGE,
        or_(Call.stream_sid.is_not(None), Call.started_at >= now - timedelta(seconds=stream_connect_s)),
    )


def like_pattern(text: str) -> str:
    """``text`` with LIKE's wildcards escaped (escape character ``\\``), so a search matches it literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def row_id_of(text: str) -> int | None:
    """``text`` as a PostgreSQL integer id, or None.

    ``isdecimal``: ``int()`` refuses digits like "²" that ``isdigit()`` accepts.
    """
    if len(text) <= 10 and text.isdecimal() and int(text) < 2**31:
        return int(text)
    return None


def patient_label(key: str | None, patient_id: int | None) -> str:
    """What a person sees for a patient: the hotline's reference, or a neutral id for number-keyed callers.

    ``hmac:`` keys are opaque and mean nothing to a nurse, so they are never shown.
    """
    if patient_id is None or key is None:
        return "unknown caller"
    if key.startswith("ref:"):
        return key[len("ref:") :]
    return f"caller #{patient_id}"


def patient_key_kind(key: str | None) -> PatientKeyKind | None:
    """Which identifier the patient is recognised by on calls, read from the key's prefix only.

    Admins need it to see why a baseline is not used (a patient enrolled by reference is not the one a
    call from their number reaches); the HMAC itself stays out of every page and answer.
    """
    return None if key is None else key_kind(key)


# ---------------------------------------------------------------------------------------------------
# JSON


def to_json(value: Any) -> Any:
    """A record (or a list or dict of them) as JSON-ready values: the API's one serialiser.

    Records keep datetimes for the templates; here they become ISO 8601 strings, enums their values,
    and tuples lists. Field names are the JSON keys, which is what lets a test hold the OpenAPI
    schemas to the record classes.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


__all__ = [
    "LIVE_CALL_MAX_AGE",
    "Backends",
    "Conflict",
    "Invalid",
    "NotFound",
    "is_live",
    "like_pattern",
    "live_clause",
    "patient_key_kind",
    "patient_label",
    "row_id_of",
    "to_json",
]
