"""Every read and change the dashboard makes, by subject, shared by the HTML pages and the JSON API.

A page handler and its API twin call the same method, so they cannot drift apart: same rows, same
ordering, same audit events, same jobs. Methods return frozen dataclasses (records; datetimes left
as :class:`~datetime.datetime` for templates, turned into ISO 8601 by :func:`to_json` for the API,
whose OpenAPI schemas a test holds to these records) and raise :class:`NotFound`, :class:`Conflict`
or :class:`Invalid`, which the callers turn into 404, 409 and 400.

Subjects: :mod:`~dashboard.store.flags_queue` (the triage queue, acknowledging and resolving flags,
publishing the change), :mod:`~dashboard.store.calls` (one call), :mod:`~dashboard.store.patients`
(search, baselines and their contributions, resets, enrolment uploads) and
:mod:`~dashboard.store.audit` (reading the audit log). :class:`Store` binds all four to one app.

Audit: every method that shows or changes a patient's data takes the acting username and writes an
:class:`~schema.models.AuditEvent` in the same transaction as the read or change (so a view that
failed is not logged as seen, and a change is never committed without its record). Reads take
``actor=None`` only for internal refreshes that show nothing new to a person.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask

from dashboard.store.audit import AuditEntry, AuditFilters, AuditPage, AuditStore, AuditVocabulary, auditable
from dashboard.store.base import Backends, Conflict, Invalid, NotFound, is_live, live_clause, patient_label, to_json
from dashboard.store.calls import CallDetail, CallStore, UtteranceRecord, configured_threshold
from dashboard.store.flags_queue import (
    FlagRecord,
    FlagsQueueStore,
    QueueRow,
    QueueSort,
    QueueState,
    QueueView,
    ResolvedFlag,
    SortDirection,
)
from dashboard.store.patients import BaselineStatus, MeasureRecord, PatientBaseline, PatientRow, PatientStore


@dataclass(frozen=True)
class Store:
    """The four subject stores of one app, sharing its session factory, queue, Redis and settings."""

    flags: FlagsQueueStore
    calls: CallStore
    patients: PatientStore
    audit: AuditStore

    @classmethod
    def for_app(cls, app: Flask | None = None) -> Store:
        backends = Backends.for_app(app)
        return cls(FlagsQueueStore(backends), CallStore(backends), PatientStore(backends), AuditStore(backends))


__all__ = [
    "AuditEntry",
    "AuditFilters",
    "AuditPage",
    "AuditVocabulary",
    "BaselineStatus",
    "CallDetail",
    "Conflict",
    "FlagRecord",
    "Invalid",
    "MeasureRecord",
    "NotFound",
    "PatientBaseline",
    "PatientRow",
    "QueueRow",
    "QueueSort",
    "QueueState",
    "QueueView",
    "ResolvedFlag",
    "SortDirection",
    "Store",
    "UtteranceRecord",
    "auditable",
    "configured_threshold",
    "is_live",
    "live_clause",
    "patient_label",
    "to_json",
]
