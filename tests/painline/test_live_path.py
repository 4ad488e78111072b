"""The in-process live path (``painline.live_path``) and its equivalence with the real processes.

The live-path protocol is only worth its numbers if the harness scores exactly what a deployment
scores. The fast test checks the harness's own contract on synthetic speech; the slow one plays the
same calls through ``painline serve`` and ``painline worker`` (PostgreSQL, Redis, the WebSocket,
RQ) and through the harness, and requires the same probability for every utterance.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, select
from sqlalchemy.pool import NullPool

from analysis.aggregate import CallVerdict
from analysis.audio import load_audio
from analysis.channel import telephone
from analysis.embedders import get_embedder
from analysis.features import ChannelConfig, extract
from analysis.model import PainModel
from bench.soak.services import PrivateRedis
from painline.config import Settings
from painline.live_path import CallResult, LiveDeployment, call_mulaw
from painline.replay import replay_call
from painline.research import DEFAULT_CHANNEL
from schema.migrate import upgrade
from schema.models import Call, CallStatus, Score, Utterance
from tests.db_fixtures import temporary_postgres_database
from tests.e2e_fixtures import SHIPPED_MODEL, corpus_available, data_dir, missing_corpus_reason
from tests.worker_fixtures import calm, pain
from worker.context import DEFAULT_SPEAKER_THRESHOLD
from worker.scoring import ScoreOutcome

REPO = Path(__file__).resolve().parents[2]
AUTH_TOKEN = "live-path-auth-token"
HMAC_KEY = "live-path-hmac-key"


def synthetic_call(pained: bool, f0: float, seed: int, n: int = 3) -> list[np.ndarray]:
    make = pain if pained else calm
    return [make(f0, seed=seed + k, seconds=2.0) for k in range(n)]


def settings_for(tmp_path: Path) -> Settings:
    return Settings(var_dir=tmp_path / "var", hmac_key=HMAC_KEY, next_enqueue="nurses")


def test_harness_plays_a_synthetic_call_and_finalises_it(pain_model_path: Path, tmp_path: Path) -> None:
    clips = synthetic_call(pained=True, f0=150.0, seed=1)
    with LiveDeployment.build(pain_model_path, settings_for(tmp_path), work_dir=tmp_path, speaker=False) as live:
        stranger = live.play(clips)
        live.enrol("LP-1", synthetic_call(pained=False, f0=150.0, seed=50))
        known = live.play(clips, patient_ref="LP-1")

    for result in (stranger, known):
        # one score per utterance the stream saved, every one scored once, the call finalised
        assert result.stream.utterances_saved == len(result.utterances) >= len(clips)
        assert result.outcomes == [ScoreOutcome.SCORED] * len(result.utterances)
        assert {u.clip for u in result.utterances} == set(range(len(clips)))
        assert all(0.0 <= p <= 1.0 for p in result.probabilities)
        assert result.verdict in (CallVerdict.PAIN_LIKELY, CallVerdict.NO_PAIN)
        assert result.call_score is not None and result.speech_s >= 3.0
    assert not any(u.baseline_applied for u in stranger.utterances)
    assert all(u.baseline_applied and u.baseline_n > 0 for u in known.utterances)
    assert all(u.speaker_similarity is None for u in known.utterances)  # speaker check off
    # the same audio: only the baseline (and one call more of population statistics) differs
    assert [u.start_ms for u in stranger.utterances] == [u.start_ms for u in known.utterances]


@pytest.mark.slow
@pytest.mark.skipif(not corpus_available("ravdess", "nemo"), reason=missing_corpus_reason("ravdess", "nemo"))
def test_a_clip_scores_the_same_offline_as_through_a_replayed_call(shipped_model: PainModel, tmp_path: Path) -> None:
    """Training and the bench embed a clip as the call's VAD would cut it, so their probability is the call's.

    Each clip is the only clip of a call into a fresh deployment (nobody enrolled, no population yet),
    which is what ``PainModel.predict_proba`` with the training population means offline. The same
    clips embedded whole, as training did before, are far enough off to show the check can fail.
    """
    from analysis.dataset import load_manifest

    assert shipped_model.card["channel"].get("segment") is True, "the shipped model was trained on whole clips"
    clips = [
        c
        for corpus in ("ravdess", "nemo")
        for c in load_manifest(data_dir() / corpus, name=corpus).clips
        if c.label in ("neutral", "angry", "sad")
    ][::97][:8]
    embedder = get_embedder(shipped_model.embedder_name)
    offline = shipped_model.predict_proba(extract(clips, embedder, DEFAULT_CHANNEL, progress=False))
    whole = ChannelConfig(telephone=True, rms_normalise=True)
    whole_clip = shipped_model.predict_proba(extract(clips, embedder, whole, progress=False))

    live: list[float] = []
    for n, clip in enumerate(clips):
        samples, rate = load_audio(clip.path)
        with LiveDeployment.build(
            SHIPPED_MODEL, settings_for(tmp_path / str(n)), work_dir=tmp_path / str(n), speaker=False
        ) as deployment:
            result = deployment.play([telephone(samples, rate)])
        assert len(result.utterances) == 1, f"{clip.path.name}: the VAD cut {len(result.utterances)} utterances"
        live.append(result.utterances[0].probability)

    np.testing.assert_allclose(offline, live, atol=0.02)
    assert np.max(np.abs(whole_clip - np.asarray(live))) > 0.02  # the old offline path did not match


# ---------------------------------------------------------------------------------------------------
# equivalence with the real processes


class Process:
    """``python -m painline.cli ARGS`` in a process group of its own, output to a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "painline.cli", *args],
                env=env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fresh_pg() -> Iterator[str]:
    with temporary_postgres_database() as url:
        upgrade(url)
        yield url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[str]:
    """A redis-server of this test's own: the shared one on 6379 is restarted by other people's tests."""
    server = PrivateRedis(free_port(), tmp_path / "redis")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def wait_for(predicate, timeout_s: float, what: str, processes: list[Process]) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        for p in processes:
            if p.process.poll() is not None:
                raise AssertionError(f"{what}: a process exited:\n{p.log()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout_s} s:\n" + "\n".join(p.log() for p in processes))
        time.sleep(0.2)


Stored = tuple[str, list[tuple[int, float, bool, float | None]], float | None, str | None]


def stored_call(url: str, call_sid: str) -> Stored:
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            call = conn.execute(
                select(Call.id, Call.status, Call.call_score, Call.verdict).where(Call.call_sid == call_sid)
            ).one_or_none()
            if call is None:
                return "", [], None, None
            rows = conn.execute(
                select(Utterance.start_ms, Score.probability, Score.baseline_applied, Score.speaker_similarity)
                .join(Score, Score.utterance_id == Utterance.id)
                .where(Utterance.call_id == call.id)
                .order_by(Utterance.seq)
            ).all()
            return (call.status, [(r[0], float(r[1]), bool(r[2]), r[3]) for r in rows], call.call_score, call.verdict)
    finally:
        engine.dispose()


@pytest.mark.slow
def test_harness_scores_what_painline_serve_and_worker_score(
    pain_model_path: Path, fresh_pg: str, own_redis: str, tmp_path: Path
) -> None:
    """Same calls, same order, same patient state: every utterance's probability equal to 1e-6."""
    queue = f"painline-test-live-path-{secrets.token_hex(6)}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAINLINE_") and k != "TWILIO_AUTH_TOKEN"}
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        PAINLINE_DATABASE_URL=fresh_pg,
        PAINLINE_REDIS_URL=own_redis,
        PAINLINE_QUEUE_NAME=queue,
        PAINLINE_MODEL_PATH=str(pain_model_path),
        PAINLINE_PUBLIC_URL=url,
        TWILIO_AUTH_TOKEN=AUTH_TOKEN,
        PAINLINE_HMAC_KEY=HMAC_KEY,
        PAINLINE_SECRET_KEY="live-path",
        PAINLINE_NEXT_ENQUEUE="nurses",
        PAINLINE_VAR_DIR=str(tmp_path / "var"),
        PAINLINE_LOG_LEVEL="WARNING",
    )
    enrolment = synthetic_call(pained=False, f0=120.0, seed=70)
    calls: list[tuple[str | None, list[np.ndarray]]] = [
        ("LP-KNOWN", synthetic_call(pained=True, f0=120.0, seed=1)),
        (None, synthetic_call(pained=False, f0=200.0, seed=10)),
        ("LP-KNOWN", synthetic_call(pained=False, f0=120.0, seed=20)),
    ]
    settings = Settings(var_dir=tmp_path / "var", hmac_key=HMAC_KEY, next_enqueue="nurses")

    # the deployment: the same enrolment through the same library function, on its PostgreSQL
    with LiveDeployment.build(pain_model_path, settings, database_url=fresh_pg) as deployed:
        deployed.enrol("LP-KNOWN", enrolment)
    processes = [
        Process(["serve", "--port", str(port)], env, tmp_path / "serve.log"),
        Process(["worker"], env, tmp_path / "worker.log"),
    ]
    live: list[Stored] = []
    try:
        import urllib.request

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=2) as response:
                    return response.status == 200
            except OSError:
                return False

        wait_for(healthy, 60, "painline serve healthy", processes)
        for ref, clips in calls:
            mulaw, _ = call_mulaw(clips)
            result = replay_call(mulaw, base_url=url, public_url=url, auth_token=AUTH_TOKEN, patient_ref=ref, speed=0)
            assert result.close_code == 1000
            # one call at a time, as the harness plays them: population statistics in the same order
            wait_for(
                lambda sid=result.call_sid: stored_call(fresh_pg, sid)[0] == CallStatus.FINALISED.value,
                60,
                "call finalised",
                processes,
            )
            live.append(stored_call(fresh_pg, result.call_sid))
    finally:
        for p in processes:
            p.stop()

    harness: list[CallResult] = []
    with LiveDeployment.build(pain_model_path, settings, work_dir=tmp_path / "harness") as local:
        local.enrol("LP-KNOWN", enrolment)
        harness = [local.play(clips, patient_ref=ref) for ref, clips in calls]

    for (status, rows, call_score, verdict), mine in zip(live, harness, strict=True):
        assert status == CallStatus.FINALISED.value and rows
        assert [r[0] for r in rows] == [u.start_ms for u in mine.utterances]
        assert [r[2] for r in rows] == [u.baseline_applied for u in mine.utterances]
        np.testing.assert_allclose([r[1] for r in rows], mine.probabilities, rtol=0, atol=1e-6)
        # the speaker check ran on both sides (the enrolled patient has a voiceprint) and agreed
        assert [r[3] is None for r in rows] == [u.speaker_similarity is None for u in mine.utterances]
        np.testing.assert_allclose(
            [r[3] or 0.0 for r in rows], [u.speaker_similarity or 0.0 for u in mine.utterances], rtol=0, atol=1e-6
        )
        assert call_score is not None and mine.call_score is not None
        assert abs(call_score - mine.call_score) <= 1e-6
        assert verdict == (mine.verdict.value if mine.verdict is not None else None)
    # the enrolled patient's calls went through the speaker check, and the baseline followed its answer
    # (the synthetic "pain" voice is rougher and louder: the check may well refuse it, as it refuses acted anger)
    threshold = DEFAULT_SPEAKER_THRESHOLD
    for call in (harness[0], harness[2]):
        assert all(u.speaker_similarity is not None for u in call.utterances)
        assert [u.baseline_applied for u in call.utterances] == [
            u.speaker_similarity is not None and u.speaker_similarity >= threshold for u in call.utterances
        ]
    assert not any(u.baseline_applied or u.speaker_similarity is not None for u in harness[1].utterances)
