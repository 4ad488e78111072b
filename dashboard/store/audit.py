"""The audit log as the dashboard reads it: one query for the API and the page, each read itself audited.

Writes of audit events stay with the change they record (every subject store calls
:func:`schema.audit.record` in the transaction of its own read or change); this subject only reads
the trail back, and records that it was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, select
from sqlalchemy.orm import Session

from dashboard.store.base import Backends
from schema.audit import AuditDetailError, record
from schema.db import session_scope
from schema.models import AuditEvent

AUDIT_PAGE_MAX = 500
VOCABULARY_MAX_ACTORS = 500
WITHHELD = "(withheld)"


@dataclass(frozen=True)
class AuditFilters:
    """Exact-match filters ("" or None: any) and a time window (``until`` exclusive)."""

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None


@dataclass(frozen=True)
class AuditEntry:
    """One audit event (schema ``AuditEvent``)."""

    id: int
    at: datetime
    actor: str
    action: str
    object_type: str
    object_id: str
    detail: dict[str, Any]


@dataclass(frozen=True)
class AuditPage:
    """Events newest first; pass ``next_before_id`` back as ``before_id`` for the next (None: no more)."""

    events: tuple[AuditEntry, ...]
    next_before_id: int | None


@dataclass(frozen=True)
class AuditVocabulary:
    """Distinct actors, actions and object types: the page's filter suggestions."""

    actors: tuple[str, ...]
    actions: tuple[str, ...]
    object_types: tuple[str, ...]


@dataclass(frozen=True)
class AuditScreen:
    """What the audit page shows: a page of events and the filter form's suggestions."""

    page: AuditPage
    vocabulary: AuditVocabulary


class _NullSink:
    """Stands in for a session so :func:`schema.audit.record` can vet a value without writing it."""

    def add(self, _event: Any) -> None:
        return None


def auditable(value: Any) -> Any:
    """``value`` if the audit trail accepts it, else :data:`WITHHELD` (e.g. a filter shaped like a phone number).

    Lets a read record what was asked for without the audit write failing, and so the read, over
    one number-like search term.
    """
    try:
        record(_NullSink(), "-", "-", "-", "-", value=value)  # type: ignore[arg-type]
    except AuditDetailError:
        return WITHHELD
    return value


def _statement(filters: AuditFilters, before_id: int | None, limit: int) -> Select[AuditEvent]:
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
    return stmt.order_by(AuditEvent.id.desc()).limit(limit)


def _page(session: Session, filters: AuditFilters, before_id: int | None, limit: int) -> AuditPage:
    """One more row than ``limit`` is read, so the page knows whether another follows."""
    events = session.scalars(_statement(filters, before_id, limit + 1)).all()
    more = len(events) > limit
    shown = events[:limit]
    return AuditPage(
        events=tuple(
            AuditEntry(e.id, e.at, e.actor, e.action, e.object_type, e.object_id, dict(e.detail or {})) for e in shown
        ),
        next_before_id=shown[-1].id if more and shown else None,
    )


@dataclass(frozen=True)
class AuditStore:
    backends: Backends

    def log(
        self, actor: str | None, filters: AuditFilters, *, before_id: int | None = None, limit: int = 100
    ) -> AuditPage:
        """Audit events newest first, filtered exactly; the API's read (1..:data:`AUDIT_PAGE_MAX` a page).

        Reading the audit log is itself recorded, with the filters used; a filter the trail would
        refuse (shaped like a phone number) is recorded as :data:`WITHHELD`.
        """
        limit = max(1, min(int(limit), AUDIT_PAGE_MAX))
        with session_scope(self.backends.sessions) as session:
            page = _page(session, filters, before_id, limit)
            if actor is not None:
                asked = {
                    "actor": filters.actor,
                    "action": filters.action,
                    "object_type": filters.object_type,
                    "object_id": filters.object_id,
                }
                used = {k: auditable(v) for k, v in asked.items() if v}
                record(session, actor, "audit.view", "audit", "-", filters=used, shown=len(page.events))
            return page

    def browse(
        self,
        actor: str,
        filters: AuditFilters,
        shown_filters: Mapping[str, object],
        *,
        before_id: int | None = None,
        limit: int = 100,
    ) -> AuditScreen:
        """The audit page's read: a page of events and the filter vocabulary, recorded as ``audit.view``.

        ``shown_filters`` is what the page records as asked for (its own parameter names, dates as
        dates); if the trail refuses a value, only the filters' names are recorded, so the read
        still happens and is still logged.
        """
        with session_scope(self.backends.sessions) as session:
            page = _page(session, filters, before_id, limit)
            vocabulary = AuditVocabulary(
                actors=tuple(
                    session.scalars(
                        select(AuditEvent.actor).distinct().order_by(AuditEvent.actor).limit(VOCABULARY_MAX_ACTORS)
                    )
                ),
                actions=tuple(session.scalars(select(AuditEvent.action).distinct().order_by(AuditEvent.action))),
                object_types=tuple(
                    session.scalars(select(AuditEvent.object_type).distinct().order_by(AuditEvent.object_type))
                ),
            )
            used = dict(shown_filters)
            try:
                record(session, actor, "audit.view", "audit", "-", filters=used, shown=len(page.events))
            except AuditDetailError:
                record(session, actor, "audit.view", "audit", "-", filters=sorted(used), shown=len(page.events))
            return AuditScreen(page, vocabulary)


__all__ = [
    "AUDIT_PAGE_MAX",
    "WITHHELD",
    "AuditEntry",
    "AuditFilters",
    "AuditPage",
    "AuditScreen",
    "AuditStore",
    "AuditVocabulary",
    "auditable",
]
