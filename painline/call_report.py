"""Read one call's outcome from the database and print it for a person at a terminal.

Used by ``painline replay --wait`` and ``painline demo``: both have just pushed a call through the
real socket and want to see what the workers made of it. The call is found by its CallSid (which the
replay generated, so it identifies nothing about a caller); nothing printed here is caller data.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from schema.db import session_scope
from schema.models import Call, CallStatus, Flag, Score, Utterance


@dataclass(frozen=True)
class UtteranceRow:
    seq: int
    start_ms: int
    end_ms: int
    speech_s: float
    status: str
    probability: float | None
    baseline_applied: bool | None


@dataclass(frozen=True)
class CallReport:
    call_id: int
    status: str
    verdict: str
    call_score: float | None
    speech_s: float
    utterances: list[UtteranceRow]
    flag_level: str | None = None
    evidence: dict[str, Any] | None = None
    model_versions: list[str] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return self.status in (CallStatus.FINALISED.value, CallStatus.ERROR.value)


def read_report(sessions: Callable[[], Session], call_sid: str) -> CallReport | None:
    """The call's current state, or None if no call has that CallSid (yet)."""
    with session_scope(sessions) as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one_or_none()
        if call is None:
            return None
        rows = session.execute(
            select(Utterance, Score)
            .outerjoin(Score, Score.utterance_id == Utterance.id)
            .where(Utterance.call_id == call.id)
            .order_by(Utterance.seq, Score.id)
        ).all()
        utterances: list[UtteranceRow] = []
        versions: list[str] = []
        seen: set[int] = set()
        for utterance, score in rows:
            if utterance.id in seen:  # a second model's score: the table shows the first
                continue
            seen.add(utterance.id)
            if score is not None and score.model_version not in versions:
                versions.append(score.model_version)
            utterances.append(
                UtteranceRow(
                    seq=utterance.seq,
                    start_ms=utterance.start_ms,
                    end_ms=utterance.end_ms,
                    speech_s=float(utterance.speech_s),
                    status=utterance.status,
                    probability=None if score is None else float(score.probability),
                    baseline_applied=None if score is None else bool(score.baseline_applied),
                )
            )
        flag = session.scalars(select(Flag).where(Flag.call_id == call.id)).one_or_none()
        return CallReport(
            call_id=call.id,
            status=call.status,
            verdict=call.verdict,
            call_score=call.call_score,
            speech_s=float(call.speech_s or 0.0),
            utterances=utterances,
            flag_level=None if flag is None else flag.level,
            evidence=call.evidence,
            model_versions=versions,
        )


def waiting_for(report: CallReport | None) -> str:
    """What a call is waiting for, in words, for a person watching the terminal."""
    if report is None:
        return "the call to be recorded"
    scored = sum(u.probability is not None for u in report.utterances)
    if scored < len(report.utterances):
        return f"the worker: {scored} of {len(report.utterances)} utterance(s) scored"
    if report.status == CallStatus.STREAMING.value:
        return "the stream to end"
    return "the call's verdict (finalise job)"


def _progress(report: CallReport | None) -> tuple[object, ...]:
    if report is None:
        return ()
    return (report.status, len(report.utterances), sum(u.probability is not None for u in report.utterances))


def wait_for_verdict(
    sessions: Callable[[], Session],
    call_sid: str,
    *,
    stall_s: float = 60.0,
    poll_s: float = 0.25,
    on_progress: Callable[[CallReport | None, str], None] | None = None,
) -> CallReport | None:
    """Poll until the call is finalised (or failed); the last state seen.

    Waits as long as the call makes progress (an utterance scored, the status moved) and gives up
    after ``stall_s`` without any, so a slow machine is given time while a stuck worker is not.
    ``on_progress`` is called with the report and :func:`waiting_for` whenever either changes.
    """
    report = read_report(sessions, call_sid)
    last_progress = _progress(report)
    last_said = ""
    moved_at = time.monotonic()
    while True:
        if report is not None and report.finished:
            return report
        said = waiting_for(report)
        if on_progress is not None and said != last_said:
            on_progress(report, said)
            last_said = said
        if time.monotonic() - moved_at > stall_s:
            return report
        time.sleep(poll_s)
        report = read_report(sessions, call_sid)
        if _progress(report) != last_progress:
            last_progress = _progress(report)
            moved_at = time.monotonic()


VERDICT_TEXT = {
    "pain_likely": "PAIN LIKELY: a nurse would see this call flagged",
    "no_pain": "no pain indicated",
    "inconclusive": "inconclusive (too little speech to judge)",
    "pending": "pending (not finalised yet)",
}


def format_report(report: CallReport) -> str:
    """A per-utterance table and the verdict, as plain text."""
    lines = [
        f"call {report.call_id}: {len(report.utterances)} utterance(s), status {report.status}",
        "",
        "  #    from     to    speech  p(pain)  baseline  status",
        "  --  ------  ------  ------  -------  --------  -------",
    ]
    for u in report.utterances:
        p = "   -   " if u.probability is None else f"{u.probability:7.3f}"
        used = {None: "-", True: "yes", False: "no"}[u.baseline_applied]
        baseline = f"  {used:<6}"
        lines.append(
            f"  {u.seq:>2}  {u.start_ms / 1000:5.1f}s  {u.end_ms / 1000:5.1f}s  {u.speech_s:5.1f}s  {p}  "
            f"{baseline}  {u.status}"
        )
    score = "-" if report.call_score is None else f"{report.call_score:.3f}"
    lines += [
        "",
        f"verdict: {VERDICT_TEXT.get(report.verdict, report.verdict)}",
        f"call probability: {score} over {report.speech_s:.1f} s of scored speech",
    ]
    if report.flag_level:
        lines.append(f"flag raised: level {report.flag_level}")
    if report.model_versions:
        lines.append(f"model version: {', '.join(report.model_versions)}")
    evidence = _evidence_text(report.evidence or {})
    if evidence:
        lines.append(f"evidence: {evidence}")
    return "\n".join(lines)


def _evidence_text(evidence: dict[str, Any]) -> str:
    """What moved against the caller's baseline if they have one, else the measures as heard."""
    for key in ("moved", "measures"):
        items = evidence.get(key)
        if isinstance(items, list):
            texts = [str(item["text"]) for item in items if isinstance(item, dict) and item.get("text")]
            if texts:
                return "; ".join(texts)
    return ""


__all__ = ["CallReport", "UtteranceRow", "format_report", "read_report", "wait_for_verdict"]
