"""schema.contract: one enqueue for every layer, and flag channels of a deployment's own.

Real Redis and PostgreSQL throughout. The baseline tests go through the dashboard's API and run the
enqueued jobs with painline's own RQ worker, because the bug they guard against lived between the two:
a second rebuild request within RQ's result TTL of the first was taken for "already waiting" and lost.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from redis import Redis
from redis.lock import Lock
from rq import Queue
from rq.job import Job, JobStatus
from sqlalchemy import Engine, func, select

import worker.jobs
from analysis.embedders import Embedder
from analysis.model import PainModel
from dashboard.config import config_of
from painline.app import dashboard_config
from painline.config import Settings, production_problems
from painline.workers import build_context
from schema.contract import (
    Enqueued,
    JobName,
    JobOptions,
    call_channel,
    enqueue,
    flag_channel,
    follow_up_id,
    rebuild_job_id,
)
from schema.db import session_scope
from schema.models import Baseline, BaselineContribution
from schema.outbox import sweep
from tests.app_fixtures import app_redis_url
from tests.dashboard_fixtures import DashUsers, Seed, bearer
from tests.worker_fixtures import run_burst
from worker import context
from worker.flags import FlagChange, publish

# ---------------------------------------------------------------------------------------------------
# job names


def test_every_job_name_is_a_worker_function() -> None:
    for name in JobName:
        module, function = name.value.rsplit(".", 1)
        assert module == "worker.jobs" and callable(getattr(worker.jobs, function)), name


# ---------------------------------------------------------------------------------------------------
# enqueue, state by state (jobs are never run here: their states are set as a worker would set them)

OPTIONS = JobOptions()
JOB = "rebuild-baseline-77"


def _ask(queue: Queue, *, if_idle: bool = False) -> Enqueued:
    return enqueue(queue, JobName.REBUILD_BASELINE, 77, job_id=JOB, options=OPTIONS, if_idle=if_idle)


def _job(queue: Queue, job_id: str) -> Job:
    """The job under ``job_id``, which must still be in Redis."""
    job = queue.fetch_job(job_id)
    assert job is not None, job_id
    return job


def _take(queue: Queue, job_id: str, status: JobStatus) -> Job:
    """What a worker does to a job it pops (``started``) and then ends (``finished``, ``failed`` ...)."""
    job = _job(queue, job_id)
    queue.remove(job)
    job.set_status(status)
    return job


def test_a_finished_or_failed_job_is_replaced_by_a_fresh_one(worker_queue: Queue) -> None:
    for dead in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
        assert _ask(worker_queue) is Enqueued.NEW
        _take(worker_queue, JOB, dead)
        assert _ask(worker_queue) is Enqueued.NEW
        job = _job(worker_queue, JOB)
        assert job.get_status() == JobStatus.QUEUED and worker_queue.job_ids == [JOB], dead
        assert job.retries_left == OPTIONS.retries and job.failure_ttl == OPTIONS.failure_ttl_s
        _take(worker_queue, JOB, JobStatus.FINISHED)


def test_a_waiting_job_satisfies_the_request(worker_queue: Queue) -> None:
    assert _ask(worker_queue) is Enqueued.NEW
    assert _ask(worker_queue) is Enqueued.WAITING
    assert worker_queue.job_ids == [JOB] and worker_queue.fetch_job(follow_up_id(JOB)) is None


def test_a_running_job_gets_one_follow_up_that_waits_for_it(worker_queue: Queue) -> None:
    assert _ask(worker_queue) is Enqueued.NEW
    running = _take(worker_queue, JOB, JobStatus.STARTED)
    assert _ask(worker_queue, if_idle=True) is Enqueued.RUNNING  # the sweep adds nothing
    assert worker_queue.fetch_job(follow_up_id(JOB)) is None
    assert _ask(worker_queue) is Enqueued.FOLLOW_UP
    follow_up = _job(worker_queue, follow_up_id(JOB))
    assert follow_up.get_status() == JobStatus.DEFERRED and follow_up.args == (77,)
    assert _ask(worker_queue) is Enqueued.WAITING  # the follow-up has not started: it covers this one too
    assert worker_queue.job_ids == []  # nothing runs beside the running job
    # the running job ends (even by failing): RQ releases the follow-up, as a worker would
    running.set_status(JobStatus.FAILED)
    worker_queue.enqueue_dependents(running)
    assert worker_queue.job_ids == [follow_up_id(JOB)]
    # and while the follow-up runs, the next request waits for it under the first id again
    _take(worker_queue, follow_up_id(JOB), JobStatus.STARTED)
    assert _ask(worker_queue) is Enqueued.FOLLOW_UP
    assert _job(worker_queue, JOB).get_status() == JobStatus.DEFERRED


def test_a_new_id_is_one_unique_enqueue_and_a_held_one_falls_back_to_the_full_decision(
    worker_queue: Queue,
) -> None:
    locks: list[str] = []
    real_lock = worker_queue.connection.lock

    def counting_lock(name: str, *args: Any, **kwargs: Any) -> Lock:
        locks.append(name)
        return real_lock(name, *args, **kwargs)

    worker_queue.connection.lock = counting_lock  # type: ignore[method-assign]
    ask = functools.partial(
        enqueue, worker_queue, JobName.REBUILD_BASELINE, 77, job_id=JOB, options=OPTIONS, new_id=True
    )
    assert ask() is Enqueued.NEW and locks == []  # the live path's case: no lock, no state reads
    job = _job(worker_queue, JOB)
    assert job.retries_left == OPTIONS.retries and job.failure_ttl == OPTIONS.failure_ttl_s
    assert ask() is Enqueued.WAITING and len(locks) == 1  # held after all: decided as any other request
    _take(worker_queue, JOB, JobStatus.FINISHED)
    assert ask() is Enqueued.NEW and worker_queue.job_ids == [JOB]  # a finished one is still replaced


def test_a_follow_up_orphaned_by_its_dependency_is_replaced(worker_queue: Queue) -> None:
    assert _ask(worker_queue) is Enqueued.NEW
    running = _take(worker_queue, JOB, JobStatus.STARTED)
    assert _ask(worker_queue) is Enqueued.FOLLOW_UP
    running.set_status(JobStatus.STOPPED)  # stopped jobs never release their dependents
    assert _ask(worker_queue) is Enqueued.NEW
    assert worker_queue.job_ids == [JOB] and worker_queue.fetch_job(follow_up_id(JOB)) is None


def test_unreachable_redis_is_reported_not_raised() -> None:
    dead = Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    assert _ask(Queue("painline-test-nowhere", connection=dead)) is Enqueued.UNAVAILABLE
    assert enqueue(None, JobName.REBUILD_BASELINE, 1, job_id=JOB, options=OPTIONS) is Enqueued.UNAVAILABLE


# ---------------------------------------------------------------------------------------------------
# finding: a baseline exclude then include lost its second rebuild


@pytest.fixture
def app_worker(dash_app: Flask, pain_model: PainModel, egemaps: Embedder) -> Iterator[Queue]:
    """The app's queue, with a worker context on the app's own database installed to run its jobs."""
    engine: Engine = dash_app.extensions["painline.engine"]
    ctx = context.WorkerContext(
        engine=engine,
        sessions=dash_app.extensions["painline.sessions"],
        redis=dash_app.extensions["painline.redis"],
        model=pain_model,
        embedder=egemaps,
        evidence_embedder=egemaps,
        flag_channel=config_of(dash_app).flag_channel,
    )
    context.install(ctx)
    try:
        yield dash_app.extensions["painline.queue"]
    finally:
        context.uninstall()


def _baseline(app: Flask, baseline_id: int) -> tuple[int, int]:
    """The baseline's stored count and its included contributions (equal unless a rebuild is pending)."""
    with session_scope(app.extensions["painline.sessions"]) as s:
        count = s.get_one(Baseline, baseline_id).count
        included = s.scalar(
            select(func.count())
            .select_from(BaselineContribution)
            .where(BaselineContribution.baseline_id == baseline_id, BaselineContribution.included.is_(True))
        )
    return count, int(included or 0)


def test_exclude_then_include_rebuilds_twice(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed, app_worker: Queue
) -> None:
    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["admin"])
    target = dash_seed.contribution_ids[1]
    assert client.post(f"/api/v1/contributions/{target}/exclude", headers=headers).status_code == 202
    run_burst(app_worker)
    assert _baseline(dash_app, dash_seed.baseline_id) == (1, 1)
    # the finished rebuild is still in Redis (RQ keeps results for 500 s): it must not swallow the next
    assert _job(app_worker, rebuild_job_id(dash_seed.baseline_id)).get_status() == JobStatus.FINISHED

    included = client.post(f"/api/v1/contributions/{target}/include", headers=headers)
    assert included.status_code == 202 and included.json is not None
    assert included.json["rebuild_job"] == rebuild_job_id(dash_seed.baseline_id)
    assert _job(app_worker, rebuild_job_id(dash_seed.baseline_id)).get_status() == JobStatus.QUEUED
    run_burst(app_worker)
    assert _baseline(dash_app, dash_seed.baseline_id) == (2, 2)
    assert _baseline(dash_app, dash_seed.evidence_baseline_id) == (2, 2)  # the twin followed
    doc = client.get(f"/api/v1/patients/{dash_seed.patient_id}/baseline", headers=headers).json
    assert doc is not None
    assert doc["baselines"][0]["stale"] is False and doc["baselines"][0]["count"] == 2


def test_a_change_while_the_rebuild_runs_is_rebuilt_after_it(
    dash_app: Flask, dash_users: DashUsers, dash_seed: Seed, app_worker: Queue
) -> None:
    client = dash_app.test_client()
    headers = bearer(dash_users.tokens["admin"])
    first, second = dash_seed.contribution_ids
    job_id = rebuild_job_id(dash_seed.baseline_id)
    client.post(f"/api/v1/contributions/{first}/exclude", headers=headers)
    # a worker has popped that rebuild and read the database, but not yet written
    running = _take(app_worker, job_id, JobStatus.STARTED)
    excluded = client.post(f"/api/v1/contributions/{second}/exclude", headers=headers).json
    assert excluded is not None and excluded["rebuild_job"] == job_id
    assert _job(app_worker, follow_up_id(job_id)).get_status() == JobStatus.DEFERRED
    assert app_worker.job_ids == []
    running.set_status(JobStatus.FINISHED)  # it ends (having written what it read before the change) ...
    app_worker.enqueue_dependents(running)  # ... and RQ releases the follow-up, as the worker does
    run_burst(app_worker)
    assert _baseline(dash_app, dash_seed.baseline_id) == (0, 0)


def test_sweep_requeues_the_rebuild_of_a_stale_baseline(dash_app: Flask, dash_seed: Seed, app_worker: Queue) -> None:
    sessions = dash_app.extensions["painline.sessions"]
    with session_scope(sessions) as s:  # excluded while Redis was down: no job was ever enqueued
        s.get_one(BaselineContribution, dash_seed.contribution_ids[0]).included = False
    assert app_worker.fetch_job(rebuild_job_id(dash_seed.baseline_id)) is None
    counts = sweep(sessions, app_worker)
    assert counts["baselines"] == 1 and app_worker.job_ids == [rebuild_job_id(dash_seed.baseline_id)]
    assert sweep(sessions, app_worker)["baselines"] == 0  # queued: left alone
    run_burst(app_worker)
    assert _baseline(dash_app, dash_seed.baseline_id) == (1, 1)
    assert sweep(sessions, app_worker)["baselines"] == 0  # fresh: nothing to do

    # a rebuild that ran out of retries leaves the baseline stale: the next sweep replaces it
    with session_scope(sessions) as s:
        s.get_one(BaselineContribution, dash_seed.contribution_ids[0]).included = True
    enqueue(
        app_worker,
        JobName.REBUILD_BASELINE,
        dash_seed.baseline_id,
        job_id=rebuild_job_id(dash_seed.baseline_id),
        options=OPTIONS,
    )
    _take(app_worker, rebuild_job_id(dash_seed.baseline_id), JobStatus.FAILED)
    assert sweep(sessions, app_worker)["baselines"] == 1
    run_burst(app_worker)
    assert _baseline(dash_app, dash_seed.baseline_id) == (2, 2)


# ---------------------------------------------------------------------------------------------------
# finding: flags of another painline on the same Redis server reached this dashboard


def _redis_db(n: int) -> str:
    url = app_redis_url()
    return url.rsplit("/", 1)[0] + f"/{n}"


def test_deployments_on_one_redis_server_have_channels_of_their_own(pg_url: str) -> None:
    here = Settings(database_url=pg_url, redis_url=_redis_db(0))
    same_db_elsewhere = Settings(database_url=pg_url, redis_url=_redis_db(1))
    other_database = Settings(database_url=pg_url + "_other", redis_url=_redis_db(0))
    channels = {dashboard_config(s).flag_channel for s in (here, same_db_elsewhere, other_database)}
    assert len(channels) == 3
    # every process of one deployment (same URLs, whatever the password) agrees on it
    with_password = here.with_(database_url=pg_url.replace("postgres@", "postgres:secret@"))
    assert with_password.channel_namespace == here.channel_namespace
    assert "secret" not in dashboard_config(with_password).flag_channel
    assert dashboard_config(here).flag_channel == flag_channel(here.channel_namespace)
    named = here.with_(deployment_name="ward-7")
    assert dashboard_config(named).flag_channel == "painline:ward-7:flags"
    assert all("DEPLOYMENT" not in p.message for p in production_problems(named))
    assert any(
        "PAINLINE_DEPLOYMENT_NAME" in p.message and p.fatal
        for p in production_problems(here.with_(deployment_name="ward 7/flags"))
    )


def test_the_worker_publishes_on_its_deployments_channel(pain_model_path: Path, sqlite_url: str) -> None:
    settings = Settings(database_url=sqlite_url, redis_url=_redis_db(0), model_path=pain_model_path)
    ctx = build_context(settings, None, speaker=False)
    try:
        assert ctx.flag_channel == dashboard_config(settings).flag_channel == flag_channel(settings.channel_namespace)
        # scores and verdicts are announced where the dashboard's event stream listens for calls
        assert ctx.call_channel == dashboard_config(settings).call_channel == call_channel(settings.channel_namespace)
    finally:
        ctx.engine.dispose()


def _received(listener: object, timeout_s: float = 1.0) -> list[bytes]:
    seen: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        message = listener.get_message(timeout=0.1)  # type: ignore[attr-defined]
        if message is not None and message["type"] == "message":
            seen.append(message["data"])
    return seen


def test_a_flag_published_by_another_deployment_does_not_reach_this_dashboard() -> None:
    database = f"postgresql+psycopg://postgres@127.0.0.1:5432/painline_test_{secrets.token_hex(4)}"
    this = Settings(database_url=database, redis_url=_redis_db(0))
    other = Settings(database_url=database + "_b", redis_url=_redis_db(1))
    ours, theirs = dashboard_config(this).flag_channel, dashboard_config(other).flag_channel
    this_redis, other_redis = Redis.from_url(this.redis_url), Redis.from_url(other.redis_url)
    dashboard = this_redis.pubsub(ignore_subscribe_messages=True)
    try:
        dashboard.subscribe(ours)
        while dashboard.get_message(timeout=0.2) is not None:
            pass
        change = FlagChange(
            event="flag.raised", flag_id=1, call_id=99, level="high", severity=0.9, probability=0.9, status="open"
        )
        assert publish(other_redis, change, theirs)  # the other painline's worker, in its own Redis db
        assert _received(dashboard) == []
        assert publish(this_redis, change, ours)  # this deployment's own flags still arrive
        assert len(_received(dashboard)) == 1
    finally:
        dashboard.close()
        this_redis.close()
        other_redis.close()
