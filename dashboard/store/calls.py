"""One call as the call page and ``GET /api/v1/calls/<id>`` show it: scores, threshold, verdict, evidence."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select

from dashboard.config import DashboardConfig
from dashboard.store.base import Backends, NotFound, is_live, patient_label
from dashboard.store.flags_queue import FlagRecord
from dashboard.store.patients import BaselineStatus, baseline_status
from schema.audit import record
from schema.db import session_scope
from schema.models import Call, Flag, Patient, Score, Utterance, utcnow

# ---------------------------------------------------------------------------------------------------
# records


@dataclass(frozen=True)
class UtteranceRecord:
    """One utterance and the score shown for it (schema ``Utterance``)."""

    id: int
    seq: int
    start_ms: int  # from the start of the stream
    end_ms: int
    speech_s: float
    status: str
    probability: float | None
    speaker_similarity: float | None
    baseline_applied: bool
    baseline_n: int
    model_version: str | None


@dataclass(frozen=True)
class CallSummary:
    """The call row itself, with whether it is shown as live."""

    id: int
    started_at: datetime
    ended_at: datetime | None
    status: str
    live: bool
    verdict: str
    probability: float | None
    speech_s: float
    consent: bool
    stream_status: str | None


@dataclass(frozen=True)
class CallPatient:
    """Who called, as a person may see it (never the key)."""

    id: int
    label: str


@dataclass(frozen=True)
class SpeakerCheck:
    """How many utterances were compared with the voiceprint, and how many did not match (None: not finalised)."""

    checked: int
    mismatches: int | None


@dataclass(frozen=True)
class CallDetail:
    """Everything the call page shows (schema ``CallDetail``).

    ``evidence`` stays the worker's JSON document (:mod:`analysis.evidence` writes it at hang-up):
    the dashboard shows it, it does not own its shape.
    """

    call: CallSummary
    patient: CallPatient | None
    flag: FlagRecord | None
    threshold: float | None
    utterances: tuple[UtteranceRecord, ...]
    evidence: dict[str, Any] | None
    speaker_check: SpeakerCheck
    baseline: BaselineStatus | None


# ---------------------------------------------------------------------------------------------------
# the flag threshold


@lru_cache(maxsize=8)
def _card_threshold(card_file: str, mtime_ns: int) -> float | None:
    try:
        card = json.loads(Path(card_file).read_text())
        return float(card["threshold"]["value"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def configured_threshold(config: DashboardConfig) -> float | None:
    """The flag threshold the workers use: ``flag_threshold`` if set, else the model card's.

    Read from the card JSON beside the model file (``<stem>.card.json``) rather than through
    ``analysis.model``, which would load joblib into every web process.
    """
    if config.flag_threshold is not None:
        return config.flag_threshold
    model_path = config.model_path
    if model_path is None:
        return None
    card = Path(model_path).with_name(Path(model_path).stem + ".card.json")
    try:
        mtime = card.stat().st_mtime_ns
    except OSError:
        return None
    return _card_threshold(str(card), mtime)


# ---------------------------------------------------------------------------------------------------
# the store


@dataclass(frozen=True)
class CallStore:
    backends: Backends

    def call(self, call_id: int, actor: str | None) -> CallDetail:
        """A call with its utterance scores, threshold, verdict, evidence, speaker checks and flag.

        Each utterance shows one score: the one of the model version the evidence names, else the
        newest; the threshold is the evidence's (the one the verdict used), else the configured one.
        """
        with session_scope(self.backends.sessions) as session:
            call = session.get(Call, call_id)
            if call is None:
                raise NotFound(f"no call {call_id}")
            patient = session.get(Patient, call.patient_id) if call.patient_id else None
            flag = session.scalars(select(Flag).where(Flag.call_id == call_id)).one_or_none()
            evidence = call.evidence or None
            model_version = (evidence or {}).get("model_version")
            score_rows = session.execute(
                select(Utterance, Score)
                .outerjoin(Score, Score.utterance_id == Utterance.id)
                .where(Utterance.call_id == call_id)
                .order_by(Utterance.seq, Score.created_at.desc(), Score.id.desc())
            ).all()
            utterances: dict[int, UtteranceRecord] = {}
            for utterance, score in score_rows:
                shown = utterances.get(utterance.id)
                better = score is not None and (
                    shown is None
                    or shown.model_version is None
                    or (model_version is not None and score.model_version == model_version)
                )
                if shown is not None and not better:
                    continue
                utterances[utterance.id] = UtteranceRecord(
                    id=utterance.id,
                    seq=utterance.seq,
                    start_ms=utterance.start_ms,
                    end_ms=utterance.end_ms,
                    speech_s=utterance.speech_s,
                    status=utterance.status,
                    probability=score.probability if score else None,
                    speaker_similarity=score.speaker_similarity if score else None,
                    baseline_applied=bool(score.baseline_applied) if score else False,
                    baseline_n=score.baseline_n if score else 0,
                    model_version=score.model_version if score else None,
                )
            threshold = (evidence or {}).get("threshold")
            if threshold is None:
                threshold = configured_threshold(self.backends.config)
            baselines = baseline_status(session, [call.patient_id] if call.patient_id else [])
            doc = CallDetail(
                call=CallSummary(
                    id=call.id,
                    started_at=call.started_at,
                    ended_at=call.ended_at,
                    status=call.status,
                    live=is_live(call, utcnow(), self.backends.config.stream_connect_s),
                    verdict=call.verdict,
                    probability=call.call_score,
                    speech_s=call.speech_s,
                    consent=call.consent,
                    stream_status=call.stream_status,
                ),
                patient=(
                    CallPatient(call.patient_id, patient_label(patient.key if patient else None, call.patient_id))
                    if call.patient_id
                    else None
                ),
                flag=FlagRecord.of(flag) if flag is not None else None,
                threshold=threshold,
                utterances=tuple(sorted(utterances.values(), key=lambda u: u.seq)),
                evidence=evidence,
                speaker_check=SpeakerCheck(
                    checked=sum(1 for u in utterances.values() if u.speaker_similarity is not None),
                    mismatches=(evidence or {}).get("speaker_mismatches"),
                ),
                baseline=baselines.get(call.patient_id) if call.patient_id else None,
            )
            if actor is not None:
                record(session, actor, "call.view", "call", call_id, patient_id=call.patient_id)
            return doc


__all__ = [
    "CallDetail",
    "CallPatient",
    "CallStore",
    "CallSummary",
    "SpeakerCheck",
    "UtteranceRecord",
    "configured_threshold",
]
