"""Per-patient baselines and voiceprints: what may go in, and how the statistics are re-derived.

The policy, deliberately narrow because a baseline defines "normal" for a caller and a polluted one
would hide pain:

- A baseline grows only from (a) explicit enrolment of normal-voice audio (:func:`enrol`), and
  (b) the utterances of a call whose flag a nurse *resolved* with label ``no_pain``
  (:func:`grow_from_call`). Never from an unflagged call (no one checked it), an open or
  acknowledged flag, or ``pain_confirmed`` / ``unsure``.
- From a call, only utterances that are verifiably the patient: if the patient has a voiceprint, the
  utterance's ``speaker_similarity`` must be present and at least the speaker threshold; if no
  voiceprint exists yet, the caller-ID match is all there is and the utterance is taken.
- Every embedding folded in is kept as a :class:`~schema.models.BaselineContribution`, unique per
  utterance (so a repeated job adds nothing), and the statistics are always *re-derived* from the
  included contributions rather than updated in place, so excluding one (an admin's decision, then
  :func:`rebuild`) leaves exactly the statistics it would have had without it.

Baselines are keyed by (patient, embedder, model version): a new model starts a new baseline, which
:func:`derive_for_model` fills from the contributions of the patient's most recent baseline with the
same embedder (those embeddings are the embedder's raw output, from enrolment audio or from the
stored ``Score.embedding`` of resolved calls). A different embedder needs new audio: re-enrol.

Alongside each patient's model baselines there is one *evidence baseline* (embedder
:data:`schema.contract.EVIDENCE_BASELINE_EMBEDDER`), over the plain-unit measures of :mod:`analysis.evidence`, grown
by the same policy at the same moments: it is what "pitch +2.3 semitones" is measured against. Its
contributions mirror the model baseline's (same utterance, or for enrolment the same timestamp), and
:func:`rebuild` copies include/exclude decisions across.

Voiceprints grow from enrolment audio only. A speaker d-vector is a biometric identifier; computing
it for resolved calls would mean keeping one per utterance for the days or weeks until a nurse
resolves the flag (the audio is gone by then), a second biometric store nobody asked for. A
voiceprint fed from calls also drifts toward whoever calls most, which is exactly what it exists to
catch. Enrolment is done by staff who verified the caller, so it is the one trustworthy source.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats
from analysis.embedders import EmbedderUnavailable
from analysis.embedders.speaker import cosine_similarity
from analysis.evidence import EVIDENCE_VERSION, MEASURE_KEYS, measure_vector
from analysis.model import PainModel
from analysis.segmentation import cut_clip
from schema.audit import record
from schema.contract import EVIDENCE_BASELINE_EMBEDDER
from schema.db import session_scope
from schema.models import (
    Baseline,
    BaselineContribution,
    Call,
    CallStatus,
    ContributionSource,
    Flag,
    FlagLabel,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    Voiceprint,
    utcnow,
)
from worker.context import WorkerContext
from worker.featurize import featurize
from worker.rows import from_bytes, get_or_create_locked, to_bytes

log = logging.getLogger(__name__)

EVIDENCE_BASELINE_VERSION = f"evidence-v{EVIDENCE_VERSION}"


class CallNotReady(RuntimeError):
    """The call is not finished yet; raised so RQ's Retry runs the job again later."""


# ---------------------------------------------------------------------------------------------------
# rows and statistics


def speaker_passes(similarity: float | None, has_voiceprint: bool, threshold: float) -> bool:
    """The speaker rule for baseline growth (see the module docstring)."""
    if not has_voiceprint:
        return True
    return similarity is not None and similarity >= threshold


def model_baseline(session: Session, patient_id: int, model: PainModel) -> Baseline:
    """The patient's baseline for ``model`` (created empty if absent), row-locked."""
    return get_or_create_locked(
        session,
        Baseline,
        {"patient_id": patient_id, "embedder": model.embedder_name, "model_version": model.version},
        {"stats": RunningStats.empty(model.dim).to_dict(), "count": 0, "updated_at": utcnow()},
    )


def evidence_baseline(session: Session, patient_id: int) -> Baseline:
    """The patient's plain-unit measure baseline (created empty if absent), row-locked."""
    return get_or_create_locked(
        session,
        Baseline,
        {
            "patient_id": patient_id,
            "embedder": EVIDENCE_BASELINE_EMBEDDER,
            "model_version": EVIDENCE_BASELINE_VERSION,
        },
        {"stats": RunningStats.empty(len(MEASURE_KEYS)).to_dict(), "count": 0, "updated_at": utcnow()},
    )


def rederive(session: Session, baseline: Baseline) -> RunningStats:
    """Recompute ``baseline.stats`` and ``count`` from its included contributions."""
    session.flush()
    blobs = session.scalars(
        select(BaselineContribution.embedding)
        .where(BaselineContribution.baseline_id == baseline.id, BaselineContribution.included.is_(True))
        .order_by(BaselineContribution.id)
    ).all()
    if blobs:
        stats = RunningStats.from_array(np.vstack([from_bytes(b) for b in blobs]))
    else:
        stats = RunningStats.empty(len(baseline.stats.get("mean", [])) if baseline.stats else 0)
    baseline.stats = stats.to_dict()
    baseline.count = stats.n
    baseline.updated_at = utcnow()
    return stats


def _mirror_inclusion(session: Session, source: Baseline, target: Baseline) -> int:
    """Copy include/exclude decisions from ``source``'s contributions to their twins in ``target``."""
    changed = 0
    twins = session.scalars(select(BaselineContribution).where(BaselineContribution.baseline_id == target.id)).all()
    by_utterance = {c.utterance_id: c for c in twins if c.utterance_id is not None}
    by_time = {c.created_at: c for c in twins if c.utterance_id is None}
    for c in session.scalars(select(BaselineContribution).where(BaselineContribution.baseline_id == source.id)):
        twin = by_utterance.get(c.utterance_id) if c.utterance_id is not None else by_time.get(c.created_at)
        if twin is not None and twin.included != c.included:
            twin.included = c.included
            changed += 1
    return changed


def _add_contribution(
    session: Session,
    baseline: Baseline,
    embedding: np.ndarray,
    source: ContributionSource,
    *,
    utterance_id: int | None = None,
    call_id: int | None = None,
    created_at: datetime | None = None,
    speech_s: float | None = None,
) -> BaselineContribution:
    row = BaselineContribution(
        baseline_id=baseline.id,
        utterance_id=utterance_id,
        call_id=call_id,
        source=source.value,
        embedding=to_bytes(embedding),
        speech_s=speech_s,
        included=True,
        created_at=created_at or utcnow(),
    )
    session.add(row)
    return row


# ---------------------------------------------------------------------------------------------------
# enrolment


@dataclass
class EnrolmentResult:
    """What :func:`enrol` did; ids and counts only."""

    baseline_id: int
    baseline_n: int
    accepted: int  # clips accepted
    rejected_speaker: list[int] = field(default_factory=list)  # indices of clips refused
    voiceprint_n: int = 0
    evidence_n: int = 0
    no_speech: list[int] = field(default_factory=list)  # indices of clips in which the VAD found no utterance
    utterances: int = 0  # baseline contributions added: the utterances cut from the accepted clips


def enrol(
    patient_id: int,
    clips_8k: Sequence[np.ndarray],
    actor: str,
    *,
    ctx: WorkerContext,
    check_speaker: bool = True,
) -> EnrolmentResult:
    """Enrol normal-voice clips (8 kHz float32) for a patient: baseline, evidence baseline, voiceprint.

    Each clip is first cut into utterances exactly as a call is cut (:func:`analysis.segmentation.cut_clip`
    with the deployment's VAD settings, through the mu-law codec): the baseline must describe the
    same measurement a call's utterances are compared with, and a whole file measured at once is a
    different measurement (its silences and onsets move level and pitch statistics). Each utterance
    is one baseline contribution; a clip with no utterance is reported in ``no_speech``.

    With ``check_speaker`` and an existing voiceprint, clips whose speaker similarity falls below
    the threshold are refused (reported by index) rather than folded in: a second enrolment session
    must be the same person as the first. Writes one audit event with counts only.
    """
    if not clips_8k:
        raise ValueError("enrolment needs at least one clip")
    model = ctx.model
    raw = [np.asarray(c, dtype=np.float32) for c in clips_8k]
    cut = [cut_clip(clip, ctx.vad) for clip in raw]
    no_speech = [i for i, pieces in enumerate(cut) if not pieces]
    owner = [i for i, pieces in enumerate(cut) for _ in pieces]  # utterance -> the clip it came from
    utterances = [piece.samples for pieces in cut for piece in pieces]
    # kept with each contribution: the audio is not, and the baseline page tells utterances apart by length
    speech = [piece.speech_s for pieces in cut for piece in pieces]
    if not utterances:
        raise ValueError("no speech found in the enrolment audio")
    featurized = featurize(ctx, utterances)
    X = featurized.features
    measure_rows = [measure_vector(m) for m in featurized.measures]
    D: np.ndarray | None = None
    if ctx.speaker_embedder is not None:
        try:
            D = ctx.speaker_embedder.embed(raw)
        except EmbedderUnavailable as exc:
            log.warning("enrolment without voiceprint: %s", exc)

    with session_scope(ctx.sessions) as session:
        if session.get(Patient, patient_id) is None:
            raise LookupError(f"no patient {patient_id}")
        voiceprint = session.scalars(
            select(Voiceprint).where(Voiceprint.patient_id == patient_id).with_for_update()
        ).one_or_none()
        accepted = [i for i in range(len(raw)) if i not in no_speech]
        rejected: list[int] = []
        if check_speaker and D is not None and voiceprint is not None and voiceprint.count > 0:
            ref = from_bytes(voiceprint.vector)
            sims = [cosine_similarity(d, ref) for d in D]
            rejected = [i for i in accepted if sims[i] < ctx.speaker_threshold]
            accepted = [i for i in accepted if sims[i] >= ctx.speaker_threshold]

        baseline = model_baseline(session, patient_id, model)
        ev_baseline = evidence_baseline(session, patient_id)
        start = utcnow()
        kept = [u for u, clip in enumerate(owner) if clip in accepted]
        for u in kept:
            # twins share a timestamp (distinct per utterance), which is how exclusions are mirrored
            at = start + timedelta(microseconds=u)
            _add_contribution(session, baseline, X[u], ContributionSource.ENROLMENT, created_at=at, speech_s=speech[u])
            measure_row = measure_rows[u]
            if measure_row is not None:
                _add_contribution(
                    session, ev_baseline, measure_row, ContributionSource.ENROLMENT, created_at=at, speech_s=speech[u]
                )
        stats = rederive(session, baseline)
        ev_stats = rederive(session, ev_baseline)

        voiceprint_n = voiceprint.count if voiceprint is not None else 0
        if D is not None and accepted and ctx.speaker_embedder is not None:
            voiceprint_n = _fold_into_voiceprint(
                session, patient_id, voiceprint, D[accepted], ctx.speaker_embedder.name
            )

        record(
            session,
            actor,
            "baseline.enrol",
            "patient",
            patient_id,
            clips=len(raw),
            accepted=len(accepted),
            rejected_speaker=len(rejected),
            no_speech=len(no_speech),
            utterances=len(kept),
            baseline_id=baseline.id,
            baseline_n=stats.n,
            model_version=model.version,
            voiceprint_n=voiceprint_n,
        )
        return EnrolmentResult(
            baseline_id=baseline.id,
            baseline_n=stats.n,
            accepted=len(accepted),
            rejected_speaker=rejected,
            voiceprint_n=voiceprint_n,
            evidence_n=ev_stats.n,
            no_speech=no_speech,
            utterances=len(kept),
        )


def _fold_into_voiceprint(
    session: Session, patient_id: int, voiceprint: Voiceprint | None, D: np.ndarray, embedder_name: str
) -> int:
    """Running mean of the d-vectors; a voiceprint from another speaker embedder is replaced."""
    D = np.atleast_2d(np.asarray(D, dtype=np.float64))
    if voiceprint is None:
        voiceprint = get_or_create_locked(
            session,
            Voiceprint,
            {"patient_id": patient_id},
            {
                "embedder": embedder_name,
                "vector": to_bytes(np.zeros(D.shape[1])),
                "count": 0,
                "updated_at": utcnow(),
            },
        )
    if voiceprint.embedder != embedder_name or voiceprint.count == 0:
        old, n = np.zeros(D.shape[1]), 0
    else:
        old, n = from_bytes(voiceprint.vector), voiceprint.count
    mean = (old * n + D.sum(axis=0)) / (n + len(D))
    voiceprint.embedder = embedder_name
    voiceprint.vector = to_bytes(mean)
    voiceprint.count = n + len(D)
    voiceprint.updated_at = utcnow()
    return voiceprint.count


# ---------------------------------------------------------------------------------------------------
# growth from resolved calls


class GrowthOutcome(StrEnum):
    """What :func:`grow_from_call` did with one call: the policy ran, or which of its rules refused it."""

    APPLIED = "applied"  # ``added`` may still be 0: a repeated job finds every utterance already in
    NO_CALL = "no call"
    NOT_REVIEWED = "not reviewed"  # no flag: nobody checked the call
    NOT_RESOLVED_NO_PAIN = "not resolved as no_pain"
    NO_PATIENT = "no patient"
    NOT_SCORED = "not scored"  # no utterance scored by the current model


@dataclass
class GrowthResult:
    """What :func:`grow_from_call` did (or why it did nothing); ``worker.jobs.grow_baseline_from_call`` returns it."""

    outcome: GrowthOutcome
    added: int = 0
    excluded_speaker: int = 0
    baseline_id: int | None = None
    baseline_n: int = 0
    reason: str = ""


def grow_from_call(session: Session, ctx: WorkerContext, call_id: int) -> GrowthResult:
    """Apply the baseline policy to one call inside the caller's transaction.

    Raises :class:`CallNotReady` for a call that is not finalised yet (the nurse resolved the flag
    mid-call: later utterances should count too, so wait for the verdict).
    """
    call = session.get(Call, call_id)
    if call is None:
        return GrowthResult(GrowthOutcome.NO_CALL, reason="no such call")
    flag = session.scalars(select(Flag).where(Flag.call_id == call_id)).one_or_none()
    if flag is None:
        return GrowthResult(GrowthOutcome.NOT_REVIEWED, reason="no flag: an unreviewed call never feeds a baseline")
    if flag.status != FlagStatus.RESOLVED.value or flag.label != FlagLabel.NO_PAIN.value:
        return GrowthResult(
            GrowthOutcome.NOT_RESOLVED_NO_PAIN,
            reason=f"flag {flag.status}/{flag.label or 'unlabelled'}: not resolved as no_pain",
        )
    if call.patient_id is None:
        return GrowthResult(GrowthOutcome.NO_PATIENT, reason="call has no patient")
    if call.status != CallStatus.FINALISED.value:
        raise CallNotReady(f"call {call_id} is not finalised yet")
    model = ctx.model
    rows = session.execute(
        select(Utterance.id, Utterance.speech_s, Score.embedding, Score.features, Score.speaker_similarity)
        .join(Score, Score.utterance_id == Utterance.id)
        .where(Utterance.call_id == call_id, Score.model_version == model.version)
        .order_by(Utterance.seq)
    ).all()
    if not rows:
        return GrowthResult(GrowthOutcome.NOT_SCORED, reason=f"no utterances scored by model {model.version}")
    has_voiceprint = (
        session.scalar(select(Voiceprint.id).where(Voiceprint.patient_id == call.patient_id, Voiceprint.count > 0))
        is not None
    )
    eligible = [r for r in rows if speaker_passes(r.speaker_similarity, has_voiceprint, ctx.speaker_threshold)]
    excluded = len(rows) - len(eligible)

    baseline = model_baseline(session, call.patient_id, model)
    ev_baseline = evidence_baseline(session, call.patient_id)
    have = set(
        session.scalars(
            select(BaselineContribution.utterance_id).where(
                BaselineContribution.baseline_id == baseline.id,
                BaselineContribution.utterance_id.is_not(None),
            )
        )
    )
    have_ev = set(
        session.scalars(
            select(BaselineContribution.utterance_id).where(
                BaselineContribution.baseline_id == ev_baseline.id,
                BaselineContribution.utterance_id.is_not(None),
            )
        )
    )
    added = 0
    for r in eligible:
        if r.id not in have:
            _add_contribution(
                session,
                baseline,
                from_bytes(r.embedding),
                ContributionSource.RESOLVED_CALL,
                utterance_id=r.id,
                call_id=call_id,
                speech_s=r.speech_s,
            )
            added += 1
        stored = r.features or {}
        # measures of an older evidence definition would skew this version's baseline: skip them
        measures = stored.get("measures") if stored.get("evidence_version") == EVIDENCE_VERSION else None
        vec = measure_vector(measures) if measures else None
        if vec is not None and r.id not in have_ev:
            _add_contribution(
                session,
                ev_baseline,
                vec,
                ContributionSource.RESOLVED_CALL,
                utterance_id=r.id,
                call_id=call_id,
                speech_s=r.speech_s,
            )
    stats = rederive(session, baseline)
    rederive(session, ev_baseline)
    if added:
        record(
            session,
            "worker",
            "baseline.grow",
            "baseline",
            baseline.id,
            call_id=call_id,
            added=added,
            excluded_speaker=excluded,
            baseline_n=stats.n,
        )
    return GrowthResult(
        GrowthOutcome.APPLIED, added=added, excluded_speaker=excluded, baseline_id=baseline.id, baseline_n=stats.n
    )


def grow_from_resolved_call(ctx: WorkerContext, call_id: int) -> GrowthResult:
    """:func:`grow_from_call` in a transaction of its own: what the job runs, and tests and tools call."""
    with session_scope(ctx.sessions) as session:
        return grow_from_call(session, ctx, call_id)


# ---------------------------------------------------------------------------------------------------
# rebuilding and new models


def rebuild(session: Session, baseline_id: int) -> RunningStats:
    """Re-derive a baseline from its included contributions, mirroring to the evidence baseline."""
    baseline = session.scalars(select(Baseline).where(Baseline.id == baseline_id).with_for_update()).one_or_none()
    if baseline is None:
        raise LookupError(f"no baseline {baseline_id}")
    stats = rederive(session, baseline)
    if baseline.embedder != EVIDENCE_BASELINE_EMBEDDER:
        twin = session.scalars(
            select(Baseline)
            .where(
                Baseline.patient_id == baseline.patient_id,
                Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER,
                Baseline.model_version == EVIDENCE_BASELINE_VERSION,
            )
            .with_for_update()
        ).one_or_none()
        if twin is not None:
            _mirror_inclusion(session, baseline, twin)
            rederive(session, twin)
    return stats


def derive_for_model(session: Session, patient_id: int, new_model: PainModel) -> Baseline | None:
    """Start ``new_model``'s baseline from the patient's most recent baseline with the same embedder.

    Contributions are copied with their include/exclude state, utterance and timestamp (so the
    evidence twins still pair up). Idempotent: a baseline that already has contributions is
    returned as is.
    Returns None when no baseline with the same embedder exists (the patient must re-enrol).

    Assumes embeddings of one embedder are comparable across model versions, which holds when both
    models used the same channel settings (``rms_normalise``); the model card of the old version is
    not stored, so this cannot be checked here.
    """
    existing = session.scalars(
        select(Baseline).where(
            Baseline.patient_id == patient_id,
            Baseline.embedder == new_model.embedder_name,
            Baseline.model_version == new_model.version,
        )
    ).one_or_none()
    if existing is not None and session.scalar(
        select(func.count()).select_from(BaselineContribution).where(BaselineContribution.baseline_id == existing.id)
    ):
        return existing
    source = session.scalars(
        select(Baseline)
        .where(
            Baseline.patient_id == patient_id,
            Baseline.embedder == new_model.embedder_name,
            Baseline.model_version != new_model.version,
            Baseline.count > 0,
        )
        .order_by(Baseline.updated_at.desc(), Baseline.id.desc())
        .limit(1)
    ).first()
    if source is None:
        return None
    target = model_baseline(session, patient_id, new_model)
    have = set(
        session.scalars(select(BaselineContribution.utterance_id).where(BaselineContribution.baseline_id == target.id))
    )
    for c in session.scalars(select(BaselineContribution).where(BaselineContribution.baseline_id == source.id)):
        if c.utterance_id is not None and c.utterance_id in have:
            continue
        dim = len(from_bytes(c.embedding))
        if dim != new_model.dim:
            raise ValueError(f"baseline {source.id} holds {dim}-d embeddings, model wants {new_model.dim}")
        session.add(
            BaselineContribution(
                baseline_id=target.id,
                utterance_id=c.utterance_id,
                call_id=c.call_id,
                source=c.source,
                embedding=c.embedding,
                speech_s=c.speech_s,
                included=c.included,
                created_at=c.created_at,
            )
        )
    rederive(session, target)
    return target


def start_for_model(ctx: WorkerContext, patient_id: int, new_model: PainModel) -> int | None:
    """:func:`derive_for_model` in a transaction of its own, for a model rollout; the new baseline's id.

    None means the patient has no baseline in the same embedder's space and must re-enrol.
    """
    with session_scope(ctx.sessions) as session:
        baseline = derive_for_model(session, patient_id, new_model)
        return baseline.id if baseline is not None else None


__all__ = [
    "EVIDENCE_BASELINE_VERSION",
    "CallNotReady",
    "EnrolmentResult",
    "GrowthOutcome",
    "GrowthResult",
    "derive_for_model",
    "enrol",
    "evidence_baseline",
    "grow_from_call",
    "grow_from_resolved_call",
    "model_baseline",
    "rebuild",
    "rederive",
    "speaker_passes",
    "start_for_model",
]
