"""PostgreSQL unavailable for a while (default 30 s; ``PAINLINE_FAULT_PG_OUTAGE_S`` changes it).

On a private PostgreSQL cluster that the test stops (``pg_ctl stop -m fast``: every client is
disconnected, new connections are refused) and starts again:

- **jobs retry**: scoring jobs queued for a real ``painline worker`` fail while the database is
  down and come back through RQ's interval retries (``JobOptions``: 5, 15, 60, 300 s, so an outage
  of up to ~80 s is absorbed by the retries alone);
- **a job that ran out of retries is not lost**: one job is enqueued with a single 1 s retry, so it
  is ``failed`` well before the database returns; the periodic sweep (a real ``painline sweep
  --every 1`` process, itself riding out the outage) re-enqueues it once the database is back;
- **the voice webhook keeps calls going**: throughout the outage ``POST /twilio/voice`` still answers
  200 with TwiML that hands the call on to the hotline's flow (no stream), quickly; once the
  database is back, calls get their stream again. (``tests/telephony/test_telephony_webhooks.py::
  test_database_down_still_continues_the_call`` checks one request against a database that is not
  there; this is the same promise over a real outage of a running server.)

Every utterance must end up scored exactly once.
"""

from __future__ import annotations

import os
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from bench.soak.services import PrivatePostgres, PrivateRedis, outcome_counts, wait_until
from painline.replay import new_sid
from schema.contract import JobOptions, finalise_job_id
from schema.db import make_engine, session_factory, session_scope
from schema.models import Call
from schema.outbox import enqueue_score_utterance, sweep
from tests.faults.helpers import FaultStack, queue_on, seed_pending_utterances, voice_webhook
from tests.reliability import ReliabilityRecorder

OUTAGE_S = float(os.environ.get("PAINLINE_FAULT_PG_OUTAGE_S", "30"))
RETRYING = 4  # utterances whose jobs retry on the normal schedule
WEBHOOK_BUDGET_S = 5.0  # the app's PostgreSQL connect timeout is 3 s


def _job(queue: Queue, job_id: str) -> Job:
    job = queue.fetch_job(job_id)
    assert job is not None, f"{job_id} is not in Redis"
    return job


def twiml_tags(body: str) -> list[str]:
    return [child.tag for child in ET.fromstring(body)]


def test_retry_intervals_cover_a_30_s_outage() -> None:
    """Before the job's retries run out, RQ waits 5 + 15 + 60 (+ 300 + 300) s: far past 30 s."""
    options = JobOptions()
    waits = [options.retry_intervals[min(i, len(options.retry_intervals) - 1)] for i in range(options.retries)]
    assert sum(waits[:-1]) > 30 and sum(waits) > 600


@pytest.mark.slow
def test_postgres_outage_jobs_retry_and_nothing_is_lost(
    fault_stack: FaultStack,
    reliability: ReliabilityRecorder,
) -> None:
    url = fault_stack.url
    queue = fault_stack.queue()
    _, retrying = seed_pending_utterances(url, RETRYING)
    _, (exhausted,) = seed_pending_utterances(url, 1)
    fault_stack.worker("w1")
    webhook_answers: list[tuple[int, list[str], float]] = []
    with fault_stack.serve_app() as app:
        status, body = voice_webhook(app.url, new_sid("CA"))
        assert status == 200 and twiml_tags(body)[0] == "Say"  # consent, then <Start><Stream>
        fault_stack.postgres.stop(mode="fast")
        down_at = time.monotonic()
        for utterance_id in retrying:
            assert enqueue_score_utterance(queue, utterance_id, JobOptions())
        assert enqueue_score_utterance(queue, exhausted, JobOptions(retries=1, retry_intervals=(1,)))
        fault_stack.sweeper("--every", "1", "--older-than", "0")
        while time.monotonic() - down_at < OUTAGE_S:
            started = time.monotonic()
            status, body = voice_webhook(app.url, new_sid("CA"))
            webhook_answers.append((status, twiml_tags(body) if status == 200 else [], time.monotonic() - started))
            time.sleep(max(0.0, min(2.0, OUTAGE_S - (time.monotonic() - down_at))))
        failed_status = _job(queue, f"score-utterance-{exhausted}").get_status()
        fault_stack.postgres.start()
        # calls get their stream again (the first request may meet a stale pooled connection)
        wait_until(
            lambda: twiml_tags(voice_webhook(app.url, new_sid("CA"))[1])[0] == "Say",
            20,
            interval_s=0.5,
            message="webhook streaming again",
        )
    during = outcome_counts(url)
    wait_until(
        lambda: outcome_counts(url).scored == RETRYING + 1, 180, interval_s=1.0, message="every utterance scored"
    )
    final = outcome_counts(url)
    retries_used = [JobOptions().retries - (_job(queue, f"score-utterance-{u}").retries_left or 0) for u in retrying]
    assert all(p.alive for p in fault_stack.processes), "the worker or the sweeper died with the database"

    webhook_ok = all(
        status == 200 and tags == ["Enqueue"] and elapsed < WEBHOOK_BUDGET_S
        for status, tags, elapsed in webhook_answers
    )
    survived = final.exactly_once and final.detected == RETRYING + 1 and webhook_ok
    reliability.record_outcome(
        "postgres-outage",
        "fault",
        f"PostgreSQL stopped for {OUTAGE_S:g} s with scoring jobs queued (worker and `painline sweep --every 1` "
        "running); checked jobs retried (RQ interval retries), a job out of retries re-enqueued by the sweep, "
        "every utterance scored exactly once, and the voice webhook answering TwiML that continues the call "
        "throughout",
        survived,
        lost=final.detected - final.scored,
        detected=final.detected,
        scored=final.scored,
        outage_s=OUTAGE_S,
        webhook_requests_during_outage=len(webhook_answers),
        webhook_slowest_s=round(max(e for _, _, e in webhook_answers), 2),
        max_retries_used=max(retries_used),
    )
    assert webhook_answers and webhook_ok, webhook_answers
    assert failed_status == "failed"  # its one retry was spent during the outage ...
    assert during.pending + during.scored == RETRYING + 1
    assert final.exactly_once, final  # ... and the sweep brought it back
    assert final.detected == final.scored == RETRYING + 1
    assert max(retries_used) >= 2  # the normal jobs really failed and retried through the outage


def test_stream_that_ended_during_an_outage_is_ended_and_finalised_by_the_sweep(
    private_postgres: PrivatePostgres,
    private_redis: PrivateRedis,
    reliability: ReliabilityRecorder,
) -> None:
    """A socket that closes while PostgreSQL is down cannot mark its call ended (StreamSession.finish
    gives up): the call would stay ``streaming`` forever. The sweep ends it once it has been silent for
    longer than any stream may last, then enqueues its finalisation."""
    url = private_postgres.url
    connection = Redis.from_url(private_redis.url)
    queue = queue_on(connection)
    call_id, _ = seed_pending_utterances(url, 2, ended=False)
    sessions = session_factory(make_engine(url))
    try:
        stale_s = 600.0
        assert sweep(sessions, queue, older_than_s=60, stale_stream_s=stale_s)["stale_streams"] == 0  # live
        later = datetime.now(UTC) + timedelta(seconds=stale_s + 60)
        counts = sweep(sessions, queue, older_than_s=60, stale_stream_s=stale_s, now=later)
        with session_scope(sessions) as session:
            call = session.get(Call, call_id)
            status = call.status if call is not None else None
        job = queue.fetch_job(finalise_job_id(call_id))
    finally:
        connection.close()
    survived = counts["stale_streams"] == 1 and counts["calls"] == 1 and status == "ended" and job is not None
    reliability.record_outcome(
        "postgres-down-at-stream-end",
        "fault",
        "a call left 'streaming' because its stream ended while PostgreSQL was down; checked the sweep marks it "
        "ended after the stale-stream delay and enqueues its finalisation (its 2 utterances re-enqueued too)",
        survived,
        detected=2,
        utterances_requeued=counts["utterances"],
    )
    assert counts["stale_streams"] == 1 and counts["calls"] == 1 and counts["utterances"] == 2
    assert status == "ended" and job is not None
