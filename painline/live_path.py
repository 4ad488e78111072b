"""The live path in process: calls played through the product's own stream and worker code.

The bench's person-level protocols score whole corpus clips with ``PainModel.predict_proba``; a real
call takes another path: Twilio messages parsed by :class:`telephony.session.StreamSession`, the
jitter buffer, the VAD's cut, one ``worker.jobs.score_utterance`` per utterance (speaker check,
running population statistics, the caller's baseline where it applies) and ``finalise_call``. A
number measured on the first path says little about the second, so this module runs the second one
without sockets, Redis or real-time pacing:

- :class:`LiveDeployment` is one deployment: a throwaway SQLite database migrated with
  ``schema.migrate.upgrade``, the worker context ``painline worker`` builds (``build_context``) and
  the stream settings ``painline serve`` builds (``telephony_config``).
- :meth:`LiveDeployment.play` creates the call and its single-use token as the voice webhook does,
  feeds Twilio's messages (``painline.replay.StreamMessages``) to a ``StreamSession`` with no queue,
  then runs the jobs the session would have enqueued, in the order it would have enqueued them.
  With ``queue=None`` every utterance is left in the outbox (that is what the sweep recovers in
  production), so nothing is scored twice and nothing depends on RQ's timing.
- :meth:`LiveDeployment.enrol` is what ``painline baseline enrol`` does with its clips.

:func:`run_protocol` is the person-level live-path protocol built on it (``python -m bench.detection
--live-path``, ``painline evaluate --protocol live-path``).
"""

from __future__ import annotations

import json
import logging
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import GroupKFold
from sqlalchemy import select

from analysis.aggregate import CallVerdict, call_probability
from analysis.audio import load_audio
from analysis.baseline import RunningStats
from analysis.channel import TELEPHONE_RATE, mulaw_decode, mulaw_encode, telephone
from analysis.dataset import Clip
from analysis.metrics import paired_auc_difference, summarise
from analysis.model import PainModel
from analysis.segmentation import CALL_GAP_S
from analysis.training import TrainConfig
from painline.config import Settings
from painline.replay import StreamMessages, chunks, new_sid
from painline.research import Pooling, TaskData, fmt, fmt_ci
from schema.db import session_scope
from schema.migrate import upgrade
from schema.models import Call, Score, Utterance
from telephony import tokens
from telephony.session import StreamCounters, StreamSession
from telephony.twiml import TOKEN_PARAMETER
from worker.baselines import EnrolmentResult, enrol
from worker.context import WorkerContext
from worker.scoring import ScoreOutcome

log = logging.getLogger(__name__)


class Condition(StrEnum):
    """The caller's state when a protocol call is played."""

    ENROLLED = "enrolled"
    NOT_ENROLLED = "not_enrolled"


@dataclass(frozen=True)
class UtteranceResult:
    """One scored utterance as the database holds it, with the clip of the call it came from."""

    utterance_id: int
    seq: int
    start_ms: int
    end_ms: int
    speech_s: float
    probability: float
    baseline_applied: bool
    baseline_n: int
    speaker_similarity: float | None
    clip: int | None  # index into the played clips; None if the utterance lies in no clip


@dataclass(frozen=True)
class CallResult:
    """A played call read back from the database after ``finalise_call``."""

    call_id: int
    call_sid: str
    utterances: list[UtteranceResult]
    call_score: float | None
    verdict: CallVerdict | None
    speech_s: float
    stream: StreamCounters
    outcomes: list[ScoreOutcome]

    @property
    def probabilities(self) -> list[float]:
        return [u.probability for u in self.utterances]


def call_mulaw(clips_8k: Sequence[np.ndarray], gap_s: float = CALL_GAP_S) -> tuple[bytes, list[tuple[int, int]]]:
    """The call's 8 kHz mu-law stream and each clip's span in ms: clips between ``gap_s`` of silence.

    Digital silence, as the bench's calls always used: faint noise after loud speech is taken for
    voice by webrtcvad and would join neighbouring clips into one utterance.
    """
    gap = np.zeros(round(gap_s * TELEPHONE_RATE), dtype=np.float32)
    parts: list[np.ndarray] = [gap]
    spans: list[tuple[int, int]] = []
    at = len(gap)
    for clip in clips_8k:
        x = np.asarray(clip, dtype=np.float32)
        spans.append((1000 * at // TELEPHONE_RATE, 1000 * (at + len(x)) // TELEPHONE_RATE))
        parts += [x, gap]
        at += len(x) + len(gap)
    return mulaw_encode(np.clip(np.concatenate(parts), -1.0, 1.0)), spans


def _owner(start_ms: int, end_ms: int, spans: list[tuple[int, int]]) -> int | None:
    """The clip an utterance overlaps most (None if none)."""
    overlaps = [min(end_ms, b) - max(start_ms, a) for a, b in spans]
    best = int(np.argmax(overlaps)) if overlaps else -1
    return best if best >= 0 and overlaps[best] > 0 else None


class LiveDeployment:
    """One in-process deployment: its database, worker context and stream settings."""

    def __init__(self, ctx: WorkerContext, settings: Settings, work_dir: Path | None = None) -> None:
        from painline.app import telephony_config

        self.ctx = ctx
        self.settings = settings
        self.telephony = telephony_config(settings)
        self._work_dir = work_dir

    @classmethod
    def build(
        cls,
        model_path: str | Path,
        settings: Settings,
        *,
        database_url: str | None = None,
        work_dir: str | Path | None = None,
        speaker: bool = True,
    ) -> LiveDeployment:
        """A deployment of the artifact at ``model_path`` with ``settings``' scoring and VAD settings.

        Without ``database_url`` a fresh SQLite file is made in ``work_dir`` (a temporary folder when
        not given, removed by :meth:`close`). The database is migrated to head either way. The context
        is built by ``painline.workers.build_context``, so the model, embedders, speaker check and
        thresholds are exactly those ``painline worker`` would load; it is installed as the process's
        context because the jobs read it from there.
        """
        from painline.workers import build_context, install_context

        owned: Path | None = None
        if database_url is None:
            if work_dir is None:
                owned = Path(tempfile.mkdtemp(prefix="painline-live-"))
                work_dir = owned
            Path(work_dir).mkdir(parents=True, exist_ok=True)
            database_url = f"sqlite:///{Path(work_dir).resolve() / f'live-{secrets.token_hex(4)}.sqlite'}"
        upgrade(database_url)
        settings = settings.with_(
            database_url=database_url,
            model_path=Path(model_path),
            hmac_key=settings.hmac_key or secrets.token_hex(16),
        )
        ctx = build_context(settings, None, speaker=speaker)
        install_context(ctx)
        return cls(ctx, settings, owned)

    def close(self) -> None:
        from worker import context

        context.uninstall()
        self.ctx.engine.dispose()
        if self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)

    def __enter__(self) -> LiveDeployment:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _install(self) -> None:
        """Several deployments may live in one process; the jobs read whichever is installed."""
        from worker import context

        context.install(self.ctx)

    def seed_population(self, embeddings: np.ndarray) -> int:
        """``painline population seed``'s last step: fold utterance embeddings into the population.

        The protocol passes features it already has (the bench embeds clips exactly as the worker
        embeds utterances, ``analysis.features``) instead of embedding the recordings again.
        Returns the population's size.
        """
        from worker.population import fold

        with session_scope(self.ctx.sessions) as session:
            return fold(session, self.ctx.model, embeddings).n

    # -- patients ----------------------------------------------------------------------------------

    def patient(self, patient_ref: str) -> int:
        """The patient a call with this hotline reference is keyed to, created as the webhook would."""
        from telephony.webhooks import patient_id_for

        with session_scope(self.ctx.sessions) as session:
            patient_id = patient_id_for(session, self.settings.hmac_key, patient_ref, None)
        assert patient_id is not None
        return patient_id

    def enrol(self, patient_ref: str, clips_8k: Sequence[np.ndarray], *, check_speaker: bool = True) -> EnrolmentResult:
        """``painline baseline enrol PATIENT_REF ...``: the clips through the mu-law codec, then ``enrol``."""
        self._install()
        patient_id = self.patient(patient_ref)
        clips = [mulaw_decode(mulaw_encode(np.asarray(c, dtype=np.float32))) for c in clips_8k]
        return enrol(patient_id, clips, "live-path", ctx=self.ctx, check_speaker=check_speaker)

    # -- calls -------------------------------------------------------------------------------------

    def _open_call(self, patient_ref: str | None) -> tuple[str, str]:
        """The voice webhook's database work: patient, call row and a single-use stream token."""
        from telephony.webhooks import ensure_call, patient_id_for

        call_sid = new_sid("CA")
        cfg = self.telephony
        with session_scope(self.ctx.sessions) as session:
            patient_id = patient_id_for(session, cfg.stream.hmac_key, patient_ref, None)
            ensure_call(session, call_sid, patient_id, consent=bool(cfg.consent_message))
            issued = tokens.issue(call_sid, cfg.stream.hmac_key, cfg.stream_token_ttl_s)
            tokens.record(session, issued)
        return call_sid, issued.token

    def play(
        self, clips_8k: Sequence[np.ndarray], patient_ref: str | None = None, gap_s: float = CALL_GAP_S
    ) -> CallResult:
        """Play one call of 8 kHz float clips and score it; ``patient_ref`` as the hotline passes it."""
        mulaw, spans = call_mulaw(clips_8k, gap_s)
        return self.play_mulaw(mulaw, patient_ref, spans)

    def play_mulaw(
        self, mulaw: bytes, patient_ref: str | None = None, spans: list[tuple[int, int]] | None = None
    ) -> CallResult:
        """Play a call's mu-law stream as Twilio sends it (20 ms media messages), then run its jobs."""
        from worker.jobs import finalise_call, score_utterance

        self._install()
        call_sid, token = self._open_call(patient_ref)
        messages = StreamMessages(account_sid=new_sid("AC"), call_sid=call_sid)
        session = StreamSession(self.ctx.sessions, None, self.telephony.stream)
        session.receive(json.dumps(messages.connected()))
        session.receive(json.dumps(messages.start({TOKEN_PARAMETER: token})))
        for i, payload in enumerate(chunks(mulaw)):
            session.receive(json.dumps(messages.media(payload, i * 20)))
        session.receive(json.dumps(messages.stop()))
        assert session.ended and session.call_id is not None
        # what the queue would have run, in the order the session would have enqueued it
        outcomes = [score_utterance(u) for u in session.utterance_ids]
        finalise_call(session.call_id)
        return self.read_call(session.call_id, spans or [], session.counters, outcomes)

    def read_call(
        self,
        call_id: int,
        spans: list[tuple[int, int]],
        counters: StreamCounters | None = None,
        outcomes: list[ScoreOutcome] | None = None,
    ) -> CallResult:
        """A call's scores and verdict as stored, utterances in stream order."""
        with session_scope(self.ctx.sessions) as session:
            call = session.get(Call, call_id)
            assert call is not None
            rows = session.execute(
                select(Utterance, Score)
                .join(Score, Score.utterance_id == Utterance.id)
                .where(Utterance.call_id == call_id, Score.model_version == self.ctx.model.version)
                .order_by(Utterance.seq)
            ).all()
            utterances = [
                UtteranceResult(
                    utterance_id=int(u.id),
                    seq=int(u.seq),
                    start_ms=int(u.start_ms),
                    end_ms=int(u.end_ms),
                    speech_s=float(u.speech_s),
                    probability=float(s.probability),
                    baseline_applied=bool(s.baseline_applied),
                    baseline_n=int(s.baseline_n or 0),
                    speaker_similarity=None if s.speaker_similarity is None else float(s.speaker_similarity),
                    clip=_owner(int(u.start_ms), int(u.end_ms), spans),
                )
                for u, s in rows
            ]
            return CallResult(
                call_id=call_id,
                call_sid=str(call.call_sid),
                utterances=utterances,
                call_score=None if call.call_score is None else float(call.call_score),
                verdict=None if call.verdict is None else CallVerdict(call.verdict),
                speech_s=float(call.speech_s or 0.0),
                stream=counters or StreamCounters(),
                outcomes=outcomes or [],
            )


# ---------------------------------------------------------------------------------------------------
# the person-level protocol


CALL_SIZES = (4, 8)
ENROL_CLIPS = 3
ROWS = tuple(
    [f"call_{n}_{c.value}" for n in CALL_SIZES for c in Condition] + [f"utterance_{c.value}" for c in Condition]
)


@dataclass
class PooledRow:
    """Items of one row: label, score, speaker, and the threshold of the fold model that scored them."""

    y: list[int] = field(default_factory=list)
    p: list[float] = field(default_factory=list)
    g: list[str] = field(default_factory=list)
    t: list[float] = field(default_factory=list)

    def add(self, y: int, p: float, g: str, t: float) -> None:
        self.y.append(int(y))
        self.p.append(float(p))
        self.g.append(str(g))
        self.t.append(float(t))

    def summary(self, threshold: float, n_boot: int) -> dict[str, Any] | None:
        if not self.y:
            return None
        y, p, t = np.array(self.y), np.array(self.p), np.array(self.t)
        out = summarise(y, p, np.array(self.g), threshold, n_boot=n_boot)
        hit = p >= t  # each item against the threshold its own fold's model shipped with
        out["sensitivity"] = float(hit[y == 1].mean()) if (y == 1).any() else None
        out["specificity"] = float((~hit[y == 0]).mean()) if (y == 0).any() else None
        return out


def _calls(pool: np.ndarray, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint calls of ``size`` clips from one speaker's clips of one label."""
    shuffled = rng.permutation(pool)
    return [shuffled[i : i + size] for i in range(0, len(shuffled) - size + 1, size)]


@dataclass
class _Tally:
    """What a protocol accumulates over its folds."""

    rows: dict[str, PooledRow] = field(default_factory=lambda: {name: PooledRow() for name in ROWS})
    # the same calls on the bench's clip path, for comparison
    offline: dict[str, PooledRow] = field(default_factory=lambda: {name: PooledRow() for name in ROWS})
    applied: dict[int, list[bool]] = field(default_factory=lambda: {0: [], 1: []})
    similarity: dict[int, list[float]] = field(default_factory=lambda: {0: [], 1: []})
    thresholds: list[float] = field(default_factory=list)
    verdicts: dict[str, dict[str, int]] = field(default_factory=dict)

    def summary(self, n_boot: int) -> dict[str, Any]:
        threshold = float(np.median(self.thresholds))
        return {
            "thresholds": [round(t, 4) for t in self.thresholds],
            "threshold": threshold,
            "rows": {name: pooled.summary(threshold, n_boot) for name, pooled in self.rows.items()},
            # the same calls scored as the clip-level bench scores them: each clip's features on its own,
            # training population, baseline from the enrolment clips' features, no speaker check
            "offline_same_calls": {name: pooled.summary(threshold, n_boot) for name, pooled in self.offline.items()},
            "baseline_applied_share": {
                "no_pain": _share(self.applied[0]),
                "pain": _share(self.applied[1]),
                "n_no_pain": len(self.applied[0]),
                "n_pain": len(self.applied[1]),
            },
            "speaker_similarity_mean": {"no_pain": _mean(self.similarity[0]), "pain": _mean(self.similarity[1])},
            "baseline_effect": baseline_effect(self.rows, n_boot),
            "verdicts": self.verdicts,
        }


def _play_fold(
    name: str,
    model: PainModel,
    fold_dir: Path,
    data: Any,
    test: np.ndarray,
    seed_rows: np.ndarray | None,
    settings: Settings,
    tally: _Tally,
    rng: np.random.Generator,
    *,
    speaker: bool,
    started: float,
    progress: Callable[[str], None],
) -> None:
    """Play one fold's calls of ``data``'s ``test`` rows into an enrolled and a not-enrolled deployment.

    ``seed_rows``: rows of ``data`` whose features seed both deployments' population before the first
    call (unlabelled recordings of other callers), or None for no seeding.
    """
    model_path = model.save(fold_dir / "model.joblib")
    threshold = model.threshold
    tally.thresholds.append(threshold)
    plan, enrol = call_plan(test, data.y, data.normal, data.groups, rng)
    clips = data.clips
    audio = {
        i: _audio(clips[i])
        for i in sorted({i for _, _, _, idx in plan for i in idx} | {i for idx in enrol.values() for i in idx})
    }
    deployments = {
        c: LiveDeployment.build(model_path, settings, work_dir=fold_dir / c.value, speaker=speaker) for c in Condition
    }
    try:
        if seed_rows is not None:
            for d in deployments.values():
                d.seed_population(data.X[seed_rows])
        refs = {c: {s: f"LP-{c.value}-{s}" for s in enrol} for c in Condition}
        for s, idx in enrol.items():
            deployments[Condition.ENROLLED].enrol(refs[Condition.ENROLLED][s], [audio[i] for i in idx])
        progress(f"{name}: {len(enrol)} speakers, {len(plan)} calls, model {model.version}, threshold {threshold:.3f}")
        for n_call, (speaker_id, label, size, idx) in enumerate(plan):
            if n_call and n_call % 50 == 0:
                progress(f"{name}: {n_call}/{len(plan)} calls, {time.time() - started:.0f} s")
            for c in Condition:
                base = RunningStats.from_array(data.X[enrol[speaker_id]]) if c is Condition.ENROLLED else None
                p_clips = model.predict_proba(data.X[idx], baseline=base)
                key = f"call_{size}_{c.value}"
                tally.offline[key].add(label, call_probability(list(p_clips)), speaker_id, threshold)
                if size == min(CALL_SIZES):
                    for p_clip in p_clips:
                        tally.offline[f"utterance_{c.value}"].add(label, p_clip, speaker_id, threshold)
                result = deployments[c].play([audio[i] for i in idx], refs[c][speaker_id])
                score = result.call_score if result.call_score is not None else float("nan")
                if np.isfinite(score):
                    tally.rows[key].add(label, score, speaker_id, threshold)
                verdict = result.verdict.value if result.verdict is not None else "none"
                counts = tally.verdicts.setdefault(key, {})
                counts[f"{label}:{verdict}"] = counts.get(f"{label}:{verdict}", 0) + 1
                if size != min(CALL_SIZES):
                    continue  # utterance rows and shares from the smallest calls: each clip once
                for u in result.utterances:
                    tally.rows[f"utterance_{c.value}"].add(label, u.probability, speaker_id, threshold)
                    if c is Condition.ENROLLED:
                        tally.applied[label].append(u.baseline_applied)
                        if u.speaker_similarity is not None:
                            tally.similarity[label].append(u.speaker_similarity)
    finally:
        for d in deployments.values():
            d.close()


def run_protocol(
    task_name: str,
    settings: Settings,
    *,
    max_speakers: int | None = None,
    folds: int = 5,
    n_boot: int = 1000,
    seed: int = 0,
    embedder_name: str = "egemaps",
    speaker: bool = True,
    seed_population: bool = True,
    work_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The live-path protocol for one task (see ``docs/detection.md``); a JSON-serialisable result.

    Per fold (speakers grouped), a model is trained on the other speakers with the shipped procedure
    and saved as an artifact. Two deployments of it are built, identical but for enrolment: in one
    each held-out speaker is enrolled from a seeded choice of their normal-state clips, in the other
    nobody is. Every call is played into both, in the same shuffled order, so the running population
    statistics follow the same trajectory in both and the rows differ only by the baseline.

    With ``seed_population`` both deployments' population statistics are seeded before the first
    call, as a hotline seeds them before go-live, from unlabelled recordings of the corpus's other
    speakers (the fold's training speakers). Unseeded, a fold of one or two held-out speakers has a
    "population" of those speakers alone after a few calls, which no hotline has.
    """
    from analysis.embedders import get_embedder
    from painline.research import DEFAULT_CHANNEL, load_task_data, make_fit
    from painline.workers import embedder_sources

    started = time.time()
    rng = np.random.default_rng(seed)
    emb = get_embedder(embedder_name, embedder_sources(settings))
    data = load_task_data(task_name, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers)
    fit = make_fit(data, emb, DEFAULT_CHANNEL, TrainConfig())
    tally = _Tally()
    n_groups = len(np.unique(data.groups))
    with _work_root(work_dir) as root:
        for fold, (tr, te) in enumerate(GroupKFold(min(folds, n_groups)).split(data.X, data.y, data.groups)):
            model = fit(data.X[tr], data.y[tr], data.groups[tr], data.normal[tr])
            _play_fold(
                f"{task_name} fold {fold}",
                model,
                root / f"{task_name}-fold{fold}",
                data,
                te,
                tr if seed_population else None,
                settings,
                tally,
                rng,
                speaker=speaker,
                started=started,
                progress=progress,
            )
    return {
        "task": task_name,
        "mode": "full" if not max_speakers else f"max_speakers={max_speakers}",
        "folds": min(folds, n_groups),
        "n_speakers": int(n_groups),
        "enrol_clips": ENROL_CLIPS,
        "call_sizes": list(CALL_SIZES),
        "speaker_check": speaker,
        "population_seeded": seed_population,
        **tally.summary(n_boot),
        "seconds": round(time.time() - started, 1),
    }


SPEECH_TASKS = ("ravdess-distress", "nemo-distress", "ased-distress", "spanish-distress")
"""The distress task of every speech corpus in the shared data: the live path's and LOCO's tasks."""

LOCO_ROWS = {
    "population": "utterance_not_enrolled",
    "baseline_3": "utterance_enrolled",
    "call_4_population": "call_4_not_enrolled",
    "call_4_baseline_3": "call_4_enrolled",
    "call_8_baseline_3": "call_8_enrolled",
}
"""The leave-one-corpus-out rows, named as the four-languages issue names them, and the live rows they are."""


def loco_model(
    test_task: str,
    train_tasks: Sequence[str],
    settings: Settings,
    *,
    max_speakers: int | None = None,
    embedder_name: str = "egemaps",
    pooling: Pooling | None = None,
    extra_tasks: Sequence[str] = (),
    fold_dir: Path | None = None,
) -> tuple[TaskData, PainModel]:
    """The held-out corpus's data and the model :func:`run_loco` deploys for it.

    With ``fold_dir`` that model is the fold model ``painline train --loco-threshold --fold-models``
    keeps there (reused when its settings match, saved otherwise), so the live figures measure the
    very models the shipped threshold was chosen on, and neither run fits them twice.
    """
    from analysis.embedders import get_embedder
    from painline.research import DEFAULT_CHANNEL, load_task_data, loco_fold_model
    from painline.workers import embedder_sources

    emb = get_embedder(embedder_name, embedder_sources(settings))
    test = load_task_data(test_task, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers)
    parts = [load_task_data(t, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers) for t in train_tasks]
    extra = [load_task_data(t, emb, settings, DEFAULT_CHANNEL, max_speakers=max_speakers) for t in extra_tasks]
    pooling = pooling or Pooling()
    model = loco_fold_model(
        [*parts, test], len(parts), emb, DEFAULT_CHANNEL, TrainConfig(), pooling=pooling, extra=extra, fold_dir=fold_dir
    )
    return test, model


def run_loco(
    test_task: str,
    train_tasks: Sequence[str],
    settings: Settings,
    *,
    max_speakers: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    embedder_name: str = "egemaps",
    pooling: Pooling | None = None,
    extra_tasks: Sequence[str] = (),
    speaker: bool = True,
    work_dir: Path | None = None,
    fold_dir: Path | None = None,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Leave one corpus out on the live path: train on ``train_tasks`` pooled, play ``test_task``'s calls.

    ``pooling`` combines the training corpora as ``painline train --aligned --weighting`` does, and
    ``extra_tasks`` (sounds other than speech) are trained on too, as ``painline train --extra-task``.

    One model, trained with the shipped procedure (C, blend and threshold from grouped inner CV over
    the training speakers only), is deployed twice per half of the test corpus's speakers. Each half's
    deployments are seeded with the other half's clips, unlabelled, as a hotline seeds its population
    from its own callers' recordings before go-live; then the half's calls are played as in
    :func:`run_protocol` (3 enrolment clips per speaker in the enrolled deployment). ``fold_dir``
    shares that model with ``painline train --fold-models`` (:func:`loco_model`).
    """
    started = time.time()
    rng = np.random.default_rng(seed)
    pooling = pooling or Pooling()
    test, model = loco_model(
        test_task,
        train_tasks,
        settings,
        max_speakers=max_speakers,
        embedder_name=embedder_name,
        pooling=pooling,
        extra_tasks=extra_tasks,
        fold_dir=fold_dir,
    )
    progress(f"loco {test_task}: trained on {', '.join(train_tasks)} (model {model.version})")
    tally = _Tally()
    with _work_root(work_dir) as root:
        for half, (seed_rows, te) in enumerate(GroupKFold(2).split(test.X, test.y, test.groups)):
            _play_fold(
                f"loco {test_task} half {half}",
                model,
                root / f"loco-{test_task}-{half}",
                test,
                te,
                seed_rows,
                settings,
                tally,
                rng,
                speaker=speaker,
                started=started,
                progress=progress,
            )
    summary = tally.summary(n_boot)
    return {
        "task": test_task,
        "trained_on": list(train_tasks),
        "embedder": embedder_name,
        "aligned": pooling.aligned,
        "weighting": pooling.weighting.value,
        "extra_tasks": list(extra_tasks),
        "mode": "full" if not max_speakers else f"max_speakers={max_speakers}",
        "n_speakers": len(np.unique(test.groups)),
        "model_version": model.version,
        **{name: summary["rows"][row] for name, row in LOCO_ROWS.items()},
        "baseline_effect": summary["baseline_effect"],
        "baseline_applied_share": summary["baseline_applied_share"],
        "threshold": model.threshold,
        "seconds": round(time.time() - started, 1),
    }


@contextmanager
def _work_root(work_dir: Path | None) -> Iterator[Path]:
    """The protocol's scratch folder: ``work_dir`` if given (kept), else a temporary one (removed)."""
    if work_dir is not None:
        yield Path(work_dir)
        return
    root = Path(tempfile.mkdtemp(prefix="painline-live-path-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _share(values: list[bool]) -> float | None:
    return float(np.mean(values)) if values else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _audio(clip: Clip) -> np.ndarray:
    """A corpus clip as the telephone channel delivers it (8 kHz through mu-law), float32."""
    samples, rate = load_audio(clip.path)
    return telephone(samples, rate)


def call_plan(
    test: np.ndarray, y: np.ndarray, normal: np.ndarray, groups: np.ndarray, rng: np.random.Generator
) -> tuple[list[tuple[str, int, int, np.ndarray]], dict[str, np.ndarray]]:
    """Enrolment clips per held-out speaker and the fold's calls ``(speaker, label, size, clips)``, shuffled.

    Enrolment clips are never played in a call. Calls of each size are cut independently from the
    same remaining clips, so a clip appears in at most one call of each size.
    """
    plan: list[tuple[str, int, int, np.ndarray]] = []
    enrol: dict[str, np.ndarray] = {}
    for speaker in np.unique(groups[test]):
        mine = test[groups[test] == speaker]
        pool = mine[normal[mine]]
        if len(pool) < ENROL_CLIPS:
            continue  # no baseline possible: the speaker is left out of both conditions
        chosen = np.sort(rng.choice(pool, ENROL_CLIPS, replace=False))
        enrol[str(speaker)] = chosen
        rest = np.setdiff1d(mine, chosen)
        for label in (0, 1):
            for size in CALL_SIZES:
                for call in _calls(rest[y[rest] == label], size, rng):
                    plan.append((str(speaker), label, size, call))
    order = rng.permutation(len(plan))
    return [plan[i] for i in order], enrol


def baseline_effect(rows: dict[str, PooledRow], n_boot: int) -> dict[str, dict[str, Any] | None]:
    """Enrolled minus not-enrolled AUC per call length and per utterance, paired by call.

    Both deployments hear the same calls in the same order, so the rows pair item by item and the
    interval is a paired, speaker-grouped one. ``never_worse`` is the promise of ``analysis.model``
    (a baseline never makes the model worse) as this protocol measures it.
    """
    out: dict[str, dict[str, Any] | None] = {}
    for prefix in [f"call_{n}" for n in CALL_SIZES] + ["utterance"]:
        a, b = rows[f"{prefix}_{Condition.ENROLLED.value}"], rows[f"{prefix}_{Condition.NOT_ENROLLED.value}"]
        if not a.y or a.y != b.y or a.g != b.g or len(set(a.y)) < 2:
            out[prefix] = None  # unpaired (a call scored in one deployment only) or one class: no difference
            continue
        d, low, high = paired_auc_difference(np.array(a.y), np.array(a.p), np.array(b.p), np.array(a.g), n_boot)
        out[prefix] = {"auc_difference": d, "auc_difference_ci": [low, high], "never_worse": d >= 0.0}
    return out


def _cells(s: dict[str, Any], off: dict[str, Any]) -> list[str]:
    """One row's figures, as both tables print them."""
    return [
        f"{fmt(s['auc'])} {fmt_ci(s['auc_ci'])}",
        f"{fmt(s['balanced_accuracy'])} {fmt_ci(s['balanced_accuracy_ci'])}",
        fmt(s["sensitivity"]),
        fmt(s["specificity"]),
        fmt(s["sens_at_90spec"]),
        str(s["n_clips"]),
        str(s["n_speakers"]),
        f"{fmt(off.get('auc'))} {fmt_ci(off.get('auc_ci'))}",
    ]


HEADER = [
    "AUC [95% CI]",
    "balanced accuracy [95% CI]",
    "sens",
    "spec",
    "sens@90%spec",
    "n",
    "speakers",
    "offline AUC, same calls [95% CI]",
]


def _effect_text(effect: dict[str, Any] | None) -> str:
    if effect is None:
        return "n/a"
    d, (low, high) = effect["auc_difference"], effect["auc_difference_ci"]
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]" + ("" if effect["never_worse"] else " (worse)")


def format_table(result: dict[str, Any]) -> str:
    """The protocol's rows as a plain-text table (``painline evaluate --protocol live-path``)."""
    lines = [
        f"task {result['task']} live path ({result['mode']}; {result['folds']} folds; median threshold "
        f"{result['threshold']:.3f})",
        "  ".join([f"{'row':<24}", *HEADER]),
    ]
    for name, s in result["rows"].items():
        off = (result.get("offline_same_calls") or {}).get(name) or {}
        lines.append(f"{name:<24}  (no items)" if s is None else "  ".join([f"{name:<24}", *_cells(s, off)]))
    share = result["baseline_applied_share"]
    lines.append(
        f"baseline applied (enrolled, utterances of {min(CALL_SIZES)}-clip calls): no_pain "
        f"{fmt(share['no_pain'])} of {share['n_no_pain']}, pain {fmt(share['pain'])} of {share['n_pain']}"
    )
    effects = result.get("baseline_effect") or {}
    lines.append(
        "enrolled minus not enrolled, AUC [paired 95% CI]: "
        + ", ".join(f"{k} {_effect_text(v)}" for k, v in effects.items())
    )
    return "\n".join(lines)


def markdown_table(results: dict[str, dict[str, Any]]) -> str:
    """The "Live path" tables of ``docs/detection.md`` from ``detection.json``'s ``live_path`` key."""
    lines = ["| task | row | " + " | ".join(HEADER) + " |", "|---" * (len(HEADER) + 2) + "|"]
    shares = []
    for task, result in results.items():
        for name, s in result["rows"].items():
            if s is not None:
                off = (result.get("offline_same_calls") or {}).get(name) or {}
                lines.append("| " + " | ".join([task, name, *_cells(s, off)]) + " |")
        share = result["baseline_applied_share"]
        shares.append(
            f"{task} ({result['mode']}): no_pain {fmt(share['no_pain'])} of {share['n_no_pain']}, "
            f"pain {fmt(share['pain'])} of {share['n_pain']}"
        )
    prefixes = [f"call_{n}" for n in CALL_SIZES] + ["utterance"]
    effect = [
        "| task | " + " | ".join(prefixes) + " |",
        "|---" * (len(prefixes) + 1) + "|",
        *(
            "| " + " | ".join([task, *(_effect_text((r.get("baseline_effect") or {}).get(k)) for k in prefixes)]) + " |"
            for task, r in results.items()
        ),
    ]
    return (
        "\n".join(lines) + "\n\nBaseline applied, enrolled utterances by label: " + "; ".join(shares) + ".\n\n"
        "Does the baseline help? Enrolled minus not-enrolled AUC on the same calls, with a paired speaker-grouped "
        '95% CI (`baseline_effect`); "(worse)" marks where the promise of `analysis.model`, that a baseline '
        "never makes the model worse, does not hold on the live path.\n\n" + "\n".join(effect)
    )


__all__ = [
    "CALL_SIZES",
    "LOCO_ROWS",
    "ROWS",
    "SPEECH_TASKS",
    "CallResult",
    "Condition",
    "LiveDeployment",
    "PooledRow",
    "UtteranceResult",
    "baseline_effect",
    "call_mulaw",
    "call_plan",
    "format_table",
    "markdown_table",
    "run_loco",
    "run_protocol",
]
