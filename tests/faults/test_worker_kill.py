"""``kill -9`` of a real ``painline worker`` in the middle of scoring an utterance.

The job is caught mid-job deterministically, without any hook in production code: the test holds
the call row's lock, so ``score_utterance`` blocks in its write transaction right after inserting
the Score (uncommitted) and waits; the test sees it waiting in ``pg_stat_activity`` and kills.

Three ways a worker dies (the first two with the forking ``painline worker --fork``, rq.Worker; the
third with painline's default rq.SimpleWorker, which runs jobs in the worker process itself):

- ``horse``: only the forked work-horse is SIGKILLed (the kernel's OOM killer picks the biggest
  process: the one holding audio and features). The worker notices at once, RQ fails the job and,
  as it has retries left, schedules a retry 5 s later; its own scheduler puts it back on the queue.
- ``whole-worker``: the worker, its scheduler and its work-horse are SIGKILLed together (a container
  or machine gone). Nobody tells RQ: the job stays ``started`` until its heartbeat lease ends
  (~90 s), and RQ only looks at a worker's maintenance pass (every 10 min), while the dead
  scheduler's lock keeps a new worker from scheduling retries. A new worker starts; the outbox sweep
  (``schema.outbox.sweep``: reap abandoned jobs, promote overdue retries, re-enqueue dead ones)
  brings the job back. The sweep is run with its clock set past the lease (what the periodic
  ``painline sweep --every 30`` does ~2 minutes later) so the test does not sit out the lease.
- ``simple-worker``: a SimpleWorker process SIGKILLed mid-job; recovered exactly as ``whole-worker``,
  but its lease is the job timeout + 60 s (~4 min with RQ's defaults): it cannot renew it mid-job.

Either way the utterance must end up scored exactly once: one Score row, status scored, audio gone.
"""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime, timedelta

import pytest
from rq.job import Job, JobStatus

from bench.soak.services import horse_pids, outcome_counts, wait_until
from schema.contract import JobOptions, score_job_id
from schema.db import make_engine, session_factory
from schema.outbox import enqueue_score_utterance, sweep
from tests.faults.helpers import FaultStack, backends_waiting_on_locks, call_row_locked, seed_pending_utterances
from tests.reliability import ReliabilityRecorder

# how far past "now" the sweep's clock is set: beyond RQ's heartbeat lease of the killed job. A forking
# worker renews a 90 s lease (job_monitoring_interval 30 s + 60 s); a SimpleWorker cannot renew it while
# the job runs, so it takes the job timeout (RQ's default 180 s) + 60 s up front
LEASE_S = {"whole-worker": 120, "simple-worker": 300}
KILLED = {
    "horse": "forked work-horse (rq.Worker)",
    "whole-worker": "rq.Worker, its scheduler and work-horse",
    "simple-worker": "rq.SimpleWorker process (painline's default) and its scheduler",
}


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["horse", "whole-worker", "simple-worker"])
def test_worker_killed_mid_job_scores_exactly_once(
    victim: str,
    fault_stack: FaultStack,
    reliability: ReliabilityRecorder,
) -> None:
    url = fault_stack.url
    connection = fault_stack.connection
    queue = fault_stack.queue()
    call_id, (utterance_id,) = seed_pending_utterances(url, 1)
    job_id = score_job_id(utterance_id)
    fork = victim != "simple-worker"
    first = fault_stack.worker("first", fork=fork)
    with call_row_locked(url, call_id):
        assert enqueue_score_utterance(queue, utterance_id, JobOptions())
        wait_until(lambda: backends_waiting_on_locks(url) >= 1, 60, message="job blocked mid-transaction")
        assert Job.fetch(job_id, connection=connection).get_status() == JobStatus.STARTED
        horses = horse_pids(first, fault_stack.postgres.port)
        assert len(horses) == (1 if fork else 0), f"work-horses: {horses}"
        if victim == "horse":
            os.kill(horses[0], signal.SIGKILL)
        else:
            first.kill_group(signal.SIGKILL)
    # the uncommitted Score died with its connection
    killed = outcome_counts(url)
    assert (killed.score_rows, killed.pending) == (0, 1)

    fault_stack.worker("second", fork=fork)
    sweeps = finalise_enqueued = 0
    if victim != "horse":
        # nothing in RQ has noticed: the job is still "started" in the registry of a dead worker
        assert Job.fetch(job_id, connection=connection).get_status() == JobStatus.STARTED
        sessions = session_factory(make_engine(url))
        later = datetime.now(UTC) + timedelta(seconds=LEASE_S[victim])
        counts = sweep(sessions, queue, older_than_s=60, now=later)
        sweeps += 1
        # RQ's own cleanup gave it a retry (retries left), overdue at "later": promoted to the queue
        assert counts["promoted"] == 1 and counts["utterances"] == 0
        finalise_enqueued += counts["calls"]  # its clock is past the call's end too
    wait_until(lambda: outcome_counts(url).scored == 1, 60, interval_s=0.25, message="utterance scored")
    job = Job.fetch(job_id, connection=connection)
    retried = JobOptions().retries - (job.retries_left or 0)
    # the call had ended before the kill (its finalise job never enqueued): the sweep finalises it,
    # and after that finds nothing left to do
    sessions = session_factory(make_engine(url))
    counts = sweep(sessions, queue, older_than_s=0)
    finalise_enqueued += counts["calls"]
    assert (counts["promoted"], counts["utterances"], finalise_enqueued) == (0, 0, 1)
    wait_until(lambda: outcome_counts(url).calls_finalised == 1, 60, interval_s=0.25, message="finalised")
    assert sweep(sessions, queue, older_than_s=0) == {
        "promoted": 0,
        "stale_streams": 0,
        "utterances": 0,
        "calls": 0,
        "baselines": 0,
    }
    final = outcome_counts(url)

    survived = final.exactly_once and final.detected == 1 and final.calls_finalised == 1
    reliability.record_outcome(
        f"worker-sigkill-{victim}-mid-job",
        "fault",
        f"kill -9 of the {KILLED[victim]} while "
        "score_utterance held an uncommitted Score; a new worker started"
        + ("; RQ retried the job" if victim == "horse" else "; the outbox sweep reaped and re-queued it")
        + "; checked one Score row, status scored, audio deleted, call finalised",
        survived,
        lost=final.lost,
        detected=final.detected,
        scored=final.scored,
        score_rows=final.score_rows,
        rq_retries_used=retried,
        sweeps=sweeps,
    )
    assert final.exactly_once, final
    assert final.detected == final.scored == final.score_rows == 1
    assert retried >= 1  # it really ran twice: once killed, once to completion
