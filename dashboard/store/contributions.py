"""What the baseline page says about each contribution, so an admin can tell them apart and act.

Read through :meth:`dashboard.store.patients.PatientStore.contributions`; these are the functions
over its session.

A contribution row holds little: its source (enrolment or resolved call), the utterance and call it
came from when it came from a call, its length, whether it is included, and when it was written.
Everything an admin needs to pick the one to exclude is derived here from rows that already exist,
rather than stored twice:

- a call's utterance: the call (linked), the utterance's place in it, and the probability the
  baseline's own model gave it (``scores`` of that model version);
- an enrolment utterance: the enrolment it belonged to and its place in it. :func:`worker.baselines.enrol`
  writes one ``baseline.enrol`` audit event per enrolment, just after its contributions, whose
  timestamps it spaces a microsecond apart; so the enrolment is the first such event of the patient
  at or after the contribution. An enrolment is an *upload* when the same user queued a
  ``baseline.enrol_upload`` from this page within the upload's lifetime before it, *the command
  line* when its actor is ``cli:<user>`` (``painline baseline enrol``, by hotline reference or by
  ``--phone``), and otherwise is named by its actor. Baselines copied to a new model keep the
  timestamps, so they still match;
- an excluded contribution: who excluded it and when, from the ``baseline.exclude`` or
  ``baseline.reset`` event that did.

:class:`BaselineAccount` explains the two counts the page shows: "built from N" (every contribution
recorded) against "M in the statistics" (the baseline's count: included contributions the worker
has folded into the running mean), with the difference itemised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from schema.models import AuditEvent, BaselineContribution, ContributionSource, Score, Utterance

ENROL = "baseline.enrol"
ENROL_UPLOAD = "baseline.enrol_upload"
EXCLUDE = "baseline.exclude"
INCLUDE = "baseline.include"
RESET = "baseline.reset"
CLI_ACTOR_PREFIX = "cli:"
"""What ``painline baseline enrol`` records as the actor unless ``--actor`` says otherwise."""


class Origin(StrEnum):
    """Where a contribution came from, as the page names it."""

    CALL = "call"
    UPLOAD = "upload"
    COMMAND_LINE = "command_line"
    ENROLMENT = "enrolment"  # an enrolment the audit trail does not place (another actor, or no event)


@dataclass(frozen=True)
class Enrolment:
    """One enrolment session: the ``baseline.enrol`` event its utterances were written under."""

    at: datetime
    actor: str
    origin: Origin
    uploaded_by: str | None  # the dashboard user who uploaded the recordings


@dataclass(frozen=True)
class Decision:
    """The admin decision that left a contribution excluded."""

    actor: str
    at: datetime
    by_reset: bool


@dataclass(frozen=True)
class ContributionRow:
    id: int
    origin: Origin
    included: bool
    created_at: datetime
    speech_s: float | None
    probability: float | None  # the baseline's model on a call's utterance; None for enrolment
    call_id: int | None
    utterance_number: int | None  # 1-based: within the call, or within the enrolment
    utterances_in_enrolment: int | None
    utterance_start_s: float | None  # where in the call the utterance began
    enrolment: Enrolment | None
    excluded_by: Decision | None


@dataclass(frozen=True)
class BaselineAccount:
    """The page's two counts and what separates them."""

    recorded: int  # "built from": every contribution row of the baseline
    included: int
    in_statistics: int  # the baseline's count, as the worker last derived it

    @property
    def excluded(self) -> int:
        return self.recorded - self.included

    @property
    def differences(self) -> list[str]:
        """Why ``in_statistics`` is not ``recorded``: excluded ones, and a rebuild not yet run."""
        out = []
        if self.excluded:
            out.append(f"{self.excluded} excluded by an admin")
        waiting = self.included - self.in_statistics
        if waiting > 0:
            out.append(f"{waiting} included but not yet folded in (the rebuild is pending)")
        elif waiting < 0:
            out.append(f"{-waiting} excluded but still counted until the rebuild runs")
        return out


def account(rows: Sequence[ContributionRow], in_statistics: int) -> BaselineAccount:
    return BaselineAccount(
        recorded=len(rows), included=sum(1 for r in rows if r.included), in_statistics=int(in_statistics)
    )


def _events(session: Session, patient_id: int) -> list[AuditEvent]:
    return list(
        session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.object_type == "patient",
                AuditEvent.object_id == str(patient_id),
                AuditEvent.action.in_([ENROL, ENROL_UPLOAD, EXCLUDE, INCLUDE, RESET]),
            )
            .order_by(AuditEvent.at, AuditEvent.id)
        )
    )


def _enrolments(events: Sequence[AuditEvent], upload_window: timedelta) -> list[Enrolment]:
    """Every enrolment of the patient, oldest first, each placed as an upload, the CLI, or neither."""
    uploads = [e for e in events if e.action == ENROL_UPLOAD]
    used: set[int] = set()
    out = []
    for e in (e for e in events if e.action == ENROL):
        upload = next(
            (u for u in uploads if u.id not in used and u.actor == e.actor and e.at - upload_window <= u.at <= e.at),
            None,
        )
        if upload is not None:
            used.add(upload.id)
            out.append(Enrolment(e.at, e.actor, Origin.UPLOAD, upload.actor))
        elif e.actor.startswith(CLI_ACTOR_PREFIX):
            out.append(Enrolment(e.at, e.actor, Origin.COMMAND_LINE, None))
        else:
            out.append(Enrolment(e.at, e.actor, Origin.ENROLMENT, None))
    return out


def _exclusions(events: Sequence[AuditEvent], baseline_id: int) -> tuple[dict[int, Decision], list[Decision]]:
    """The latest exclude per contribution id, and every reset that covered this baseline."""
    by_contribution: dict[int, Decision] = {}
    resets: list[Decision] = []
    for e in events:
        detail = e.detail or {}
        if e.action in (EXCLUDE, INCLUDE) and isinstance(detail.get("contribution_id"), int):
            if e.action == EXCLUDE:
                by_contribution[detail["contribution_id"]] = Decision(e.actor, e.at, by_reset=False)
            else:
                by_contribution.pop(detail["contribution_id"], None)
        elif e.action == RESET and baseline_id in (detail.get("baseline_ids") or []):
            resets.append(Decision(e.actor, e.at, by_reset=True))
    return by_contribution, resets


def contribution_rows(
    session: Session,
    *,
    patient_id: int,
    baseline_id: int,
    model_version: str,
    upload_window: timedelta,
) -> list[ContributionRow]:
    """The contributions of one baseline, newest first, each with where it came from and who excluded it.

    ``upload_window`` is how long an upload waits in Redis for its job: the longest an upload can
    precede the enrolment it became.
    """
    c = BaselineContribution
    found = session.execute(
        select(
            c.id,
            c.source,
            c.included,
            c.created_at,
            c.call_id,
            c.speech_s,
            Utterance.seq,
            Utterance.start_ms,
            Utterance.speech_s.label("utterance_speech_s"),
            Score.probability,
        )
        .outerjoin(Utterance, Utterance.id == c.utterance_id)
        .outerjoin(Score, and_(Score.utterance_id == c.utterance_id, Score.model_version == model_version))
        .where(c.baseline_id == baseline_id)
        .order_by(c.created_at.desc(), c.id.desc())
    ).all()
    events = _events(session, patient_id)
    enrolments = _enrolments(events, upload_window)
    excluded, resets = _exclusions(events, baseline_id)

    # each enrolment contribution belongs to the first enrolment event at or after it
    enrolment_of: dict[int, Enrolment | None] = {}
    members: dict[int, list[int]] = {}
    for r in sorted((r for r in found if r.source == ContributionSource.ENROLMENT.value), key=lambda r: r.created_at):
        index = next((i for i, e in enumerate(enrolments) if e.at >= r.created_at), None)
        enrolment_of[r.id] = enrolments[index] if index is not None else None
        members.setdefault(-1 if index is None else index, []).append(r.id)
    place = {cid: (k + 1, len(ids)) for ids in members.values() for k, cid in enumerate(ids)}

    rows = []
    for r in found:
        from_call = r.source == ContributionSource.RESOLVED_CALL.value
        enrolment = None if from_call else enrolment_of.get(r.id)
        number, of = (None, None) if from_call else place.get(r.id, (None, None))
        decision = None
        if not r.included:
            decision = excluded.get(r.id) or next((d for d in reversed(resets) if d.at >= r.created_at), None)
        rows.append(
            ContributionRow(
                id=r.id,
                origin=Origin.CALL if from_call else (enrolment.origin if enrolment else Origin.ENROLMENT),
                included=bool(r.included),
                created_at=r.created_at,
                speech_s=r.speech_s if r.speech_s is not None else r.utterance_speech_s,
                probability=r.probability if from_call else None,
                call_id=r.call_id,
                utterance_number=(r.seq + 1 if r.seq is not None else None) if from_call else number,
                utterances_in_enrolment=of,
                utterance_start_s=r.start_ms / 1000 if from_call and r.start_ms is not None else None,
                enrolment=enrolment,
                excluded_by=decision,
            )
        )
    return rows


__all__ = [
    "BaselineAccount",
    "ContributionRow",
    "Decision",
    "Enrolment",
    "Origin",
    "account",
    "contribution_rows",
]
