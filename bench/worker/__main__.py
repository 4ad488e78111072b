"""Worker efficiency: how much of a scoring worker's CPU is real work, and how fast each embedder is.

``python -m bench.worker [--jobs 120] [--quick]`` measures, on real RAVDESS speech cut into
utterances by the live VAD, against real PostgreSQL and a private Redis:

1. **Embedders**: CPU per utterance for every installed embedder, embedded one utterance per call as
   the worker does, fitted as ``fixed + per_second * duration``; audio seconds per CPU second.
2. **Jobs**: the same utterances persisted as the telephony side persists them and scored by a real
   ``painline worker`` subprocess, once with RQ's forking ``Worker`` and once with ``SimpleWorker``.
   The worker's CPU (its own plus its reaped work-horses', read with psutil while it sits idle
   between batches, so start-up and a warm-up batch are left out) is compared with the CPU of the
   very same job function, ``worker.jobs.score_utterance``, run directly in this process on a copy
   of the utterances: the difference is RQ's per-job overhead (fork, job bookkeeping, reconnects).

Results go to ``bench/results/worker.json``; ``docs/scaling.md`` quotes them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import psutil

from bench.soak.services import ScratchServices
from bench.worker.utterances import persist_utterances, speech_utterances
from schema.contract import score_job_id

RESULTS = Path("bench/results/worker.json")
EMBEDDERS = ("egemaps", "compare", "speaker", "egemaps+speaker")


@dataclass
class EmbedderResult:
    name: str
    utterances: int
    audio_s: float
    cpu_s: float
    audio_s_per_cpu_s: float
    fixed_ms: float  # intercept of CPU per call against duration
    per_audio_s_ms: float  # slope

    @staticmethod
    def measure(name: str, clips: list[np.ndarray]) -> EmbedderResult | None:
        from analysis.embedders import EmbedderUnavailable, get_embedder

        try:
            embedder = get_embedder(name)
            embedder.embed([clips[0]])  # lazy backends load here, not in the timing
        except EmbedderUnavailable as exc:
            print(f"  {name}: not installed ({exc})")
            return None
        costs = []
        for clip in clips:
            start = time.process_time()
            embedder.embed([clip])
            costs.append(time.process_time() - start)
        durations = np.array([len(c) / 8000.0 for c in clips])
        slope, intercept = np.polyfit(durations, np.array(costs), 1)
        audio, cpu = float(durations.sum()), float(sum(costs))
        return EmbedderResult(
            name,
            len(clips),
            round(audio, 2),
            round(cpu, 3),
            round(audio / cpu, 1),
            round(1000 * intercept, 1),
            round(1000 * slope, 1),
        )


@dataclass
class WorkerRun:
    worker_class: str
    jobs: int
    audio_s: float
    startup_cpu_s: float
    startup_wall_s: float
    total_cpu_s: float
    total_wall_s: float
    job_function_cpu_s: float  # the same jobs run directly in-process
    overhead_fraction: float  # of the worker's per-job CPU, not spent in the job function
    audio_s_per_cpu_s: float  # steady state (start-up excluded)
    job_wall_ms_p50: float
    job_wall_ms_p95: float


def _cpu_s(process: psutil.Process) -> float:
    """The worker's CPU so far: its own threads plus every work-horse child it has reaped."""
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class WorkerProcess:
    """A real ``painline worker`` subprocess, sampled between batches of jobs.

    CPU is read from outside (psutil) at moments when the worker is idle between batches, so start-up
    (imports, model load) and the warm-up batch are excluded from the steady-state figure, and a
    forking worker's reaped work-horses are included.
    """

    def __init__(self, services: ScratchServices, simple: bool) -> None:
        self.services = services
        self.name = f"bench-{secrets.token_hex(4)}"
        cmd = [
            sys.executable,
            "-m",
            "painline.cli",
            "--log-level",
            "warning",
            "worker",
            "--no-scheduler",
            "--name",
            self.name,
        ]
        if simple:
            cmd.append("--simple")
        self.started = time.perf_counter()
        self.popen = subprocess.Popen(cmd, env=services.env())
        self.process = psutil.Process(self.popen.pid)

    def wait_ready(self) -> tuple[float, float]:
        """(CPU s, wall s) from launch until the worker registered and took no job yet."""
        from rq import Worker

        _wait_until(
            lambda: any(w.name == self.name for w in Worker.all(connection=self.services.redis)),
            180.0,
            "the worker to start",
        )
        return _cpu_s(self.process), time.perf_counter() - self.started

    def run_batch(self, ids: list[int]) -> tuple[float, float]:
        """(CPU s, wall s) for the worker to finish the already-enqueued jobs of ``ids``."""
        from rq.job import Job, JobStatus

        from schema.contract import score_job_id

        job_ids = [score_job_id(uid) for uid in ids]
        cpu0, wall0 = _cpu_s(self.process), time.perf_counter()

        def done() -> bool:
            if self.popen.poll() is not None:
                raise RuntimeError(f"worker exited with {self.popen.returncode}")
            statuses = [
                j.get_status(refresh=False) if j else None
                for j in Job.fetch_many(job_ids, connection=self.services.redis)
            ]
            return all(s in (JobStatus.FINISHED, JobStatus.FAILED) for s in statuses)

        _wait_until(done, 600.0, "the jobs to finish")
        return _cpu_s(self.process) - cpu0, time.perf_counter() - wall0

    def stop(self) -> None:
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(30)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _job_walls_ms(services: ScratchServices, job_ids: list[str]) -> np.ndarray:
    from rq.job import Job

    walls = []
    for job in Job.fetch_many(job_ids, connection=services.redis):
        if job is not None and job.started_at and job.ended_at:
            walls.append((job.ended_at - job.started_at).total_seconds() * 1000.0)
    return np.array(walls)


def _direct_cpu(services: ScratchServices, clips: list[bytes]) -> float:
    """CPU of ``score_utterance`` itself on fresh copies of the utterances, in this process."""
    from painline.workers import build_context, install_context
    from worker import context
    from worker.jobs import score_utterance

    ctx = build_context(services.settings(), services.redis)
    install_context(ctx)
    try:
        warm = persist_utterances(ctx.sessions, clips[:WARM_JOBS])
        for uid in warm:
            score_utterance(uid)
        ids = persist_utterances(ctx.sessions, clips)
        start = time.process_time()
        for uid in ids:
            assert score_utterance(uid) == "scored"
        return time.process_time() - start
    finally:
        context.uninstall()
        ctx.engine.dispose()


WARM_JOBS = 4


def _enqueue_copies(services: ScratchServices, clips: list[bytes]) -> list[int]:
    """Persist fresh copies of ``clips`` and enqueue their scoring jobs exactly as telephony does."""
    from painline.workers import build_context
    from schema.contract import JobOptions
    from schema.outbox import enqueue_score_utterance

    ctx = build_context(services.settings(), services.redis, speaker=False)
    try:
        ids = persist_utterances(ctx.sessions, clips)
    finally:
        ctx.engine.dispose()
    queue = services.queue()
    for uid in ids:
        assert enqueue_score_utterance(queue, uid, JobOptions())
    return ids


def measure_worker(services: ScratchServices, clips: list[bytes], simple: bool) -> WorkerRun:
    """Steady-state CPU of a worker that has started and warmed up, against the job function alone."""
    label = "SimpleWorker" if simple else "Worker (fork per job)"
    worker = WorkerProcess(services, simple)
    try:
        startup_cpu, startup_wall = worker.wait_ready()
        worker.run_batch(_enqueue_copies(services, clips[:WARM_JOBS]))
        ids = _enqueue_copies(services, clips)
        cpu, wall = worker.run_batch(ids)
    finally:
        worker.stop()
    walls = _job_walls_ms(services, [score_job_id(uid) for uid in ids])
    direct = _direct_cpu(services, clips)
    audio = sum(len(c) for c in clips) / 8000.0
    run = WorkerRun(
        worker_class=label,
        jobs=len(ids),
        audio_s=round(audio, 2),
        startup_cpu_s=round(startup_cpu, 2),
        startup_wall_s=round(startup_wall, 2),
        total_cpu_s=round(cpu, 2),
        total_wall_s=round(wall, 2),
        job_function_cpu_s=round(direct, 2),
        overhead_fraction=round(max(cpu - direct, 0.0) / cpu, 3),
        audio_s_per_cpu_s=round(audio / cpu, 1),
        job_wall_ms_p50=round(float(np.percentile(walls, 50)), 1) if len(walls) else float("nan"),
        job_wall_ms_p95=round(float(np.percentile(walls, 95)), 1) if len(walls) else float("nan"),
    )
    print(
        f"  {label}: {run.audio_s_per_cpu_s} audio-s/CPU-s, overhead {100 * run.overhead_fraction:.1f}% "
        f"(worker {cpu:.2f} CPU-s for {len(ids)} jobs, the job function alone {direct:.2f}); start-up "
        f"{startup_cpu:.1f} CPU-s in {startup_wall:.1f} s; job wall p50 {run.job_wall_ms_p50} ms"
    )
    return run


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=120, help="utterances scored per worker class")
    parser.add_argument("--quick", action="store_true", help="20 utterances, egemaps only")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n = 20 if args.quick else args.jobs
    clips = speech_utterances(args.data_dir / "ravdess", n)
    floats = [speech for speech, _ in clips]
    mulaw = [raw for _, raw in clips]
    print(f"{len(clips)} utterances, {sum(len(c) for c in floats) / 8000:.1f} s of speech")
    print("embedders (one utterance per call, CPU time of this process):")
    embedders = []
    for name in ("egemaps",) if args.quick else EMBEDDERS:
        result = EmbedderResult.measure(name, floats)
        if result is not None:
            embedders.append(result)
            print(
                f"  {name}: {result.audio_s_per_cpu_s} audio-s/CPU-s "
                f"({result.fixed_ms} ms per call + {result.per_audio_s_ms} ms per audio second)"
            )
    print("scoring workers (shipped model, real PostgreSQL, private Redis):")
    with ScratchServices.start() as services:
        runs = [measure_worker(services, mulaw, simple) for simple in (False, True)]
    doc = {
        "generated_by": "python -m bench.worker" + (" --quick" if args.quick else f" --jobs {args.jobs}"),
        "commit": _git_commit(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "utterances": len(clips),
        "embedders": [asdict(e) for e in embedders],
        "workers": [asdict(r) for r in runs],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
