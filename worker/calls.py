"""A call's running score while it goes on, and its verdict and evidence once it is over.

Both use :func:`analysis.aggregate.call_probability` over the utterances scored by the current
model (speech-weighted mean log-odds), the same rule the evaluation used, so a verdict in
production means what it meant on the test set. ``Call.speech_s`` is the speech *scored* so far:
that is what the verdict's minimum-speech rule needs, since unscored speech is not evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from analysis.aggregate import CallVerdict, call_probability, call_verdict
from analysis.baseline import RunningStats
from analysis.evidence import (
    EVIDENCE_VERSION,
    baseline_measures,
    combine_measures,
    compare_to_baseline,
    describe_measures,
)
from schema.contract import EVIDENCE_BASELINE_EMBEDDER, LiveEvent, announce_call
from schema.models import Baseline, Call, Flag, Score, Utterance, UtteranceStatus
from worker.baselines import EVIDENCE_BASELINE_VERSION
from worker.context import WorkerContext
from worker.flags import FlagChange, FlagState, raise_or_upgrade_known

TOP_UTTERANCES = 3
TOP_MEASURES = 3


def _scored(session: Session, call_id: int, model_version: str) -> list[Any]:
    return list(
        session.execute(
            select(
                Utterance.id,
                Utterance.seq,
                Utterance.start_ms,
                Utterance.end_ms,
                Utterance.speech_s,
                Score.probability,
                Score.features,
                Score.speaker_similarity,
            )
            .join(Score, Score.utterance_id == Utterance.id)
            .where(Utterance.call_id == call_id, Score.model_version == model_version)
            .order_by(Utterance.seq)
        ).all()
    )


@dataclass(frozen=True)
class LockedCall:
    """The call row as the scoring job read it while taking its row lock."""

    id: int
    patient_id: int | None
    call_score: float | None
    speech_s: float


def update_running_score(session: Session, ctx: WorkerContext, call: LockedCall) -> FlagChange | None:
    """Refresh ``call_score`` / ``speech_s`` and raise or upgrade the flag if the call now crosses.

    The caller holds the call's row lock, so concurrent scoring jobs of one call take turns here and
    the last one sees every committed score. One statement reads the scores and the flag (read
    after the lock was granted, so neither is stale); the call is written only if its numbers moved,
    and the flag only if it is raised or upgraded.
    """
    # only the two numbers the running score needs: this runs on every utterance of a call, so
    # loading each score's evidence JSON here would make a long call quadratic in parsing
    rows = session.execute(
        select(Utterance.speech_s, Score.probability, Flag.id, Flag.level, Flag.severity, Flag.status)
        .join(Score, Score.utterance_id == Utterance.id)
        .outerjoin(Flag, Flag.call_id == Utterance.call_id)
        .where(Utterance.call_id == call.id, Score.model_version == ctx.model.version)
    ).all()
    if not rows:
        return None
    speech = [float(r.speech_s) for r in rows]
    p = call_probability([float(r.probability) for r in rows], speech)
    total = float(sum(speech))
    if call.call_score != p or call.speech_s != total:
        session.execute(update(Call).where(Call.id == call.id).values(call_score=p, speech_s=total))
    if total >= ctx.min_speech_s and p >= ctx.threshold:
        first = rows[0]
        flag = (
            None
            if first.id is None
            else FlagState(int(first.id), str(first.level), float(first.severity), str(first.status))
        )
        return raise_or_upgrade_known(session, call.id, call.patient_id, flag, p, ctx.threshold)
    return None


def announce(ctx: WorkerContext, event: LiveEvent, call_id: int) -> bool:
    """Tell open call pages that ``call_id`` changed (a score landed, a verdict was given); never raises.

    Called only after the commit, so a page that re-reads on the event sees the change. Goes out on
    the deployment's call channel through the worker's own Redis connection, with the call's id and
    the event only: the page re-reads the rest with the nurse's authorisation. Best effort, as
    :func:`schema.contract.announce_call` is: the rows are the record and the page still polls
    slowly, so a Redis outage costs a late refresh, never the job (False, logged).
    """
    if ctx.redis is None or not ctx.call_channel:
        return False
    return announce_call(ctx.redis, ctx.call_channel, event, call_id)


def pending_utterances(session: Session, call_id: int) -> int:
    return int(
        session.scalar(
            select(func.count())
            .select_from(Utterance)
            .where(Utterance.call_id == call_id, Utterance.status == UtteranceStatus.PENDING.value)
        )
        or 0
    )


def verdict_and_evidence(
    session: Session, ctx: WorkerContext, call: Call, unscored: int = 0
) -> tuple[CallVerdict, float | None, float, dict[str, Any]]:
    """The call's verdict, probability, scored speech and the evidence document for ``Call.evidence``.

    Evidence holds the utterances that drove the score (highest probability first, with their place
    in the call) and the acoustic measures that moved most against the caller's own evidence
    baseline, in plain units. Measures are averaged over utterances that passed the speaker check
    only: another voice on the line says nothing about this caller's normal.
    """
    rows = _scored(session, call.id, ctx.model.version)
    speech = [float(r.speech_s) for r in rows]
    p = call_probability([float(r.probability) for r in rows], speech) if rows else float("nan")
    total = float(sum(speech))
    verdict = call_verdict(p, total, ctx.threshold, ctx.min_speech_s)

    top = sorted(rows, key=lambda r: float(r.probability), reverse=True)[:TOP_UTTERANCES]
    same_speaker = [r for r in rows if r.speaker_similarity is None or r.speaker_similarity >= ctx.speaker_threshold]
    measures = combine_measures(((r.features or {}).get("measures") or {}, float(r.speech_s)) for r in same_speaker)
    baseline_doc: dict[str, Any] | None = None
    moved: list[dict[str, Any]] = []
    if call.patient_id is not None:
        ev = session.scalars(
            select(Baseline).where(
                Baseline.patient_id == call.patient_id,
                Baseline.embedder == EVIDENCE_BASELINE_EMBEDDER,
                Baseline.model_version == EVIDENCE_BASELINE_VERSION,
            )
        ).one_or_none()
        if ev is not None and ev.count > 0:
            mean, spread = baseline_measures(RunningStats.from_dict(ev.stats))
            moved = compare_to_baseline(measures, mean, spread, top=TOP_MEASURES)
            baseline_doc = {"n": int(ev.count)}
    evidence: dict[str, Any] = {
        "version": EVIDENCE_VERSION,
        "model_version": ctx.model.version,
        "threshold": round(float(ctx.threshold), 4),
        "min_speech_s": float(ctx.min_speech_s),
        "speech_s": round(total, 2),
        "utterances_scored": len(rows),
        "utterances_unscored": int(unscored),
        "speaker_mismatches": len(rows) - len(same_speaker),
        "top_utterances": [
            {
                "utterance_id": int(r.id),
                "seq": int(r.seq),
                "start_ms": int(r.start_ms),
                "end_ms": int(r.end_ms),
                "speech_s": round(float(r.speech_s), 2),
                "probability": round(float(r.probability), 4),
            }
            for r in top
        ],
        "measures": describe_measures(measures),
        "baseline": baseline_doc,
        "moved": moved,
    }
    return verdict, (p if math.isfinite(p) else None), total, evidence


__all__ = ["LockedCall", "announce", "pending_utterances", "update_running_score", "verdict_and_evidence"]
