"""Fixtures and corpus helpers for the end-to-end tests on shared-corpus audio with the shipped model.

The end-to-end tests push real recorded speech (RAVDESS, nEMO) through the whole product: the signed
webhook, the Media Stream socket, the VAD, PostgreSQL, an RQ worker running the shipped model, the
call verdict, the flag row and the Redis flag channel. The model may be retrained at any time, so
nothing here hard-codes a probability: clips and speakers are chosen at test time by scoring the
corpus offline with whatever model is shipped, the same way training prepared its clips.

- :func:`data_dir`: ``PAINLINE_DATA_DIR``, else ``../shared/data`` beside the repository.
- :class:`OfflineScorer`: the shipped model applied as training applies it (``analysis.features``:
  telephone channel, RMS normalisation as the card says, the card's embedder, the training
  population). Vectors are cached under ``.cache/e2e-features/<channel fingerprint>/``, not in the
  project cache, whose keys ignore the channel's code (see :func:`channel_fingerprint`); a cold run
  extracts about a thousand clips (~1.5 min), a warm one reads them back.
- :meth:`OfflineScorer.streamed`: clips as the live worker will get them (cut by the socket's VAD).
- fixtures: ``shipped_model`` / ``offline`` (session), ``shipped_context`` (the worker context built
  from the configured model path and installed for one test); :class:`FlagListener`, a subscription to
  the deployment's flag channel (the ``flag_listener`` fixture is in ``tests/painline/conftest.py``).
- live helpers: :func:`write_call_wav`, :func:`replay_wav`, :func:`pending_audio`,
  :func:`run_worker`, :func:`enrol_patient`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
from redis import Redis
from sqlalchemy import select

from analysis.aggregate import call_probability
from analysis.audio import load_audio
from analysis.baseline import RunningStats
from analysis.channel import TELEPHONE_RATE, mulaw_decode, mulaw_encode, telephone
from analysis.dataset import Clip, load_manifest
from analysis.embedders import Embedder, get_embedder
from analysis.features import ChannelConfig, FeatureCache, extract, prepare, prepare_utterances
from analysis.model import PainModel
from analysis.segmentation import VadConfig, cut_clip
from painline.config import Settings
from painline.replay import ReplayResult, load_call_audio, replay_call
from painline.workers import PainlineSimpleWorker, build_context, install_context
from schema.db import session_scope
from schema.identity import patient_ref_key
from schema.models import Call, Patient, Utterance, UtteranceAudio
from tests.app_fixtures import AUTH_TOKEN, AppServer, app_redis_url
from worker import context as worker_context
from worker.baselines import enrol
from worker.context import WorkerContext

REPO = Path(__file__).resolve().parents[1]
SHIPPED_MODEL = Settings().model_path  # the configured default: painline/models/default.joblib
CALL_GAP_S = 0.8  # silence between clips: longer than the VAD's 400 ms hangover, so each clip is cut apart
DISTRESSED = ("angry", "fearful")
NORMAL = {"ravdess": ("neutral", "calm"), "nemo": ("neutral",)}


def data_dir() -> Path:
    """Where the shared corpora are: ``PAINLINE_DATA_DIR``, else ``../shared/data`` from the repo root."""
    env = os.environ.get("PAINLINE_DATA_DIR")
    return Path(env).expanduser().resolve() if env else (REPO / ".." / "shared" / "data").resolve()


def project_cache_dir() -> Path:
    """The project's feature cache (``PAINLINE_CACHE_DIR``, else ``.cache`` in the repo), as training uses it."""
    env = os.environ.get("PAINLINE_CACHE_DIR")
    root = Path(env).expanduser() if env else REPO / ".cache"
    return root.resolve() / "features"


def channel_fingerprint(channel: ChannelConfig) -> str:
    """A digest of what the channel code *does* (resampling, G.711, RMS normalisation) to a fixed signal.

    The project cache keys vectors by clip, embedder and channel settings but not by the channel's
    code, so a codec fix leaves stale vectors behind. The tests keep their vectors in a folder named
    by this fingerprint: a change to the channel code starts a fresh folder instead of reusing them.
    """
    rng = np.random.default_rng(0)
    t = np.arange(16000) / 16000
    probe = 0.3 * np.sin(2 * np.pi * 220 * t) * np.sin(2 * np.pi * 3 * t) + rng.normal(0, 0.02, t.size)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.wav"
        sf.write(str(path), probe.astype(np.float32), 16000, subtype="FLOAT")
        prepared = prepare(path, channel)
    return hashlib.sha1(np.asarray(prepared, dtype="<f4").tobytes() + channel.key().encode()).hexdigest()[:12]


def e2e_cache_dir(channel: ChannelConfig) -> Path:
    return project_cache_dir().parent / "e2e-features" / channel_fingerprint(channel)


def corpus_available(*corpora: str) -> bool:
    return all((data_dir() / c / "manifest.csv").is_file() for c in corpora)


def missing_corpus_reason(*corpora: str) -> str:
    return (
        f"shared corpora {', '.join(corpora)} not found under {data_dir()} "
        f"(set PAINLINE_DATA_DIR to the folder holding them)"
    )


# ---------------------------------------------------------------------------------------------------
# offline scoring, exactly as training prepared clips


@dataclass
class OfflineScorer:
    """The shipped model applied offline: training's clip preparation, the card's embedder, no live stats."""

    model: PainModel
    embedder: Embedder
    cache: FeatureCache
    _manifests: dict[str, list[Clip]] = field(default_factory=dict)

    @property
    def channel(self) -> ChannelConfig:
        card = self.model.card.get("channel", {})
        return ChannelConfig(
            telephone=bool(card.get("telephone", True)),
            rms_normalise=self.model.rms_normalise,
            segment=bool(card.get("segment", False)),
        )

    @property
    def threshold(self) -> float:
        return self.model.threshold

    def clips(self, corpus: str, labels: Sequence[str]) -> list[Clip]:
        """The corpus's clips with one of ``labels``, in manifest order, less those a call would score nothing of."""
        if corpus not in self._manifests:
            clips = list(load_manifest(data_dir() / corpus, name=corpus).clips)
            if self.channel.segment:  # training left them out too (no utterance: a NaN feature row)
                clips = [c for c in clips if prepare_utterances(c.path, self.channel)]
            self._manifests[corpus] = clips
        return [c for c in self._manifests[corpus] if c.label in labels]

    @property
    def already_cut(self) -> ChannelConfig:
        """The channel for audio the VAD has already cut into one utterance, as the worker embeds it:
        no second VAD pass. Cutting an utterance again frames it in silence and may keep up to the
        VAD's padding of that silence, which RMS normalisation then weighs in (level features move)."""
        return dataclasses.replace(self.channel, segment=False)

    def features(self, clips: Sequence[Clip], channel: ChannelConfig | None = None) -> np.ndarray:
        if not clips:
            return np.zeros((0, self.model.dim))
        channel = channel or self.channel
        return extract(list(clips), self.embedder, channel, self.cache, progress=False).astype(np.float64)

    def proba(self, X: np.ndarray, enrolled: np.ndarray | None = None) -> np.ndarray:
        """Population path (training population) or, with ``enrolled`` features, the blended path."""
        baseline = RunningStats.from_array(enrolled) if enrolled is not None and len(enrolled) else None
        return np.asarray(self.model.predict_proba(X, population=None, baseline=baseline), dtype=np.float64)

    def proba_in_live_order(
        self, X: np.ndarray, population: RunningStats, enrolled: np.ndarray | None = None
    ) -> np.ndarray:
        """Score rows one by one as the worker does: each against the live population as it stood,
        then folded into it (``population`` is updated in place, to carry on to the next call)."""
        baseline = RunningStats.from_array(enrolled) if enrolled is not None and len(enrolled) else None
        out = np.zeros(len(X))
        for i, x in enumerate(np.asarray(X, dtype=np.float64)):
            out[i] = self.model.predict_proba(x[None, :], population=population, baseline=baseline)[0]
            population.update(x)
        return out

    def enrolment_features(self, clips: Sequence[Clip], work_dir: Path, vad: VadConfig | None = None) -> np.ndarray:
        """What enrolment adds to a baseline for these clips: their VAD utterances' features."""
        return self.streamed(clips, work_dir, vad).X

    def proba_of_audio(
        self,
        samples_8k: Sequence[np.ndarray],
        work_dir: Path,
        enrolled: np.ndarray | None = None,
        population: RunningStats | None = None,
    ) -> np.ndarray:
        """Score utterances (8 kHz audio as the worker gets it) through training's own preparation (a file,
        ``prepare``, the embedder), not cut again; with ``population``, in the worker's order against the
        live population (see :meth:`proba_in_live_order`)."""
        work_dir.mkdir(parents=True, exist_ok=True)
        clips = []
        for i, x in enumerate(samples_8k):
            path = work_dir / f"audio-{i}.wav"
            sf.write(str(path), np.asarray(x, dtype=np.float32), TELEPHONE_RATE, subtype="FLOAT")
            clips.append(Clip(path=path, label="?", speaker_id="?"))
        X = extract(clips, self.embedder, self.already_cut, cache=None, progress=False).astype(np.float64)
        if population is not None:
            return self.proba_in_live_order(X, population, enrolled)
        return self.proba(X, enrolled)

    def streamed(self, clips: Sequence[Clip], work_dir: Path, vad: VadConfig | None = None) -> Streamed:
        """What the live worker will be given for each clip: the clip framed by silence and cut by the
        socket's VAD, each utterance embedded through training's preparation less its VAD pass (the
        utterance is already cut; enrolment and the worker embed it as it is).

        Training scores whole corpus clips, leading and trailing room tone included; a call delivers
        VAD-trimmed utterances, and RMS normalisation over less silence leaves the speech quieter.
        Choosing examples on this view keeps them on the intended side of the threshold live.
        """
        pieces: list[np.ndarray] = []
        owner: list[int] = []
        weights: list[float] = []
        for k, clip in enumerate(clips):
            for audio, speech_s in vad_utterances(call_audio_of(clip), vad):
                pieces.append(audio)
                owner.append(k)
                weights.append(speech_s)
        work_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, x in enumerate(pieces):
            path = work_dir / f"streamed-{i}.wav"
            sf.write(str(path), np.asarray(x, dtype=np.float32), TELEPHONE_RATE, subtype="FLOAT")
            paths.append(Clip(path=path, label="?", speaker_id="?"))
        X = self.features(paths, self.already_cut)  # cut once, by the VAD above, as the worker and enrolment do
        return Streamed(self, X, np.asarray(owner, dtype=int), np.asarray(weights), len(clips))


@dataclass(frozen=True)
class Streamed:
    """Utterance features of a list of clips as the live path will cut them (see :meth:`OfflineScorer.streamed`)."""

    scorer: OfflineScorer
    X: np.ndarray
    owner: np.ndarray  # clip index of each utterance
    speech_s: np.ndarray
    n_clips: int

    def per_clip(self, enrolled: np.ndarray | None = None) -> np.ndarray:
        """Each clip's probability by the call rule over its utterances (NaN if the VAD kept nothing)."""
        p = self.scorer.proba(self.X, enrolled) if len(self.X) else np.zeros(0)
        return np.array(
            [
                call_probability(list(p[self.owner == k]), list(self.speech_s[self.owner == k]))
                if np.any(self.owner == k)
                else float("nan")
                for k in range(self.n_clips)
            ]
        )

    def call(self, clip_indices: Sequence[int], enrolled: np.ndarray | None = None) -> float:
        """The call score of a call made of these clips, by the product's rule."""
        keep = np.isin(self.owner, list(clip_indices))
        if not np.any(keep):
            return float("nan")
        p = self.scorer.proba(self.X[keep], enrolled)
        return call_probability(list(p), list(self.speech_s[keep]))


def call_audio_of(clip: Clip) -> np.ndarray:
    """A corpus clip as a Twilio stream would carry it: 8 kHz through the mu-law codec, decoded."""
    samples, rate = load_audio(clip.path)
    return telephone(samples, rate)


def vad_utterances(
    samples_8k: np.ndarray, vad: VadConfig | None = None, gap_s: float = CALL_GAP_S
) -> list[tuple[np.ndarray, float]]:
    """The utterances the socket's VAD cuts from ``samples_8k`` framed by silence: ``(audio, speech_s)``."""
    return [(u.samples, u.speech_s) for u in cut_clip(samples_8k, vad, margin_s=gap_s)]


def aggregate(probs: Sequence[float]) -> float:
    """The product's own call rule (speech-weighted mean log-odds), with equal weights."""
    return call_probability(list(probs)) if len(probs) else float("nan")


@pytest.fixture(scope="session")
def shipped_model() -> PainModel:
    if not SHIPPED_MODEL.exists():
        pytest.fail(f"the shipped model {SHIPPED_MODEL} is missing: `painline train` rebuilds it")
    return PainModel.load(SHIPPED_MODEL)


@pytest.fixture(scope="session")
def offline(shipped_model: PainModel) -> OfflineScorer:
    embedder = get_embedder(shipped_model.embedder_name)
    scorer = OfflineScorer(shipped_model, embedder, FeatureCache(project_cache_dir()))
    scorer.cache = FeatureCache(e2e_cache_dir(scorer.channel))
    return scorer


# ---------------------------------------------------------------------------------------------------
# the live side: worker context, flag channel, calls


@pytest.fixture
def shipped_context(app_settings: Settings) -> Iterator[WorkerContext]:
    """The worker context built from the configured model path (the shipped model), installed.

    Speaker verification is off: resemblyzer's weights are not needed to test the pipeline, and an
    actor's shouted speech may fall below the voiceprint threshold, which is a different test.
    """
    assert app_settings.model_path == SHIPPED_MODEL
    connection = Redis.from_url(app_redis_url())
    try:
        with installed(build_context(app_settings, connection, speaker=False)) as ctx:
            yield ctx
    finally:
        connection.close()


@contextmanager
def installed(ctx: WorkerContext) -> Iterator[WorkerContext]:
    """``ctx`` installed as the worker context until the block ends, then uninstalled and its engine disposed."""
    install_context(ctx)
    try:
        yield ctx
    finally:
        worker_context.uninstall()
        ctx.engine.dispose()


def call_audio(*clips: np.ndarray, gap_s: float = 1.0, seed: int = 3) -> bytes:
    """Clips separated (and surrounded) by faint noise: what a call with pauses sounds like (mu-law)."""
    rng = np.random.default_rng(seed)
    parts = [rng.normal(0, 0.001, int(gap_s * TELEPHONE_RATE))]
    for clip in clips:
        parts += [clip, rng.normal(0, 0.001, int(gap_s * TELEPHONE_RATE))]
    return mulaw_encode(np.clip(np.concatenate(parts), -1, 1))


class FlagListener:
    """A subscription to the flag channel, opened before any call is replayed."""

    def __init__(self, connection: Redis, channel: str) -> None:
        self.channel = channel
        self.pubsub = connection.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(channel)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:  # wait for the subscription to be confirmed
            if self.pubsub.get_message(ignore_subscribe_messages=False, timeout=0.5) is not None:
                break
        self.received: list[dict[str, Any]] = []

    def drain(self, timeout_s: float = 0.5) -> list[dict[str, Any]]:
        """Everything published so far (waits up to ``timeout_s`` for stragglers)."""
        deadline = time.monotonic() + timeout_s
        while True:
            message = self.pubsub.get_message(timeout=max(deadline - time.monotonic(), 0.0))
            if message is None:
                if time.monotonic() >= deadline:
                    return self.received
                continue
            if message.get("type") == "message":
                self.received.append(json.loads(message["data"]))

    def for_call(self, call_id: int, timeout_s: float = 0.5) -> list[dict[str, Any]]:
        # other test sessions may publish on the same channel; their ids come from other databases
        return [m for m in self.drain(timeout_s) if m.get("call_id") == call_id]

    def close(self) -> None:
        self.pubsub.close()


@dataclass(frozen=True)
class CallFile:
    path: Path
    spans_ms: list[tuple[int, int]]  # where each clip lies in the call


def write_call_wav(clips: Sequence[Clip], path: Path, gap_s: float = CALL_GAP_S) -> CallFile:
    """Clips in telephone quality, with ``gap_s`` of silence before, between and after them.

    Digital silence rather than faint noise: after loud speech webrtcvad takes low-level white noise
    for voice, which would join neighbouring clips into one utterance.
    """
    gap = int(gap_s * TELEPHONE_RATE)
    parts = [np.zeros(gap)]
    spans = []
    at = gap
    for clip in clips:
        audio = call_audio_of(clip)
        spans.append((1000 * at // TELEPHONE_RATE, 1000 * (at + len(audio)) // TELEPHONE_RATE))
        parts += [audio, np.zeros(gap)]
        at += len(audio) + gap
    samples = np.clip(np.concatenate(parts), -1.0, 1.0).astype(np.float32)
    sf.write(str(path), samples, TELEPHONE_RATE, subtype="FLOAT")
    return CallFile(path, spans)


def replay_wav(
    server: AppServer, call: CallFile, patient_ref: str | None, speed: float = 0
) -> tuple[ReplayResult, bytes]:
    """Replay the file through the real webhook and socket; returns what was streamed too.

    ``speed`` 0 (the default) streams as fast as the socket takes it; 1 paces the frames in real time,
    as Twilio does, so a worker running meanwhile scores the call while it is still live.
    """
    mulaw = load_call_audio(call.path)
    result = replay_call(
        mulaw, base_url=server.url, public_url=server.url, auth_token=AUTH_TOKEN, patient_ref=patient_ref, speed=speed
    )
    assert result.close_code == 1000, f"the server closed the stream with {result.close_code}"
    return result, mulaw


def call_id_of(server: AppServer, call_sid: str) -> int:
    with session_scope(server.app.extensions["painline.sessions"]) as session:
        return int(session.scalars(select(Call.id).where(Call.call_sid == call_sid)).one())


def pending_audio(server: AppServer, call_sid: str) -> dict[int, tuple[int, int, bytes]]:
    """Before the worker runs: each utterance's ``(start_ms, end_ms, mulaw)``, exactly what it will score."""
    with session_scope(server.app.extensions["painline.sessions"]) as session:
        call = session.scalars(select(Call).where(Call.call_sid == call_sid)).one()
        rows = session.execute(
            select(Utterance, UtteranceAudio)
            .join(UtteranceAudio, UtteranceAudio.utterance_id == Utterance.id)
            .where(Utterance.call_id == call.id)
            .order_by(Utterance.seq)
        ).all()
        return {u.id: (u.start_ms, u.end_ms, bytes(a.mulaw)) for u, a in rows}


def run_worker(server: AppServer, *, drained: bool = True) -> None:
    """Run every queued job with a real RQ worker in this process (the context is installed).

    ``drained`` asserts the queue is empty afterwards; pass False while a call is still streaming,
    since the socket may enqueue the next utterance the moment the burst ends.
    """
    queue = server.queue
    worker = PainlineSimpleWorker([queue], connection=queue.connection, job_class=queue.job_class)
    worker.work(burst=True, logging_level="WARNING")
    failed = queue.failed_job_registry
    assert failed.count == 0, f"failed jobs: {[queue.fetch_job(j).exc_info for j in failed.get_job_ids()]}"  # type: ignore[union-attr]
    if drained:
        assert queue.count == 0


def enrol_patient(ctx: WorkerContext, clips: Sequence[Clip]) -> tuple[str, int, int]:
    """A new patient known by a hotline reference, with ``clips`` enrolled as their normal voice.

    The clips go in as ``painline baseline enrol`` sends them: 8 kHz through the mu-law codec.
    Returns ``(patient_ref, patient_id, baseline_n)``.
    """
    ref = f"E2E-{secrets.token_hex(4)}"
    with session_scope(ctx.sessions) as session:
        patient = Patient(key=patient_ref_key(ref))
        session.add(patient)
        session.flush()
        patient_id = int(patient.id)
    audio = [mulaw_decode(mulaw_encode(call_audio_of(c))) for c in clips]
    result = enrol(patient_id, audio, "test:e2e", ctx=ctx, check_speaker=False)
    assert result.accepted == len(clips) and result.no_speech == [] and result.baseline_n == result.utterances
    return ref, patient_id, result.baseline_n
