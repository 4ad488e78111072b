"""One measured run: N calls against a fresh server, turned into the numbers the report needs.

:func:`ingest_run` streams the calls with no RQ worker (utterances are persisted and queued, and the
queue is emptied afterwards); :func:`e2e_run` does the same with ``painline worker`` processes
scoring while the calls are live and follows every utterance to its stored score and to the flag
published on ``painline:flags``.

Frames lost (the figure that decides whether N calls are sustained) adds up everything Twilio or the
server would have lost: frames Twilio's buffer discarded (the generator's model of it, see
:mod:`bench.stream.loadgen`), frames sent that the server never counted, and frames the jitter buffer
dropped as late. Frames the server handled more than a second behind their best case are reported
beside it: on a real line Twilio's buffer would have overflowed by then, so a run with any of them is
not counted as sustained either.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from redis import Redis
from sqlalchemy import create_engine, func, select
from sqlalchemy.pool import NullPool

from bench.stream import loadgen
from bench.stream.server import (
    AUTH_TOKEN,
    ServerConfig,
    WebServer,
    clear_queue,
    rq_workers,
    web_server,
)
from schema.db import delete_all_rows
from schema.models import Call, Score, Utterance
from telephony.stream_stats import LagHistogram

GENERATOR_LATE_P99_MS = 50.0
"""A generator whose unobstructed sends start later than this (p99) cannot pace real time: the run is
marked generator-limited instead of being blamed on the server."""
LATE_EDGE_MS = 1000.0


@dataclass(frozen=True)
class RunPlan:
    calls: int
    duration_s: float
    ramp_s: float
    generator_processes: int


def auto_generator_processes(calls: int) -> int:
    """One generator process drives about 150 real-time calls on this class of machine (measured)."""
    return max(1, math.ceil(calls / 150))


def _quantiles(values: Sequence[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None}
    ordered = sorted(values)

    def q(p: float) -> float:
        return round(ordered[min(len(ordered) - 1, max(0, math.ceil(p * len(ordered)) - 1))], 4)

    return {"n": len(ordered), "p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "max": round(ordered[-1], 4)}


def _call_ids(database_url: str, call_sids: Sequence[str]) -> dict[str, int]:
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(Call.call_sid, Call.id).where(Call.call_sid.in_(list(call_sids)))).all()
        return {sid: int(cid) for sid, cid in rows}
    finally:
        engine.dispose()


def _stream_metrics(
    server: WebServer,
    plan: RunPlan,
    outcome: loadgen.ProcessOutcome,
    cpu_s: float,
    wall_s: float,
    process_cores: list[float],
) -> dict[str, Any]:
    results = outcome.results
    ids = _call_ids(server.database_url, [r.call_sid for r in results])
    records: dict[int, dict[str, Any]] = {}
    deadline = time.monotonic() + 10
    while True:  # the last stats lines are written as the last sockets close
        records = {int(r["call_id"]): r for r in server.stats_records()}
        if all(ids.get(r.call_sid) in records for r in results if r.error is None) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    lag = LagHistogram()
    lateness, wake = LagHistogram(), LagHistogram()
    missing = 0
    for r in results:
        if r.lateness:
            lateness.merge(LagHistogram.from_dict(r.lateness))
        if r.wake_lateness:
            wake.merge(LagHistogram.from_dict(r.wake_lateness))
        record = records.get(ids.get(r.call_sid, -1))
        if record is None:
            missing += r.frames_sent
            continue
        missing += max(0, r.frames_sent - int(record["frames"]))
        lag.merge(LagHistogram.from_dict(record["lag_histogram"]))
    ours = [records[ids[r.call_sid]] for r in results if ids.get(r.call_sid) in records]
    sent = sum(r.frames_sent for r in results)
    discarded_bp = sum(r.discarded_backpressure for r in results)
    discarded_gen = sum(r.discarded_generator for r in results)
    late_dropped = sum(int(x["late_dropped"]) for x in ours)
    frames_lost = discarded_bp + discarded_gen + missing + late_dropped
    late_1s = lag.count_above(LATE_EDGE_MS)
    errors = [r.error for r in results if r.error]
    wake_p99 = wake.quantile(0.99)
    generator_limited = discarded_gen > 0 or wake_p99 > GENERATOR_LATE_P99_MS
    call_seconds = sent * loadgen.FRAME_S
    return {
        "calls": plan.calls,
        "duration_s": plan.duration_s,
        "ramp_s": plan.ramp_s,
        "server": server.config.label,
        "worker_class": server.config.worker_class,
        "web_processes": server.config.processes,
        "generator_processes": plan.generator_processes,
        "frames_total": sum(r.frames_total for r in results),
        "frames_sent": sent,
        "frames_received": sum(int(x["frames"]) for x in ours),
        "frames_lost": frames_lost,
        "lost_breakdown": {
            "discarded_backpressure": discarded_bp,
            "discarded_generator": discarded_gen,
            "never_received": missing,
            "jitter_late_dropped": late_dropped,
        },
        "frames_handled_over_1s_late": late_1s,
        "duplicates": sum(int(x["duplicates"]) for x in ours),
        "gap_ms_filled": sum(int(x["gap_ms_filled"]) for x in ours),
        "call_errors": len(errors),
        "call_error_examples": errors[:3],
        "stats_lines": len(ours),
        "close_codes": sorted({str(r.close_code) for r in results}),
        "utterances_saved": sum(int(x["utterances_saved"]) for x in ours),
        "utterances_lost": sum(int(x["utterances_lost"]) for x in ours),
        "jobs_deferred": sum(int(x["jobs_deferred"]) for x in ours),
        "lag_ms": {
            "p50": round(lag.quantile(0.5), 2),
            "p99": round(lag.quantile(0.99), 2),
            "max": round(lag.max_ms, 1),
        },
        "lag_histogram": lag.to_dict(),
        "server_cpu_s": round(cpu_s, 2),
        "call_seconds": round(call_seconds, 1),
        "server_cpu_ms_per_call_s": round(1000 * cpu_s / call_seconds, 3) if call_seconds else None,
        "server_cpu_cores_mean": round(cpu_s / wall_s, 3) if wall_s else None,
        "server_process_cores": process_cores,  # each server process's mean cores, busiest first
        "wall_s": round(wall_s, 1),
        "generator": {
            "cpu_s": round(outcome.cpu_s, 2),
            "cpu_cores_mean": round(outcome.cpu_s / wall_s, 3) if wall_s else None,
            "send_late_ms": {
                "p50": round(lateness.quantile(0.5), 2),
                "p99": round(lateness.quantile(0.99), 2),
                "max": round(lateness.max_ms, 1),
            },
            "unobstructed_send_late_ms": {"p99": round(wake_p99, 2), "max": round(wake.max_ms, 1)},
            "blocked_sends": sum(r.blocked_sends for r in results),
            "limited": generator_limited,
        },
        "webhook_ms": _quantiles([r.webhook_ms for r in results if r.error is None]),
        "handshake_ms": _quantiles([r.handshake_ms for r in results if r.error is None]),
        "sustained": frames_lost == 0
        and late_1s == 0
        and not errors
        and not generator_limited
        and len(ours) == plan.calls,
    }


def _stream(server: WebServer, plan: RunPlan) -> tuple[loadgen.ProcessOutcome, float, float, list[float]]:
    cfg = loadgen.GeneratorConfig(
        base_url=server.url, public_url=server.url, auth_token=AUTH_TOKEN, stream_base_url=server.stream_url
    )
    specs = loadgen.ramp_specs(plan.calls, plan.ramp_s, plan.duration_s)
    cpu_before, per_process_before = server.cpu_s(), server.process_cpu_s()
    began = time.monotonic()
    outcome = loadgen.run_processes(cfg, specs, plan.generator_processes)
    wall = time.monotonic() - began
    per_process = server.process_cpu_s()
    cores = sorted(((cpu - per_process_before.get(pid, 0.0)) / wall for pid, cpu in per_process.items()), reverse=True)
    return outcome, server.cpu_s() - cpu_before, wall, [round(c, 3) for c in cores]


def ingest_run(
    config: ServerConfig, plan: RunPlan, *, database_url: str, redis_url: str, log_dir: Path
) -> dict[str, Any]:
    """N calls with no worker: the web tier alone. Rows and queued jobs are deleted afterwards."""
    with web_server(config, database_url, redis_url, log_dir) as server:
        try:
            outcome, cpu, wall, cores = _stream(server, plan)
            metrics = _stream_metrics(server, plan, outcome, cpu, wall, cores)
        finally:
            clear_queue(redis_url, server.queue_name)
            delete_all_rows(database_url)
    return metrics


# ---------------------------------------------------------------------------------------------------
# end to end


class FlagRecorder:
    """Receipt wall time of every message on the flag channel, from a thread subscribed before the run."""

    def __init__(self, redis_url: str, channel: str) -> None:
        self._connection = Redis.from_url(redis_url)
        self._pubsub = self._connection.pubsub(ignore_subscribe_messages=True)
        self._pubsub.subscribe(channel)
        self.received: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="bench-flags", daemon=True)
        self._thread.start()

    def _listen(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message and message.get("type") == "message":
                at = time.time()
                try:
                    self.received.append((at, json.loads(message["data"])))
                except ValueError:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._pubsub.close()
        self._connection.close()


def _wait_for_workers(redis_url: str, queue_name: str, count: int, timeout_s: float = 180.0) -> None:
    from rq import Queue, Worker

    connection = Redis.from_url(redis_url)
    try:
        queue = Queue(queue_name, connection=connection)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if len(Worker.all(queue=queue)) >= count:
                return
            time.sleep(0.5)
        raise RuntimeError(f"{count} worker(s) not ready on {queue_name} within {timeout_s:.0f} s")
    finally:
        connection.close()


def _drain(database_url: str, call_ids: Sequence[int], timeout_s: float) -> tuple[int, int, float]:
    """Wait until every utterance of the run is scored; ``(utterances, scored, seconds waited)``."""
    engine = create_engine(database_url, poolclass=NullPool)
    began = time.monotonic()
    try:
        while True:
            with engine.connect() as conn:
                n_utt = int(conn.scalar(select(func.count(Utterance.id)).where(Utterance.call_id.in_(call_ids))) or 0)
                n_scored = int(
                    conn.scalar(
                        select(func.count(Score.utterance_id.distinct()))
                        .join(Utterance, Utterance.id == Score.utterance_id)
                        .where(Utterance.call_id.in_(call_ids))
                    )
                    or 0
                )
            waited = time.monotonic() - began
            if n_scored >= n_utt or waited > timeout_s:
                return n_utt, n_scored, waited
            time.sleep(1.0)
    finally:
        engine.dispose()


def _latencies(
    database_url: str,
    results: Sequence[loadgen.CallResult],
    ids: dict[str, int],
    flags: list[tuple[float, dict[str, Any]]],
) -> dict[str, Any]:
    t0 = {ids[r.call_sid]: r.t0_wall for r in results if r.call_sid in ids}
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    Utterance.id,
                    Utterance.call_id,
                    Utterance.end_ms,
                    Utterance.start_ms,
                    Utterance.created_at,
                    Score.created_at,
                )
                .join(Score, Score.utterance_id == Utterance.id, isouter=True)
                .where(Utterance.call_id.in_(list(t0)))
            ).all()
    finally:
        engine.dispose()
    end_wall: dict[int, float] = {}
    scored_at: dict[int, float] = {}
    by_call: dict[int, list[tuple[float, int]]] = {}
    from_end, from_row, audio_s = [], [], 0.0
    for uid, call_id, end_ms, start_ms, created, score_created in rows:
        # the generator sent the utterance's last frame (stream time end_ms - 20) at t0 + that time
        end_wall[uid] = t0[call_id] + (end_ms - loadgen.FRAME_S * 1000) / 1000.0
        audio_s += (end_ms - start_ms) / 1000.0
        if score_created is None:
            continue
        s = _epoch(score_created)
        scored_at[uid] = s
        by_call.setdefault(call_id, []).append((s, uid))
        from_end.append(s - end_wall[uid])
        from_row.append(s - _epoch(created))
    flag_lat = []
    matched = 0
    for received, message in flags:
        flagged_call = message.get("call_id")
        if flagged_call not in t0:
            continue
        flagged: int | None = message.get("utterance_id")
        if flagged not in end_wall:
            before = [u for s, u in sorted(by_call.get(flagged_call, [])) if s <= received]
            flagged = before[-1] if before else None
        if flagged is None:
            continue
        matched += 1
        flag_lat.append(received - end_wall[flagged])
    return {
        "end_of_utterance_to_score_s": _quantiles(from_end),
        "utterance_row_to_score_s": _quantiles(from_row),
        "end_of_utterance_to_flag_s": _quantiles(flag_lat),
        "flags_received": matched,
        "utterance_audio_s": round(audio_s, 1),
    }


def _epoch(value: datetime) -> float:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def e2e_run(
    config: ServerConfig,
    plan: RunPlan,
    *,
    workers: int,
    database_url: str,
    redis_url: str,
    log_dir: Path,
    drain_timeout_s: float = 300.0,
    simple_workers: bool = False,
    speaker: bool = True,
) -> dict[str, Any]:
    """N calls with ``workers`` RQ workers scoring live; latencies from end of speech to score and flag."""
    from painline.config import Settings
    from schema.contract import flag_channel

    # the channel the server's workers publish on: the deployment's namespace from the same URLs
    channel = flag_channel(Settings(database_url=database_url, redis_url=redis_url).channel_namespace)

    with web_server(config, database_url, redis_url, log_dir) as server:
        try:
            with rq_workers(workers, server, log_dir, simple=simple_workers, speaker=speaker) as procs:
                _wait_for_workers(redis_url, server.queue_name, workers)
                recorder = FlagRecorder(redis_url, channel)
                try:
                    worker_cpu0 = procs.cpu_s()
                    outcome, cpu, wall, cores = _stream(server, plan)
                    metrics = _stream_metrics(server, plan, outcome, cpu, wall, cores)
                    ids = _call_ids(database_url, [r.call_sid for r in outcome.results])
                    detected, scored, waited = _drain(database_url, list(ids.values()), drain_timeout_s)
                    worker_cpu = procs.cpu_s() - worker_cpu0
                    time.sleep(1.0)  # the last flags' publish
                finally:
                    recorder.close()
            latencies = _latencies(database_url, outcome.results, ids, recorder.received)
        finally:
            clear_queue(redis_url, server.queue_name)
            delete_all_rows(database_url)
    audio = latencies["utterance_audio_s"]
    metrics.update(latencies)
    metrics.update(
        {
            "rq_workers": workers,
            "rq_worker_kind": "--simple (in-process)" if simple_workers else "painline worker default",
            "speaker_verification": speaker,
            "utterances_detected": detected,
            "utterances_scored": scored,
            "drain_s_after_last_call": round(waited, 1),
            "worker_cpu_s": round(worker_cpu, 2),
            "worker_cpu_s_per_audio_s": round(worker_cpu / audio, 4) if audio else None,
        }
    )
    return metrics
