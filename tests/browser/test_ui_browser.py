"""The dashboard in a real browser: Debian's headless chromium, driven by Playwright, against the real
server (werkzeug in a thread), PostgreSQL and Redis.

Playwright's own browser download is never used (``playwright install`` needs the network): chromium
comes from the Debian package, at ``/usr/bin/chromium``. The tests skip when either is missing.

The nurse scenario is the real thing end to end
(:func:`test_nurse_sees_a_replayed_call_flag_live_resolves_it_as_no_pain_and_the_baseline_grows`): a
distressed RAVDESS call (the clips chosen as ``tests/painline/test_e2e_corpus.py`` chooses them) is replayed in
real time through the signed webhook and the Media Stream socket while a real RQ worker with the
shipped model scores it, and the nurse's open queue shows the flag the worker raises before the caller
hangs up. It needs the shared corpora (marked ``corpus``; skipped with the reason when
``../shared/data`` is missing). A corpus-free twin publishes a synthetic flag on the channel exactly as
``worker.flags.announce`` does, so the browser-side path (Redis -> ``/events`` -> script ->
``/queue/rows``) and the call page's evidence are still covered without the corpora.

Screenshots of every page go to ``tests/artifacts/`` (git-ignored); the two the README shows are also
written to ``docs/img/`` (the queue by the corpus scenario, showing a real replayed call's flag).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from analysis.baseline import RunningStats
from analysis.evidence import MEASURE_KEYS
from dashboard.config import config_of
from painline.replay import ReplayResult
from schema.db import session_scope
from schema.identity import patient_ref_key
from schema.models import (
    AuditEvent,
    Baseline,
    BaselineContribution,
    Call,
    CallStatus,
    ContributionSource,
    Flag,
    FlagStatus,
    Patient,
    Score,
    Utterance,
    Verdict,
    utcnow,
)
from tests.app_fixtures import AppServer
from tests.dashboard.pages import moved
from tests.dashboard_fixtures import PASSWORD, DashUsers
from tests.e2e_fixtures import CallFile, OfflineScorer, aggregate, replay_wav, run_worker, write_call_wav
from tests.painline.test_e2e_corpus import needs_ravdess, strongest_distressed_actor
from tests.rows import add_flag_row, add_score_row, add_utterance_row
from worker.baselines import GrowthOutcome
from worker.context import WorkerContext
from worker.flags import FlagChange, encode, flag_message

if TYPE_CHECKING:  # imported for real below, or the module is skipped
    from playwright.sync_api import Browser, BrowserContext, Locator, Page, ViewportSize

playwright_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts"
README_IMAGES = ROOT / "docs" / "img"
MODEL_VERSION = "3f9c2a71d0be"
TIMEOUT_MS = 15_000
REPLAY_CLIPS = 5  # distressed clips in the replayed call: about 20 s in real time, several utterances
REPLAY_SPEED = 1.0  # real time, as Twilio streams: the worker scores the call while it is still live

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed")


# ---------------------------------------------------------------------------------------------------
# data: a small, plausible deployment


def _measures(rng: np.random.Generator, centre: dict[str, float], n: int) -> np.ndarray:
    spread = {
        "pitch": 1.2,
        "pitch_range": 0.8,
        "loudness": 2.0,
        "jitter": 0.25,
        "shimmer": 0.15,
        "hnr": 1.0,
        "syllable_rate": 0.3,
        "voiced_rate": 0.2,
    }
    return np.array([[rng.normal(centre[k], spread[k]) for k in MEASURE_KEYS] for _ in range(n)])


def _centre(pitch: float, loudness: float, jitter: float, shimmer: float, hnr: float) -> dict[str, float]:
    return {
        "pitch": pitch,
        "pitch_range": 4.0,
        "loudness": loudness,
        "jitter": jitter,
        "shimmer": shimmer,
        "hnr": hnr,
        "syllable_rate": 4.0,
        "voiced_rate": 2.2,
    }


def _add_patient(s: Session, ref: str) -> Patient:
    patient = Patient(key=f"ref:{ref}")
    s.add(patient)
    s.flush()
    return patient


def _add_call(
    s: Session,
    patient: Patient,
    *,
    minutes_ago: float,
    probabilities: list[float],
    status: str,
    verdict: str,
    threshold: float = 0.6,
) -> Call:
    started = utcnow() - timedelta(minutes=minutes_ago)
    speech = 2.5 * len(probabilities)
    score = float(np.mean(probabilities)) if probabilities else None
    evidence = None
    if status == CallStatus.FINALISED.value:
        evidence = {
            "version": 1,
            "model_version": MODEL_VERSION,
            "threshold": threshold,
            "min_speech_s": 3.0,
            "speech_s": speech,
            "utterances_scored": len(probabilities),
            "utterances_unscored": 0,
            "speaker_mismatches": 0,
            "top_utterances": [
                {
                    "utterance_id": 0,
                    "seq": i,
                    "start_ms": i * 6000,
                    "end_ms": i * 6000 + 2500,
                    "speech_s": 2.5,
                    "probability": p,
                }
                for i, p in sorted(enumerate(probabilities), key=lambda ip: -ip[1])[:3]
            ],
            "measures": [],
            "baseline": {"n": 9},
            "moved": moved("pitch", "loudness", "hnr"),
        }
    call = Call(
        call_sid="CA" + secrets.token_hex(16),
        patient_id=patient.id,
        started_at=started,
        ended_at=started + timedelta(seconds=6 * len(probabilities) + 5)
        if status != CallStatus.STREAMING.value
        else None,
        status=status,
        # a streaming call's Media Stream connected, so the queue shows it as live (queries.is_live)
        stream_sid="MZ" + secrets.token_hex(16) if status == CallStatus.STREAMING.value else None,
        verdict=verdict,
        call_score=score,
        speech_s=speech,
        consent=True,
        evidence=evidence,
    )
    s.add(call)
    s.flush()
    rng = np.random.default_rng(call.id)
    for i, p in enumerate(probabilities):
        u = add_utterance_row(s, call.id, i, step_ms=6000, length_ms=2500)
        add_score_row(
            s,
            u.id,
            model_version=MODEL_VERSION,
            probability=p,
            baseline_applied=True,
            baseline_n=9,
            speaker_similarity=float(rng.uniform(0.78, 0.92)),  # drawn before the embedding, as always
            embedding=rng.normal(size=8).astype("<f4").tobytes(),
        )
    s.flush()
    return call


def _add_flag(s: Session, call: Call, level: str, severity: float, minutes_ago: float) -> Flag:
    return add_flag_row(
        s,
        call_id=call.id,
        patient_id=call.patient_id,
        severity=severity,
        level=level,
        raised_at=utcnow() - timedelta(minutes=minutes_ago),
    )


def _add_baseline(
    s: Session,
    patient: Patient,
    rng: np.random.Generator,
    centre: dict[str, float],
    calls: list[Call],
) -> tuple[Baseline, list[int]]:
    """A model baseline and its evidence twin: two enrolment clips plus every utterance of ``calls``."""
    items: list[tuple[int | None, int | None]] = [(None, None), (None, None)]
    for call in calls:
        for u in s.scalars(select(Utterance).where(Utterance.call_id == call.id).order_by(Utterance.seq)):
            items.append((u.id, call.id))
    model_vectors = rng.normal(size=(len(items), 8))
    measure_vectors = _measures(rng, centre, len(items))
    model = Baseline(
        patient_id=patient.id,
        embedder="egemaps",
        model_version=MODEL_VERSION,
        stats=RunningStats.from_array(model_vectors).to_dict(),
        count=len(items),
    )
    evidence = Baseline(
        patient_id=patient.id,
        embedder="evidence-measures",
        model_version="evidence-v1",
        stats=RunningStats.from_array(measure_vectors).to_dict(),
        count=len(items),
    )
    s.add_all([model, evidence])
    s.flush()
    base_time = utcnow() - timedelta(days=20)
    ids = []
    for i, (utterance_id, call_id) in enumerate(items):
        at = base_time + timedelta(days=i, microseconds=i)
        source = ContributionSource.ENROLMENT.value if utterance_id is None else ContributionSource.RESOLVED_CALL.value
        row, twin = (
            BaselineContribution(
                baseline_id=baseline.id,
                utterance_id=utterance_id,
                call_id=call_id,
                source=source,
                embedding=vectors[i].astype("<f4").tobytes(),
                created_at=at,
            )
            for baseline, vectors in ((model, model_vectors), (evidence, measure_vectors))
        )
        s.add_all([row, twin])
        s.flush()
        ids.append(row.id)
    return model, ids


@dataclass
class Deployment:
    patient_id: int
    patient_ref: str
    baseline_id: int
    contribution_ids: list[int]
    queued_call_ids: list[int]


@pytest.fixture
def deployment(pages_app: Flask) -> Deployment:
    rng = np.random.default_rng(4)
    with session_scope(pages_app.extensions["painline.sessions"]) as s:
        main = _add_patient(s, "HL-20417")
        old_calls = [
            _add_call(
                s,
                main,
                minutes_ago=60 * 24 * d,
                probabilities=list(rng.uniform(0.1, 0.4, 3)),
                status=CallStatus.FINALISED.value,
                verdict=Verdict.NO_PAIN.value,
            )
            for d in (9, 4)
        ]
        model, contribution_ids = _add_baseline(s, main, rng, _centre(32.5, 65.0, 1.6, 1.2, 8.5), old_calls)
        others = []
        for ref, centre in (
            ("HL-18822", _centre(28.0, 68.0, 1.9, 1.4, 7.5)),
            ("HL-31007", _centre(36.0, 63.0, 1.3, 1.0, 9.5)),
            ("HL-27150", _centre(30.5, 70.0, 2.2, 1.6, 7.0)),
        ):
            other = _add_patient(s, ref)
            _add_baseline(s, other, rng, centre, [])
            others.append(other)
        queued = []
        high = _add_call(
            s,
            others[0],
            minutes_ago=14,
            probabilities=[0.55, 0.81, 0.88, 0.92, 0.86],
            status=CallStatus.FINALISED.value,
            verdict=Verdict.PAIN_LIKELY.value,
        )
        _add_flag(s, high, "high", 0.89, 9)
        medium = _add_call(
            s,
            others[1],
            minutes_ago=6,
            probabilities=[0.62, 0.74, 0.79],
            status=CallStatus.STREAMING.value,
            verdict=Verdict.PENDING.value,
        )
        _add_flag(s, medium, "medium", 0.72, 2)
        live = _add_call(
            s,
            others[2],
            minutes_ago=1,
            probabilities=[0.22, 0.31],
            status=CallStatus.STREAMING.value,
            verdict=Verdict.PENDING.value,
        )
        queued += [high.id, medium.id, live.id]
        return Deployment(main.id, "HL-20417", model.id, contribution_ids, queued)


# ---------------------------------------------------------------------------------------------------
# browser


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def new_page(browser: Browser) -> Iterator[Callable[[], Page]]:
    contexts: list[BrowserContext] = []

    def make() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
        context.set_default_timeout(TIMEOUT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


def _shot(page: Page, name: str, *, readme: bool = False) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    if readme:
        README_IMAGES.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(README_IMAGES / f"{name}.png"), full_page=True)


def _sign_in(page: Page, server: AppServer, username: str, path: str = "/") -> None:
    page.goto(server.url + path)
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()


@dataclass
class UI:
    """What a browser test works with: the running server, its app, the deployment, and fresh pages."""

    server: AppServer
    app: Flask
    deployment: Deployment
    new_page: Callable[[], Page]

    def signed_in(self, username: str, path: str = "/", *, live: bool = False) -> Page:
        """A fresh page signed in as ``username`` at ``path``; with ``live``, once its live updates are on."""
        page = self.new_page()
        _sign_in(page, self.server, username, path)
        if live:
            playwright_api.expect(page.locator("#live-status")).to_have_text("Live updates on.")
        return page


@pytest.fixture
def ui(
    app_server: AppServer,
    pages_app: Flask,
    dash_users: DashUsers,
    deployment: Deployment,
    new_page: Callable[[], Page],
) -> UI:
    """The users exist (``dash_users``) and the deployment is seeded before any page is opened."""
    return UI(app_server, pages_app, deployment, new_page)


def _publish_new_flag(app: Flask, deployment: Deployment) -> int:
    """What the worker does when a call crosses the threshold: write the flag, then announce it."""
    with session_scope(app.extensions["painline.sessions"]) as s:
        patient = s.get_one(Patient, deployment.patient_id)
        call = _add_call(
            s,
            patient,
            minutes_ago=3,
            probabilities=[0.48, 0.71, 0.9, 0.94, 0.91, 0.88],
            status=CallStatus.FINALISED.value,
            verdict=Verdict.PAIN_LIKELY.value,
        )
        flag = _add_flag(s, call, "high", 0.93, 0)
        change = FlagChange(
            event="flag.raised",
            flag_id=flag.id,
            call_id=call.id,
            level="high",
            severity=0.93,
            probability=0.93,
            status="open",
        )
    app.extensions["painline.redis"].publish(config_of(app).flag_channel, encode(flag_message(change)))
    return call.id


# ---------------------------------------------------------------------------------------------------
# tests


@pytest.mark.corpus
@pytest.mark.slow
@needs_ravdess
def test_nurse_sees_a_replayed_call_flag_live_resolves_it_as_no_pain_and_the_baseline_grows(
    ui: UI,
    shipped_context: WorkerContext,
    offline: OfflineScorer,
    tmp_path: Path,
) -> None:
    """Issue 4's nurse scenario on a real call: replayed distressed speech, the shipped model, a real worker."""
    expect = playwright_api.expect
    threshold = shipped_context.threshold
    pick = strongest_distressed_actor(offline, n=REPLAY_CLIPS)
    if aggregate(pick.probs.tolist()) < threshold:
        pytest.fail(
            f"the shipped model {offline.model.version} scores even the most distressed-sounding RAVDESS "
            f"actor's top clips below its threshold ({aggregate(pick.probs.tolist()):.3f} < {threshold:.3f}): "
            "no corpus call can raise a flag for the nurse"
        )
    call_file = write_call_wav(pick.clips, tmp_path / "distressed.wav")
    # the worker announces on this app's flag channel, the one the queue page's /events listens to
    shipped_context.flag_channel = config_of(ui.app).flag_channel
    ref = f"HL-{secrets.randbelow(90000) + 10000}"

    page = ui.signed_in("nurse1")
    expect(page.get_by_role("heading", name="Triage queue")).to_be_visible()
    expect(page.locator("#queue-rows tr[data-call-id]")).to_have_count(len(ui.deployment.queued_call_ids))
    expect(page.locator("#live-status")).to_have_text("Live updates on.")

    # the call streams in real time in the background; a real worker scores it here as it arrives
    replay = _BackgroundReplay(ui.server, call_file, ref)
    replay.start()
    call_id, patient_id, seen_live = _work_until_flag_shows(page, ui.server, replay, ref)
    assert seen_live, "the flag reached the queue only after the caller hung up"
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        flag = s.scalars(select(Flag).where(Flag.call_id == call_id)).one()
        call = s.get_one(Call, call_id)
        assert call.status == CallStatus.STREAMING.value or (call.ended_at and flag.raised_at < call.ended_at)
    row = page.locator(f'#queue-rows tr[data-call-id="{call_id}"]')
    expect(row).to_contain_text(ref)
    expect(row.locator(".live-dot")).to_be_visible()  # still on the line
    expect(page.locator("#live-status")).to_contain_text("New flag")
    page.wait_for_timeout(4200)  # let the highlight fade before the README picture
    _shot(page, "nurse-queue", readme=True)

    # the caller hangs up; the worker finalises the call (verdict and evidence)
    replay.join(timeout=120)
    assert not replay.is_alive(), "the replay did not finish"
    if replay.error is not None:
        raise replay.error
    run_worker(ui.server)
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        call = s.get_one(Call, call_id)
        assert call.status == CallStatus.FINALISED.value
        n_utterances = s.scalar(
            select(func.count()).select_from(Score).join(Utterance).where(Utterance.call_id == call_id)
        )
        assert n_utterances is not None and n_utterances >= len(pick.clips)
        print(
            f"\nactor {pick.speaker}: call {call_id}, {n_utterances} utterances, call score {call.call_score:.3f} "
            f"(threshold {threshold:.3f}), verdict {call.verdict}"
        )

    page.reload()
    row.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"Call {call_id}")).to_be_visible()
    chart = page.locator("svg.probability-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("circle.utterance")).to_have_count(n_utterances)  # one point per utterance
    expect(chart.locator("line.threshold")).to_have_count(1)
    expect(page.locator("table tr[data-utterance-id]")).to_have_count(n_utterances)
    _shot(page, "call-page-replayed")

    before = _baseline_count(ui.app, patient_id, shipped_context)
    page.get_by_label("no pain").check()
    page.get_by_label("Note").fill("Raised voice, not pain: caller was upset about a delivery.")
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_text("Flag resolved: no pain.")).to_be_visible()
    expect(page.locator("#flag-status")).to_have_text("resolved")
    _shot(page, "call-resolved-replayed")

    # the worker runs the growth job the resolution queued: every utterance joins the caller's baseline
    job_id = f"grow-baseline-{call_id}"
    assert ui.server.queue.fetch_job(job_id) is not None
    run_worker(ui.server)
    job = ui.server.queue.fetch_job(job_id)
    assert job is not None and job.get_status() == "finished", job and job.get_status()
    grown = job.return_value()
    assert grown is not None
    assert (grown.outcome, grown.added) == (GrowthOutcome.APPLIED, n_utterances), grown
    after = _baseline_count(ui.app, patient_id, shipped_context)
    assert after == before + n_utterances, (before, after)

    admin = ui.signed_in("admin1", f"/admin/patients/{patient_id}")
    expect(admin.get_by_role("heading", name=f"Baseline of {ref}")).to_be_visible()
    expect(admin.locator("#baseline-count")).to_have_text(str(after))
    grown = admin.locator("table.contributions tbody tr.included", has_text=f"call {call_id}")
    expect(grown).to_have_count(n_utterances)
    expect(grown.first).to_contain_text("resolved call")
    expect(admin.locator("svg.measures-plot g.measure-row")).to_have_count(5)
    _shot(admin, "baseline-grown")


class _BackgroundReplay(threading.Thread):
    """``replay_wav`` in real time on a thread, so the test can run the worker and watch the page meanwhile."""

    def __init__(self, server: AppServer, call: CallFile, patient_ref: str) -> None:
        super().__init__(name="replay", daemon=True)
        self.server, self.call, self.patient_ref = server, call, patient_ref
        self.result: ReplayResult | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result, _ = replay_wav(self.server, self.call, self.patient_ref, speed=REPLAY_SPEED)
        except BaseException as exc:  # re-raised by the test
            self.error = exc


def _call_of(server: AppServer, patient_ref: str) -> tuple[int, int] | None:
    with session_scope(server.app.extensions["painline.sessions"]) as s:
        row = s.execute(
            select(Call.id, Call.patient_id)
            .join(Patient, Patient.id == Call.patient_id)
            .where(Patient.key == patient_ref_key(patient_ref))
        ).first()
    return (int(row.id), int(row.patient_id)) if row else None


def _work_until_flag_shows(
    page: Page,
    server: AppServer,
    replay: _BackgroundReplay,
    patient_ref: str,
) -> tuple[int, int, bool]:
    """Run the worker in bursts until the page shows the call flagged; ``(call, patient, call still live)``."""
    deadline = time.monotonic() + 120
    found: tuple[int, int] | None = None
    while time.monotonic() < deadline:
        run_worker(server, drained=False)
        found = found or _call_of(server, patient_ref)
        if found and page.locator(f'#queue-rows tr[data-call-id="{found[0]}"]:not([data-level="none"])').count():
            return found[0], found[1], replay.is_alive()
        if replay.error is not None:
            raise replay.error
        page.wait_for_timeout(250)
    pytest.fail(f"no flag reached the queue within 120 s (call {found})")


def _baseline_count(app: Flask, patient_id: int, ctx: WorkerContext) -> int:
    """The patient's model baseline count for the shipped model (0 when it has none yet)."""
    with session_scope(app.extensions["painline.sessions"]) as s:
        return int(
            s.scalar(
                select(Baseline.count).where(
                    Baseline.patient_id == patient_id,
                    Baseline.embedder == ctx.model.embedder_name,
                    Baseline.model_version == ctx.model.version,
                )
            )
            or 0
        )


def test_nurse_sees_a_published_flag_arrive_live_and_the_evidence_on_the_call_page(
    ui: UI,
) -> None:
    """Corpus-free: a synthetic flag announced as the worker announces one; evidence in plain units."""
    page = ui.signed_in("nurse1")
    expect = playwright_api.expect
    expect(page.get_by_role("heading", name="Triage queue")).to_be_visible()
    rows = page.locator("#queue-rows tr[data-call-id]")
    expect(rows).to_have_count(len(ui.deployment.queued_call_ids))
    expect(page.locator("#live-status")).to_have_text("Live updates on.")
    _shot(page, "nurse-queue-before")

    call_id = _publish_new_flag(ui.app, ui.deployment)
    new_row = page.locator(f'#queue-rows tr[data-call-id="{call_id}"]')
    expect(new_row).to_be_visible()  # arrived without a reload
    expect(rows.first).to_have_attribute("data-call-id", str(call_id))  # most severe first
    expect(page.locator("#live-status")).to_contain_text("New flag: high")
    _shot(page, "nurse-queue-synthetic")

    new_row.get_by_role("link").click()
    expect(page.get_by_role("heading", name=f"Call {call_id}")).to_be_visible()
    chart = page.locator("svg.probability-chart")
    expect(chart).to_be_visible()
    expect(chart.locator("circle.utterance")).to_have_count(6)
    expect(chart.locator("line.threshold")).to_have_count(1)
    expect(page.locator("table.evidence tbody tr").first).to_contain_text("+2.5 semitones")
    _shot(page, "call-page")

    page.get_by_label("no pain").check()
    page.get_by_label("Note").fill("Calm, pain from earlier fall resolved.")
    page.get_by_role("button", name="Resolve").click()
    expect(page.get_by_text("Flag resolved: no pain.")).to_be_visible()
    expect(page.locator("#flag-status")).to_have_text("resolved")
    expect(page.locator("form.resolve-form")).to_have_count(0)
    _shot(page, "call-resolved")
    job = ui.server.queue.fetch_job(f"grow-baseline-{call_id}")
    assert job is not None and job.func_name == "worker.jobs.grow_baseline_from_call"


def _rebuild(app: Flask, baseline_id: int) -> None:
    """Run what the enqueued ``worker.jobs.rebuild_baseline`` job runs (no worker process here)."""
    from worker.baselines import rebuild

    with session_scope(app.extensions["painline.sessions"]) as s:
        rebuild(s, baseline_id)


def test_admin_excludes_a_contribution_and_resets_a_baseline_both_in_the_audit_log(
    ui: UI,
) -> None:
    expect = playwright_api.expect
    page = ui.signed_in("admin1", f"/admin/patients/{ui.deployment.patient_id}")
    expect(page.get_by_role("heading", name=f"Baseline of {ui.deployment.patient_ref}")).to_be_visible()
    expect(page.locator("svg.measures-plot g.measure-row")).to_have_count(5)
    contributions = page.locator("table.contributions tbody tr")
    expect(contributions).to_have_count(len(ui.deployment.contribution_ids))
    _shot(page, "baseline", readme=True)

    target = ui.deployment.contribution_ids[-1]
    page.get_by_role("button", name=f"Exclude contribution {target}").click()
    expect(page.get_by_text(f"Contribution {target} excluded.")).to_be_visible()
    expect(page.locator(f'tr[data-contribution-id="{target}"]')).to_have_class("excluded")
    _rebuild(ui.app, ui.deployment.baseline_id)
    page.reload()
    expect(page.locator("#baseline-count")).to_have_text(str(len(ui.deployment.contribution_ids) - 1))
    _shot(page, "baseline-excluded")

    page.get_by_label("I want to reset the baseline").check()
    page.get_by_role("button", name="Reset baseline").click()
    expect(page.get_by_text("Baseline reset:")).to_be_visible()
    _rebuild(ui.app, ui.deployment.baseline_id)
    page.reload()
    expect(page.locator("#baseline-count")).to_have_text("0")
    expect(page.locator("table.contributions tr.included")).to_have_count(0)

    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_role("heading", name="Audit log")).to_be_visible()
    expect(page.locator('tr[data-action="baseline.exclude"]')).to_have_count(1)
    expect(page.locator('tr[data-action="baseline.reset"]')).to_have_count(1)
    page.get_by_label("Action").select_option("baseline.reset")
    page.get_by_role("button", name="Filter").click()
    expect(page.locator("table.audit tbody tr")).to_have_count(1)
    expect(page.locator('tr[data-action="baseline.reset"]')).to_contain_text("admin1")
    _shot(page, "audit-log")
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        actions = set(s.scalars(select(AuditEvent.action).where(AuditEvent.actor == "admin1")))
    assert {"baseline.view", "baseline.exclude", "baseline.reset", "audit.view"} <= actions


def test_a_nurse_is_refused_admin_pages_and_api_and_forms_need_a_csrf_token(
    ui: UI,
) -> None:
    expect = playwright_api.expect
    page = ui.signed_in("nurse1")
    expect(page.get_by_role("link", name="Patients")).to_have_count(0)
    for path in ("/admin/patients", f"/admin/patients/{ui.deployment.patient_id}", "/admin/audit"):
        response = page.goto(ui.server.url + path)
        assert response is not None and response.status == 403, path
    _shot(page, "nurse-refused-admin")
    api = page.goto(ui.server.url + f"/api/v1/patients/{ui.deployment.patient_id}/baseline")
    assert api is not None and api.status == 403
    page.goto(ui.server.url + "/")
    flag_call = ui.deployment.queued_call_ids[0]
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        flag_id = s.scalar(select(Flag.id).where(Flag.call_id == flag_call))
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: new URLSearchParams({label: "no_pain"}),
                                              redirect: "manual"})).status""",
        f"{ui.server.url}/flags/{flag_id}/resolve",
    )
    assert status == 400
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        assert s.get_one(Flag, flag_id).status == FlagStatus.OPEN.value


_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", function (e) {
  window.__cspViolations.push(e.violatedDirective + " blocked " + (e.blockedURI || "inline") +
                              " at " + (e.sourceFile || "") + ":" + e.lineNumber);
});
"""


def test_every_page_runs_under_the_strict_content_security_policy(
    ui: UI,
) -> None:
    """Issue 13: the pages carry a CSP without 'unsafe-inline', and nothing on them breaks it.

    Violations are collected both from the page's ``securitypolicyviolation`` events and from
    chromium's console (which reports every blocked inline style, script or handler)."""
    expect = playwright_api.expect
    page = ui.new_page()
    page.context.add_init_script(_CSP_LISTENER)
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text) if "Content Security Policy" in m.text else None)

    def visit(path: str, status: int = 200) -> None:
        response = page.goto(ui.server.url + path)
        assert response is not None and response.status == status, (path, response and response.status)
        policy = response.headers.get("content-security-policy", "")
        assert "style-src 'self'" in policy and "script-src 'self'" in policy, (path, policy)
        assert "unsafe-inline" not in policy
        page.wait_for_load_state("load")
        page.wait_for_timeout(150)  # let late violations (from scripts and styles applied after load) arrive
        seen = page.evaluate("window.__cspViolations || []")
        assert seen == [] and console == [], (path, seen, console)

    visit("/login")
    _sign_in(page, ui.server, "admin1")
    visit("/")
    expect(page.locator("#live-status")).to_have_text("Live updates on.")  # live.js runs under the policy
    _publish_new_flag(ui.app, ui.deployment)
    expect(page.locator("#live-status")).to_contain_text("New flag")  # and its fetch + innerHTML refresh too
    assert page.evaluate("window.__cspViolations") == [] and console == []
    visit(f"/calls/{ui.deployment.queued_call_ids[0]}")
    expect(page.locator("svg.probability-chart")).to_be_visible()
    visit("/admin/patients")
    visit(f"/admin/patients/{ui.deployment.patient_id}")
    expect(page.locator("svg.measures-plot")).to_be_visible()
    visit("/admin/audit")
    visit("/admin/audit?from=yesterday", 400)
    expect(page.locator("#error-detail")).to_contain_text("from")
    visit("/no/such/page", 404)
    expect(page.get_by_role("link", name="Back to the triage queue")).to_be_visible()
    _shot(page, "error-404")


# ---------------------------------------------------------------------------------------------------
# narrow screens (issue 13, item 8)

PHONE: ViewportSize = {"width": 390, "height": 844}
LAPTOP: ViewportSize = {"width": 1366, "height": 768}

_OVERFLOW = """() => {
  const width = window.innerWidth;
  const wide = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.width && box.right > width + 0.5) {
      const inScroller = el.closest(".table-wrap, table");
      const name = el.tagName.toLowerCase() + (el.className ? "." + el.className : "");
      if (!inScroller || inScroller === el) wide.push(name + " right=" + Math.round(box.right));
    }
  }
  return {scrollWidth: document.scrollingElement.scrollWidth, innerWidth: width, wide: wide.slice(0, 8)};
}"""


def _fits(page: Page, where: str) -> None:
    """No page-level horizontal scrolling: the document is no wider than the window."""
    seen = page.evaluate(_OVERFLOW)
    assert seen["scrollWidth"] <= seen["innerWidth"], (where, seen)


def _within_width(page: Page, locator: Locator, where: str) -> None:
    """Every element ``locator`` matches lies wholly inside the window's width, as first shown.

    Nothing is scrolled first: a cell that only a sideways scroll of its table would bring in counts as
    off-screen, since that is what the nurse or admin would have to find."""
    viewport = page.viewport_size
    assert viewport is not None, "the context sets a viewport"
    width = viewport["width"]
    count = locator.count()
    assert count, f"{where}: nothing to check"
    for i in range(count):
        box = locator.nth(i).bounding_box()
        assert box is not None, (where, i)
        assert box["x"] >= 0 and box["x"] + box["width"] <= width + 0.5, (where, i, box, width)


def _record_enrolment_as_uploaded(app: Flask, deployment: Deployment) -> None:
    """Make the fixture's two enrolment contributions look as an upload enrolment leaves them.

    The worker writes an enrolment's utterances a microsecond apart, with their speech length, then a
    ``baseline.enrol`` event, after the dashboard's ``baseline.enrol_upload``: so the README's baseline
    page shows what an admin sees, not rows no enrolment could have written."""
    from schema.audit import record

    at = utcnow() - timedelta(days=30)
    with session_scope(app.extensions["painline.sessions"]) as s:
        rows = s.scalars(
            select(BaselineContribution)
            .join(Baseline, Baseline.id == BaselineContribution.baseline_id)
            .where(Baseline.patient_id == deployment.patient_id, BaselineContribution.utterance_id.is_(None))
            .order_by(BaselineContribution.created_at, BaselineContribution.id)
        ).all()
        twins: dict[datetime, list[BaselineContribution]] = {}
        for row in rows:  # a model row and its evidence twin share a timestamp
            twins.setdefault(row.created_at, []).append(row)
        for u, (_, pair) in enumerate(sorted(twins.items())):
            for row in pair:
                row.created_at = at + timedelta(seconds=12, microseconds=u)
                row.speech_s = (3.2, 4.7)[u % 2]
        record(s, "admin1", "baseline.enrol_upload", "patient", deployment.patient_id, clips=1).at = at
        record(s, "admin1", "baseline.enrol", "patient", deployment.patient_id, utterances=len(twins)).at = (
            at + timedelta(seconds=15)
        )


def test_every_page_fits_a_390_px_phone_and_a_1366_px_laptop_without_page_scrolling(
    ui: UI,
) -> None:
    """Issue 13, item 8: tables respond inside their own area; what a nurse or admin acts on stays on screen.

    Also writes the README's phone and laptop screenshots of the queue, a call page and a baseline page."""
    expect = playwright_api.expect
    flagged_call = ui.deployment.queued_call_ids[0]  # finalised, with evidence
    _record_enrolment_as_uploaded(ui.app, ui.deployment)
    for viewport, size in ((PHONE, "390"), (LAPTOP, "1366")):
        page = ui.new_page()
        page.set_viewport_size(viewport)
        page.goto(ui.server.url + "/login")
        _fits(page, f"sign-in at {size}")
        _within_width(page, page.get_by_role("button", name="Sign in"), f"sign-in button at {size}")
        _sign_in(page, ui.server, "admin1")

        expect(page.locator("#live-status")).to_have_text("Live updates on.")
        _fits(page, f"queue at {size}")
        rows = page.locator("#queue-rows tr[data-call-id]")
        expect(rows).to_have_count(len(ui.deployment.queued_call_ids))
        # the figures a nurse triages by are on screen, not behind a sideways scroll
        heads = [t.strip() for t in page.locator("table.queue thead th").all_inner_texts()]
        for name in ("Probability", "Flag"):
            column = 1 + next(i for i, text in enumerate(heads) if text.split()[0] == name)
            _within_width(page, rows.locator(f"td:nth-child({column})"), f"queue {name} at {size}")
        _shot(page, f"nurse-queue-{size}", readme=True)

        page.goto(ui.server.url + f"/calls/{flagged_call}")
        expect(page.locator("table.evidence tbody tr").first).to_contain_text("+2.5 semitones")
        _fits(page, f"call page at {size}")
        _within_width(page, page.locator("table.evidence tbody td"), f"evidence cells at {size}")
        _shot(page, f"call-page-{size}", readme=True)

        page.goto(ui.server.url + f"/admin/patients/{ui.deployment.patient_id}")
        expect(page.locator("table.contributions tbody tr")).to_have_count(len(ui.deployment.contribution_ids))
        _fits(page, f"baseline page at {size}")
        expect(page.locator('tr[data-origin="upload"]').first).to_contain_text("Enrolment upload, utterance 2 of 2")
        _within_width(page, page.get_by_role("button", name=re.compile(r"^Exclude contribution")), f"Exclude at {size}")
        page.evaluate("window.scrollTo(0, 0)")
        _shot(page, f"baseline-{size}", readme=True)

        page.goto(ui.server.url + "/admin/patients")
        _fits(page, f"patients at {size}")
        page.goto(ui.server.url + "/admin/audit")
        expect(page.locator("table.audit tbody tr").first).to_be_visible()
        _fits(page, f"audit log at {size}")
        _within_width(page, page.get_by_role("button", name="Filter"), f"audit filter at {size}")
        page.context.close()


# ---------------------------------------------------------------------------------------------------
# issue 13: the worklist


def test_a_call_appears_when_its_stream_starts_and_leaves_live_when_it_ends(
    ui: UI,
) -> None:
    """The real telephony path: the signed voice webhook, then the Media Stream socket's start and stop."""
    import json

    import websocket

    from painline import replay
    from tests.app_fixtures import AUTH_TOKEN

    expect = playwright_api.expect
    page = ui.signed_in("nurse1", live=True)
    ref = f"HL-{secrets.randbelow(90000) + 10000}"
    account_sid, call_sid = replay.new_sid("AC"), replay.new_sid("CA")
    public, reached = replay.voice_webhook_urls(ui.server.url, ui.server.url, ref)
    params = replay.voice_webhook_params(account_sid, call_sid, replay.DEFAULT_FROM, replay.DEFAULT_TO)
    instruction = replay.check_voice_answer(*replay._post_form(reached, public, params, AUTH_TOKEN))
    builder = replay.StreamMessages(account_sid=account_sid, call_sid=call_sid)
    ws = websocket.create_connection(
        replay.connect_url(instruction.url, ui.server.url),
        header=[f"{k}: {v}" for k, v in replay.handshake_headers(AUTH_TOKEN, instruction.url).items()],
        timeout=10,
    )
    try:
        row = page.locator("#queue-rows tr", has_text=ref)
        expect(row).to_have_count(0)  # the webhook alone does not put it on the screen
        ws.send(json.dumps(builder.connected()))
        ws.send(json.dumps(builder.start(instruction.parameters)))
        expect(row.locator(".live-dot")).to_be_visible(timeout=2000)  # no poll could be this quick
        expect(row).to_have_attribute("data-live", "yes")
        ws.send(json.dumps(builder.stop()))
        assert replay._await_close(ws) == 1000
        expect(row).to_have_count(0, timeout=2000)  # ended, unflagged: off the list of calls in progress
    finally:
        ws.close()


def test_the_call_page_follows_its_call_live(
    ui: UI,
) -> None:
    from schema.contract import LiveEvent, announce_call

    expect = playwright_api.expect
    live_call = ui.deployment.queued_call_ids[2]
    page = ui.signed_in("nurse1", f"/calls/{live_call}")
    expect(page.locator("#call-badges .live-dot")).to_be_visible()
    expect(page.locator("#live-status")).to_have_text("Live updates on.")
    expect(page.locator("table.utterances tr[data-utterance-id]")).to_have_count(2)
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        call = s.get_one(Call, live_call)
        call.status = CallStatus.ENDED.value
        call.ended_at = utcnow()
        flag = _add_flag(s, call, "medium", 0.7, 0)
        flag_id = flag.id
    redis = ui.app.extensions["painline.redis"]
    announce_call(redis, config_of(ui.app).call_channel, LiveEvent.CALL_ENDED, live_call)
    expect(page.locator("#call-badges .live-dot")).to_have_count(0, timeout=2000)
    expect(page.locator("#call-badges .badge-medium")).to_be_visible()
    expect(page.locator("#call-ended time")).to_be_visible()
    expect(page.locator("#flag-status")).to_have_text("open")  # the flag raised meanwhile, with its forms
    expect(page.get_by_role("button", name="Acknowledge")).to_be_visible()
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        assert s.get(Flag, flag_id) is not None
        views = s.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.action == "call.view", AuditEvent.actor == "nurse1")
        )
    assert views == 1  # the live refreshes are not audited as views


def test_the_call_page_follows_its_scores_and_verdict_by_events_not_a_5_s_poll(
    ui: UI,
) -> None:
    """Issue 13 leftover: the worker's ``call.scored`` and ``call.finalised`` refresh the page at once,
    so while the event stream is up the page does not poll every 5 s (its fallback is 30 s)."""
    from dashboard.formatting import verdict
    from schema.contract import LiveEvent, announce_call

    expect = playwright_api.expect
    live_call = ui.deployment.queued_call_ids[2]
    page = ui.signed_in("nurse1", f"/calls/{live_call}", live=True)
    rows = page.locator("table.utterances tr[data-utterance-id]")
    expect(rows).to_have_count(2)
    refreshes: list[str] = []
    page.on("request", lambda request: refreshes.append(request.url) if request.url.endswith("/live") else None)
    page.wait_for_timeout(6500)  # past the old 5 s poll
    assert refreshes == [], "the page polled while the event stream was up"
    redis = ui.app.extensions["painline.redis"]
    channel = config_of(ui.app).call_channel
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        u = add_utterance_row(s, live_call, 2, step_ms=6000, length_ms=2500)
        add_score_row(s, u.id, model_version=MODEL_VERSION, probability=0.4)
    announce_call(redis, channel, LiveEvent.CALL_SCORED, live_call)  # what the scoring job sends
    expect(rows).to_have_count(3, timeout=2000)
    with session_scope(ui.app.extensions["painline.sessions"]) as s:
        call = s.get_one(Call, live_call)
        call.status, call.ended_at, call.verdict = CallStatus.FINALISED.value, utcnow(), Verdict.NO_PAIN.value
    announce_call(redis, channel, LiveEvent.CALL_FINALISED, live_call)  # what finalise_call sends
    expect(page.locator("#verdict")).to_have_text(verdict(Verdict.NO_PAIN.value), timeout=2000)
    expect(page.locator("#call-badges .live-dot")).to_have_count(0)
    assert len(refreshes) == 2  # one per event


def test_a_new_flag_counts_in_the_tab_title_until_the_tab_gets_focus(
    ui: UI,
) -> None:
    from dashboard.formatting import ago

    expect = playwright_api.expect
    page = ui.signed_in("nurse1", live=True)
    title = "Triage queue · painline"
    assert page.title() == title
    page.evaluate("window.dispatchEvent(new Event('blur'))")  # the nurse is in another tab or window
    first = _publish_new_flag(ui.app, ui.deployment)
    expect(page).to_have_title(f"(1) New flag — {title}")
    expect(page.locator(f'#queue-rows tr[data-call-id="{first}"]')).to_be_visible()
    _publish_new_flag(ui.app, ui.deployment)
    expect(page).to_have_title(f"(2) New flags — {title}")
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    expect(page).to_have_title(title)
    _publish_new_flag(ui.app, ui.deployment)  # seen as it arrives: no count
    expect(page.locator("#live-status")).to_contain_text("New flag: high")
    assert page.title() == title
    # the browser keeps relative times with the server's rule
    now = utcnow()
    for delta in (
        timedelta(seconds=5),
        timedelta(minutes=3, seconds=30),
        timedelta(hours=5, minutes=2),
        timedelta(days=2),
    ):
        then = now - delta
        in_browser = page.evaluate(
            "([iso, now]) => window.painlineAgo(iso, now)", [then.isoformat(), now.timestamp() * 1000]
        )
        assert in_browser == ago(then, now), delta
    expect(page.locator("#queue-rows time.ago").first).to_contain_text("raised ")
