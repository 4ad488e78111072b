"""Reads the pages need that :class:`dashboard.queries.Store` (shared with the API) does not provide.

- :func:`audit_events`: the audit log with date filters (``Store.audit_log`` filters by actor,
  action and object only) and :func:`audit_vocabulary` for the filter form;
- :func:`voiceprint_summary`: whether the patient has a voiceprint, for the baseline page.

Plain functions over a session, returning small frozen dataclasses rather than ORM objects, so a
template can render them after the session closed.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.models import AuditEvent, Voiceprint

# ---------------------------------------------------------------------------------------------------
# the audit log


@dataclass(frozen=True)
class AuditFilters:
    actor: str = ""
    action: str = ""
    object_type: str = ""
    object_id: str = ""
    since: datetime | None = None
    until: datetime | None = None  # exclusive


@dataclass(frozen=True)
class AuditRow:
    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]


def audit_events(
    session: Session, filters: AuditFilters, *, before_id: int | None = None, limit: int = 100
) -> list[AuditRow]:
    """Audit events matching ``filters``, newest first, ``limit`` at a time (page with ``before_id``)."""
    stmt = select(AuditEvent)
    if filters.actor:
        stmt = stmt.where(AuditEvent.actor == filters.actor)
    if filters.action:
        stmt = stmt.where(AuditEvent.action == filters.action)
    if filters.object_type:
        stmt = stmt.where(AuditEvent.object_type == filters.object_type)
    if filters.object_id:
        stmt = stmt.where(AuditEvent.object_id == filters.object_id)
    if filters.since is not None:
        stmt = stmt.where(AuditEvent.at >= filters.since)
    if filters.until is not None:
        stmt = stmt.where(AuditEvent.at < filters.until)
    if before_id is not None:
        stmt = stmt.where(AuditEvent.id < before_id)
    stmt = stmt.order_by(AuditEvent.id.desc()).limit(limit)
    return [
        AuditRow(e.id, e.at, e.actor, e.action, e.object_type, e.object_id, dict(e.detail or {}))
        for e in session.scalars(stmt)
    ]


def audit_vocabulary(session: Session) -> dict[str, list[str]]:
    """Distinct actors, actions and object types, for the filter form's suggestions."""
    return {
        "actors": list(session.scalars(select(AuditEvent.actor).distinct().order_by(AuditEvent.actor).limit(500))),
        "actions": list(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action))),
        "object_types": list(
            session.scalars(select(AuditEvent.object_type).distinct().order_by(AuditEvent.object_type))
        ),
    }


# ---------------------------------------------------------------------------------------------------
# voiceprint


@dataclass(frozen=True)
class VoiceprintSummary:
    clips: int
    embedder: str
    updated_at: datetime


def voiceprint_summary(session: Session, patient_id: int) -> VoiceprintSummary | None:
    row = session.scalars(select(Voiceprint).where(Voiceprint.patient_id == patient_id)).one_or_none()
    if row is None or row.count == 0:
        return None
    return VoiceprintSummary(int(row.count), row.embedder, row.updated_at)


__all__ = ["AuditFilters", "AuditRow", "VoiceprintSummary", "audit_events", "audit_vocabulary", "voiceprint_summary"]
