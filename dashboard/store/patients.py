"""Patients and their baselines: search, what a baseline is made of, and the admin's changes to it.

Baseline rebuilds are **enqueued**, not computed here: excluding or re-including a contribution, or
resetting a baseline, flips ``included`` in this transaction, then, after the commit, enqueues
``worker.jobs.rebuild_baseline(baseline_id)`` by name through :func:`schema.contract.enqueue`, with
the deployment's retry policy (``DashboardConfig.jobs``). That enqueue guarantees a rebuild that
starts after the commit: a finished or dead rebuild under the same id is replaced, a waiting one
suffices, and a running one (which may have read the database before this change) gets a follow-up
that runs after it. The worker's :func:`worker.baselines.rebuild` is the one place that re-derives
statistics and mirrors the decision onto the plain-unit evidence baseline; a second copy here would
drift from it. The dashboard never imports ``worker``. Until the job has run, :meth:`PatientStore.baseline`
reports the baseline as ``stale`` (its stored count differs from its included contributions); if the
enqueue failed (Redis down), repeating the change enqueues it again, and ``painline sweep`` re-queues
the rebuild of every stale baseline with no live job. Scoring jobs enqueued after the rebuild run
after it (one FIFO queue), so no later call is scored against excluded data.

Enrolment from an upload (:meth:`PatientStore.enrol_upload`) needs the embedders, which only workers
load: the decoded 8 kHz mu-law clips go to Redis under ``schema.contract.enrol_upload_key(token)``
(a list, one clip per item) for :data:`UPLOAD_TTL_S` seconds, then
``worker.jobs.enrol_uploaded(patient_id, token, user_id)`` is enqueued with job id
``enrol-upload-<token>``. Job arguments are ids only (Redis holds them and RQ logs them, so not even
the admin's username: the worker looks it up for the audit trail); the job deletes the key when it
has read it. Redis is the one store every web and worker process shares, so this works with web and
workers on different hosts.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from redis.exceptions import RedisError
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session, undefer

from analysis.baseline import RunningStats
from analysis.channel import TELEPHONE_RATE
from analysis.evidence import MEASURES, baseline_measures
from dashboard.store.base import Backends, Invalid, NotFound, like_pattern, patient_key_kind, patient_label, row_id_of
from dashboard.store.contributions import ContributionRow, contribution_rows
from schema.audit import record
from schema.contract import EVIDENCE_BASELINE_EMBEDDER, JobName, enqueue, enrol_job_id, enrol_upload_key, rebuild_job_id
from schema.db import session_scope
from schema.identity import PatientKeyKind
from schema.models import Baseline, BaselineContribution, Call, Patient, Voiceprint

log = logging.getLogger(__name__)

SEARCH_LIMIT = 50
UPLOAD_TTL_S = 3600
"""How long uploaded enrolment clips wait in Redis for their job (and so how long an upload can
precede the enrolment event it became)."""


# ---------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class BaselineStatus:
    """What a patient's current model baseline is built from (included contributions only)."""

    baseline_id: int
    n_utterances: int
    n_calls: int
    updated_at: datetime
    model_version: str


@dataclass(frozen=True)
class PatientRow:
    """A search result (schema ``PatientRow``); ``baseline`` None: none yet."""

    id: int
    label: str
    key_kind: PatientKeyKind | None
    created_at: datetime
    last_call_at: datetime | None
    calls: int
    baseline: BaselineStatus | None


@dataclass(frozen=True)
class PatientSummary:
    """Who a baseline page is about: never the key itself, only its kind."""

    id: int
    label: str
    key_kind: PatientKeyKind | None
    created_at: datetime


@dataclass(frozen=True)
class ContributionRecord:
    """One utterance a model baseline was built from (schema ``Contribution``)."""

    id: int
    utterance_id: int | None
    call_id: int | None
    source: str
    included: bool
    created_at: datetime


@dataclass(frozen=True)
class BaselineRecord:
    """One model baseline, its counts, and its contributions newest first (schema ``Baseline``)."""

    id: int
    embedder: str
    model_version: str
    count: int  # utterances in the stored statistics
    updated_at: datetime
    n_utterances: int  # included contributions
    n_calls: int
    n_excluded: int
    stale: bool  # a rebuild is pending: count differs from n_utterances
    contributions: tuple[ContributionRecord, ...]


@dataclass(frozen=True)
class MeasureRecord:
    """One plain-unit measure: the patient's evidence baseline beside the population's."""

    key: str
    label: str
    unit: str
    patient_mean: float | None
    patient_sd: float | None
    patient_n: int
    population_mean: float | None
    population_sd: float | None
    population_patients: int


@dataclass(frozen=True)
class PatientBaseline:
    """A patient's baselines, current first, and their measures (schema ``PatientBaseline``)."""

    patient: PatientSummary
    baselines: tuple[BaselineRecord, ...]
    measures: tuple[MeasureRecord, ...]


@dataclass(frozen=True)
class ContributionChange:
    """The outcome of excluding or including one contribution; ``rebuild_job`` None: queue unreachable."""

    contribution_id: int
    baseline_id: int
    patient_id: int
    included: bool
    changed: bool
    rebuild_job: str | None


@dataclass(frozen=True)
class BaselineReset:
    """The outcome of a reset: every model baseline's contributions excluded, the rebuilds enqueued."""

    patient_id: int
    baseline_ids: tuple[int, ...]
    excluded: int
    rebuild_jobs: tuple[str, ...]


@dataclass(frozen=True)
class VoiceprintSummary:
    """Whether the patient has a voiceprint for the speaker check, and from how many clips."""

    clips: int
    embedder: str
    updated_at: datetime


@dataclass(frozen=True)
class EnrolUpload:
    """An enrolment upload handed to the workers; ``job_id`` None: nothing was queued (nor kept)."""

    job_id: str | None
    clips: int
    seconds: float

    @property
    def queued(self) -> bool:
        return self.job_id is not None


# ---------------------------------------------------------------------------------------------------
# shared with the queue and the call page


def _model_baselines(session: Session, patient_ids: Iterable[int]) -> dict[int, Baseline]:
    """Each patient's current model baseline: the most recently updated one that is not the evidence one."""
    ids = sorted(set(patient_ids))
    if not ids:
        return {}
    rows = session.scalars(
        select(Baseline)
        .where(Baseline.patient_id.in_(ids), Baseline.embedder != EVIDENCE_BASELINE_EMBEDDER)
        .order_by(Baseline.patient_id, Baseline.updated_at.desc(), Baseline.id.desc())
    ).all()
    current: dict[int, Baseline] = {}
    for row in rows:
        current.setdefault(row.patient_id, row)
    return current


def baseline_status(session: Session, patient_ids: Iterable[int]) -> dict[int, BaselineStatus]:
    """Per patient with a non-empty baseline: utterances and calls it is built from (included only).

    Patients missing from the result have no baseline yet ("none yet" on the queue).
    """
    current = _model_baselines(session, patient_ids)
    if not current:
        return {}
    by_baseline = {b.id: pid for pid, b in current.items()}
    rows = session.execute(
        select(
            BaselineContribution.baseline_id,
            func.count(BaselineContribution.id),
            func.count(func.distinct(BaselineContribution.call_id)),
        )
        .where(BaselineContribution.baseline_id.in_(list(by_baseline)), BaselineContribution.included.is_(True))
        .group_by(BaselineContribution.baseline_id)
    ).all()
    out: dict[int, BaselineStatus] = {}
    for baseline_id, n_utterances, n_calls in rows:
        if n_utterances:
            baseline = current[by_baseline[baseline_id]]
            out[by_baseline[baseline_id]] = BaselineStatus(
                baseline_id=baseline_id,
                n_utterances=int(n_utterances),
                n_calls=int(n_calls),
                updated_at=baseline.updated_at,
                model_version=baseline.model_version,
            )
    return out


def _measures(session: Session, evidence_row: Baseline | None) -> tuple[MeasureRecord, ...]:
    """The patient's evidence means beside the mean over every patient's own evidence mean, so callers
    heard often do not dominate the population's."""
    mine_mean: dict[str, float] = {}
    mine_spread: dict[str, float] = {}
    n = 0
    if evidence_row is not None and evidence_row.count > 0:
        try:
            mine_mean, mine_spread = baseline_measures(RunningStats.from_dict(evidence_row.stats))
            n = evidence_row.count
        except (ValueError, KeyError):
            log.warning("baseline %s: evidence statistics unreadable", evidence_row.id)
    population: dict[str, list[float]] = {m.key: [] for m in MEASURES}
    for stats in session.scalars(
        select(Baseline.stats).where(Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER, Baseline.count > 0)
    ):
        try:
            mean, _ = baseline_measures(RunningStats.from_dict(stats))
        except (ValueError, KeyError):
            continue
        for key, value in mean.items():
            population[key].append(value)
    out = []
    for m in MEASURES:
        values = population[m.key]
        pop_mean = sum(values) / len(values) if values else None
        pop_sd = None
        if len(values) > 1 and pop_mean is not None:
            pop_sd = (sum((v - pop_mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        out.append(
            MeasureRecord(
                key=m.key,
                label=m.label,
                unit=m.unit,
                patient_mean=mine_mean.get(m.key),
                patient_sd=mine_spread.get(m.key),
                patient_n=n,
                population_mean=pop_mean,
                population_sd=pop_sd,
                population_patients=len(values),
            )
        )
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class PatientStore:
    backends: Backends

    def search(self, q: str, actor: str | None, *, limit: int = SEARCH_LIMIT) -> list[PatientRow]:
        """Patients whose hotline reference contains ``q`` (or whose id is ``q``), newest call first.

        Number-keyed patients are found by id only: their key is an HMAC, unsearchable by design.
        The audit row records the query's length and the ids shown, not the query itself.
        """
        q = (q or "").strip()
        with session_scope(self.backends.sessions) as session:
            last_call = (
                select(
                    Call.patient_id,
                    func.max(Call.started_at).label("last_call_at"),
                    func.count(Call.id).label("calls"),
                )
                .group_by(Call.patient_id)
                .subquery()
            )
            stmt = select(Patient, last_call.c.last_call_at, last_call.c.calls).outerjoin(
                last_call, last_call.c.patient_id == Patient.id
            )
            if q:
                conditions: list[ColumnElement[bool]] = [Patient.key.ilike(f"ref:%{like_pattern(q)}%", escape="\\")]
                if (patient_id := row_id_of(q)) is not None:
                    conditions.append(Patient.id == patient_id)
                stmt = stmt.where(or_(*conditions))
            rows = session.execute(
                stmt.order_by(last_call.c.last_call_at.desc().nulls_last(), Patient.id.desc()).limit(limit)
            ).all()
            baselines = baseline_status(session, [p.id for p, _, _ in rows])
            out = [
                PatientRow(
                    id=patient.id,
                    label=patient_label(patient.key, patient.id),
                    key_kind=patient_key_kind(patient.key),
                    created_at=patient.created_at,
                    last_call_at=last_call_at,
                    calls=int(calls or 0),
                    baseline=baselines.get(patient.id),
                )
                for patient, last_call_at, calls in rows
            ]
            if actor is not None:
                record(
                    session,
                    actor,
                    "patient.search",
                    "patient",
                    "-",
                    query_chars=len(q),
                    patient_ids=[p.id for p in out],
                )
            return out

    def require(self, patient_id: int) -> None:
        """Raise :class:`NotFound` unless the patient exists (before an upload is even looked at)."""
        with session_scope(self.backends.sessions) as session:
            if session.get(Patient, patient_id) is None:
                raise NotFound(f"no patient {patient_id}")

    def baseline(self, patient_id: int, actor: str | None) -> PatientBaseline:
        """A patient's baselines with every contribution, and plain-unit measures against everyone's.

        ``baselines`` lists the model baselines, current (most recently updated) first; each has its
        contributions (newest first), counts and ``stale`` (a rebuild is pending). ``measures`` is the
        evidence baseline's mean and spread per measure (pitch in semitones, loudness in dB, jitter,
        shimmer, HNR, ...) beside the population's.
        """
        with session_scope(self.backends.sessions) as session:
            patient = session.get(Patient, patient_id)
            if patient is None:
                raise NotFound(f"no patient {patient_id}")
            rows = session.scalars(
                select(Baseline)
                .options(undefer(Baseline.included_count))  # for ``stale``, in this query
                .where(Baseline.patient_id == patient_id)
                .order_by(Baseline.updated_at.desc(), Baseline.id.desc())
            ).all()
            model_rows = [b for b in rows if b.embedder != EVIDENCE_BASELINE_EMBEDDER]
            evidence_row = next((b for b in rows if b.embedder == EVIDENCE_BASELINE_EMBEDDER), None)
            contributions = session.execute(
                select(
                    BaselineContribution.id,
                    BaselineContribution.baseline_id,
                    BaselineContribution.utterance_id,
                    BaselineContribution.call_id,
                    BaselineContribution.source,
                    BaselineContribution.included,
                    BaselineContribution.created_at,
                )
                .where(BaselineContribution.baseline_id.in_([b.id for b in model_rows] or [-1]))
                .order_by(BaselineContribution.created_at.desc(), BaselineContribution.id.desc())
            ).all()
            by_baseline: dict[int, list[ContributionRecord]] = {b.id: [] for b in model_rows}
            for c in contributions:
                by_baseline[c.baseline_id].append(
                    ContributionRecord(
                        id=c.id,
                        utterance_id=c.utterance_id,
                        call_id=c.call_id,
                        source=c.source,
                        included=bool(c.included),
                        created_at=c.created_at,
                    )
                )
            baselines = []
            for b in model_rows:
                items = by_baseline[b.id]
                included = [c for c in items if c.included]
                baselines.append(
                    BaselineRecord(
                        id=b.id,
                        embedder=b.embedder,
                        model_version=b.model_version,
                        count=b.count,
                        updated_at=b.updated_at,
                        n_utterances=len(included),
                        n_calls=len({c.call_id for c in included if c.call_id is not None}),
                        n_excluded=len(items) - len(included),
                        stale=b.stale,
                        contributions=tuple(items),
                    )
                )
            doc = PatientBaseline(
                patient=PatientSummary(
                    id=patient.id,
                    label=patient_label(patient.key, patient.id),
                    key_kind=patient_key_kind(patient.key),
                    created_at=patient.created_at,
                ),
                baselines=tuple(baselines),
                measures=_measures(session, evidence_row),
            )
            if actor is not None:
                record(session, actor, "baseline.view", "patient", patient_id, baseline_ids=[b.id for b in baselines])
            return doc

    def contributions(self, patient_id: int, baseline: BaselineRecord) -> list[ContributionRow]:
        """One baseline's contributions as the baseline page explains them (origin, who excluded them).

        Unaudited: the page's :meth:`baseline` read, in the same request, recorded the view.
        """
        with session_scope(self.backends.sessions) as session:
            return contribution_rows(
                session,
                patient_id=patient_id,
                baseline_id=baseline.id,
                model_version=baseline.model_version,
                upload_window=timedelta(seconds=UPLOAD_TTL_S),
            )

    def voiceprint(self, patient_id: int) -> VoiceprintSummary | None:
        """The patient's voiceprint, or None if there is none (or it holds no clip)."""
        with session_scope(self.backends.sessions) as session:
            row = session.scalars(select(Voiceprint).where(Voiceprint.patient_id == patient_id)).one_or_none()
            if row is None or row.count == 0:
                return None
            return VoiceprintSummary(int(row.count), row.embedder, row.updated_at)

    def _enqueue_rebuild(self, baseline_id: int) -> str | None:
        job_id = rebuild_job_id(baseline_id)
        queued = enqueue(
            self.backends.queue, JobName.REBUILD_BASELINE, baseline_id, job_id=job_id, options=self.backends.config.jobs
        )
        return job_id if queued.ok else None

    def set_contribution_included(self, contribution_id: int, included: bool, actor: str) -> ContributionChange:
        """Exclude or re-include one contribution, audit it, and enqueue its baseline's rebuild.

        Repeating the same decision changes nothing but enqueues the rebuild again (the remedy if
        Redis was down the first time).
        """
        with session_scope(self.backends.sessions) as session:
            row = session.execute(
                select(BaselineContribution, Baseline)
                .join(Baseline, Baseline.id == BaselineContribution.baseline_id)
                .where(BaselineContribution.id == contribution_id)
            ).one_or_none()
            if row is None:
                raise NotFound(f"no contribution {contribution_id}")
            contribution, baseline = row
            if baseline.embedder == EVIDENCE_BASELINE_EMBEDDER:
                raise Invalid("evidence-baseline contributions follow their model twins; change the model baseline's")
            changed = bool(contribution.included) != included
            contribution.included = included
            record(
                session,
                actor,
                "baseline.include" if included else "baseline.exclude",
                "patient",
                baseline.patient_id,
                contribution_id=contribution_id,
                baseline_id=baseline.id,
                changed=changed,
            )
            baseline_id = baseline.id
            patient_id = baseline.patient_id
        return ContributionChange(
            contribution_id=contribution_id,
            baseline_id=baseline_id,
            patient_id=patient_id,
            included=included,
            changed=changed,
            rebuild_job=self._enqueue_rebuild(baseline_id),
        )

    def reset_baseline(self, patient_id: int, actor: str) -> BaselineReset:
        """Exclude every contribution of the patient's model baselines, then enqueue their rebuilds.

        Exclusion rather than deletion keeps the decision reversible (an admin may re-include what
        was good) and auditable; the baseline then grows again from enrolment and resolved calls.
        """
        with session_scope(self.backends.sessions) as session:
            if session.get(Patient, patient_id) is None:
                raise NotFound(f"no patient {patient_id}")
            baseline_ids = list(
                session.scalars(
                    select(Baseline.id).where(
                        Baseline.patient_id == patient_id, Baseline.embedder != EVIDENCE_BASELINE_EMBEDDER
                    )
                )
            )
            excluded = 0
            if baseline_ids:
                for contribution in session.scalars(
                    select(BaselineContribution).where(
                        BaselineContribution.baseline_id.in_(baseline_ids), BaselineContribution.included.is_(True)
                    )
                ):
                    contribution.included = False
                    excluded += 1
            record(
                session, actor, "baseline.reset", "patient", patient_id, baseline_ids=baseline_ids, excluded=excluded
            )
        jobs = [job for job in map(self._enqueue_rebuild, baseline_ids) if job is not None]
        return BaselineReset(
            patient_id=patient_id, baseline_ids=tuple(baseline_ids), excluded=excluded, rebuild_jobs=tuple(jobs)
        )

    def enrol_upload(self, patient_id: int, clips: Sequence[bytes], user_id: int, actor: str) -> EnrolUpload:
        """Hand decoded 8 kHz mu-law clips to a worker for enrolment, and audit the upload once queued.

        The clips go to Redis (never the database), then the job is enqueued; if either fails the
        clips are deleted again and nothing is audited, since nothing will be enrolled.
        """
        token = secrets.token_hex(16)
        key = enrol_upload_key(token)
        job_id = enrol_job_id(token)
        seconds = sum(len(c) for c in clips) / TELEPHONE_RATE
        redis = self.backends.redis
        queued = False
        if redis is None:
            log.warning("patient %s: enrolment upload not stored (no Redis)", patient_id)
        else:
            try:
                pipe = redis.pipeline()
                pipe.rpush(key, *clips)
                pipe.expire(key, UPLOAD_TTL_S)
                pipe.execute()
            except (RedisError, OSError) as exc:
                log.warning("patient %s: enrolment upload not stored (%s)", patient_id, type(exc).__name__)
            else:
                # the user id, not the name: job arguments sit in Redis and appear in RQ's log lines
                queued = enqueue(
                    self.backends.queue,
                    JobName.ENROL_UPLOAD,
                    patient_id,
                    token,
                    user_id,
                    job_id=job_id,
                    options=self.backends.config.jobs,
                ).ok
            if not queued:
                with contextlib.suppress(RedisError, OSError):
                    redis.delete(key)
        if not queued:
            return EnrolUpload(job_id=None, clips=len(clips), seconds=seconds)
        with session_scope(self.backends.sessions) as session:
            record(
                session,
                actor,
                "baseline.enrol_upload",
                "patient",
                patient_id,
                clips=len(clips),
                seconds=round(seconds, 1),
                job_id=job_id,
            )
        return EnrolUpload(job_id=job_id, clips=len(clips), seconds=seconds)


__all__ = [
    "SEARCH_LIMIT",
    "UPLOAD_TTL_S",
    "BaselineRecord",
    "BaselineReset",
    "BaselineStatus",
    "ContributionChange",
    "ContributionRecord",
    "EnrolUpload",
    "MeasureRecord",
    "PatientBaseline",
    "PatientRow",
    "PatientStore",
    "PatientSummary",
    "VoiceprintSummary",
    "baseline_status",
]
