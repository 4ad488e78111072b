"""Soak: many short calls through real painline processes while faults are injected at random.

    python -m bench.soak                 # 1,000 calls -> bench/results/soak.json
    python -m bench.soak --calls 50      # the quick variant (tests/faults/test_soak.py runs it)

What runs, all real and all private to this run (other people's tests use the shared 5432 / 6379):
a Redis server, a PostgreSQL cluster (``initdb``), ``painline serve --gunicorn``, ``--workers``
``painline worker`` processes (forking rq.Worker with the scheduler) and ``painline sweep --every 2``.
Calls are 3-6 s of RAVDESS speech (``../shared/data``, or ``PAINLINE_DATA_DIR``), several at once,
played faster than real time through :func:`painline.replay.replay_call`.

Faults, at random intervals while the calls run:

- ``kill-horse``: SIGKILL of a forking worker's work-horse (whatever job it runs fails; RQ retries it);
- ``kill-worker``: SIGKILL of a whole worker (worker, scheduler, work-horse) and a replacement started;
  its job is recovered by the sweep once RQ's heartbeat lease ends (~90 s), so the full run only;
- ``redis-restart``: Redis stopped (nothing persisted: every queued job lost) and started 1-3 s later;
- ``postgres-outage``: PostgreSQL stopped for 2-6 s;

and per call: ~5% of sockets dropped halfway without ``stop``, ~5% sent a malformed message halfway.

A process that dies on its own (not one the soak killed) is restarted, as docker-compose's
``restart: unless-stopped`` does, and listed under ``unexpected_exits`` in the report: with rq 3's
SimpleWorker, for instance, a Redis restart while a job finishes ends the worker process.

At the end the sweep and the workers are given time to drain; then the database must show every
utterance that was saved scored exactly once (one Score row, status scored, audio deleted) and
every call that streamed finalised. An utterance that ends while PostgreSQL is down waits in the
stream's memory and is saved when the database answers (``telephony.session``); any that were
given up (the database still down a minute after the stream ended, or the per-call cap reached) are
counted from the server log and reported, not hidden.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from tempfile import mkdtemp

from redis import Redis

from bench.soak.calls import CallResult, compose_call, faulty_call, load_clip_pool, normal_call
from bench.soak.services import (
    REPO,
    PainlineProcess,
    PrivatePostgres,
    PrivateRedis,
    free_port,
    horse_pids,
    outcome_counts,
    painline_environment,
    start_worker,
    wait_until,
)

AUTH_TOKEN = "soak-auth-token-0123456789abcdef"
QUEUE = "painline"
ALL_FAULTS = ("kill-horse", "kill-worker", "redis-restart", "postgres-outage")
DEFAULT_OUT = REPO / "bench" / "results" / "soak.json"


def default_data_dir() -> Path:
    import os

    env = os.environ.get("PAINLINE_DATA_DIR")
    return Path(env).expanduser() if env else (REPO / ".." / "shared" / "data").resolve()


class Soak:
    """The services, the processes and the fault log of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(mkdtemp(prefix="painline-soak-"))
        self.redis = PrivateRedis(free_port(), self.work / "redis")
        self.postgres = PrivatePostgres(self.work, free_port())
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers: list[PainlineProcess] = []
        self.others: list[PainlineProcess] = []
        self.faults: Counter[str] = Counter()
        self.fault_log: list[dict[str, object]] = []
        self.lock = threading.Lock()
        self.stop_faults = threading.Event()
        self.stop_supervisor = threading.Event()
        self.killed: set[int] = set()  # pids we killed on purpose (already replaced)
        self.exits: list[dict[str, object]] = []  # processes that died on their own (restarted)

    # -- set-up ------------------------------------------------------------------------------------

    def env(self) -> dict[str, str]:
        return painline_environment(
            database_url=self.postgres.url,
            redis_url=self.redis.url,
            queue_name=QUEUE,
            model_path=self.args.model,
            var_dir=self.work / "var",
            PAINLINE_PUBLIC_URL=self.url,
            TWILIO_AUTH_TOKEN=AUTH_TOKEN,
            PAINLINE_HMAC_KEY="soak-hmac-key",
            PAINLINE_SECRET_KEY="soak-secret",
            PAINLINE_NEXT_ENQUEUE="nurses",
            PAINLINE_LOG_LEVEL="INFO",
        )

    def start(self) -> None:
        self.redis.start()
        self.postgres.init()
        self.postgres.start()
        self.postgres.new_database()
        env = self.env()
        server = PainlineProcess(
            ["serve", "--gunicorn", "--port", str(self.port), "--workers", "2", "--threads", "32"],
            env,
            self.work / "server.log",
        ).start()
        # calls here last seconds: a call still "streaming" after 20 s without activity lost its stream end
        sweeper = PainlineProcess(
            ["sweep", "--every", "2", "--older-than", "5", "--stale-stream-after", "20"], env, self.work / "sweep.log"
        ).start()
        self.others = [server, sweeper]
        for _ in range(self.args.workers):
            self.add_worker()
        wait_until(self._healthy, 90, interval_s=0.3, message="server health")
        connection = Redis.from_url(self.redis.url)
        try:
            from rq import Queue, Worker

            queue = Queue(QUEUE, connection=connection)
            wait_until(
                lambda: len(Worker.all(queue=queue)) >= self.args.workers,
                120,
                interval_s=0.3,
                message="workers registered",
            )
        finally:
            connection.close()

    def _healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def add_worker(self) -> None:
        """Workers alternate between the forking rq.Worker and painline's default class (SimpleWorker),
        unless ``--worker-class`` says otherwise."""
        n = len(self.workers) + 1
        mode = self.args.worker_class
        fork = mode == "fork" or (mode == "mixed" and n % 2 == 1)
        self.workers.append(start_worker(self.env(), self.work / f"worker-{n}.log", name=f"soak-{n}", fork=fork))

    def close(self) -> None:
        for process in self.workers + self.others:
            process.stop()
        self.redis.kill()
        self.postgres.destroy()

    # -- supervision -------------------------------------------------------------------------------

    def supervise(self) -> None:
        """Restart any process that died on its own, as docker-compose's ``restart: unless-stopped`` does
        in production, and record it: an unexpected exit is a finding even when the restart hides it."""
        while not self.stop_supervisor.wait(1.0):
            with self.lock:
                for i, process in enumerate(list(self.others)):
                    if not process.alive:
                        self._record_exit(process)
                        self.others[i] = PainlineProcess(process.args, process.env, process.log_path).start()
                for process in list(self.workers):
                    if not process.alive and process.pid not in self.killed:
                        self.killed.add(process.pid)
                        self._record_exit(process)
                        self.add_worker()

    def _record_exit(self, process: PainlineProcess) -> None:
        code = process.process.returncode if process.process is not None else None
        last = [line for line in process.log_text().splitlines() if line.strip()][-1:] or [""]
        self.exits.append(
            {
                "t": round(time.monotonic() - self.t0, 2),
                "process": " ".join(process.args[:1]),
                "log": process.log_path.name,
                "returncode": code,
                "last_line": last[0][-300:],
            }
        )

    # -- faults ------------------------------------------------------------------------------------

    def note(self, fault: str, **detail: object) -> None:
        with self.lock:
            self.faults[fault] += 1
            self.fault_log.append({"t": round(time.monotonic() - self.t0, 2), "fault": fault, **detail})

    def inject(self) -> None:
        """Faults at random intervals until the calls are done: each kind once per round, in random order."""
        faults = [f for f in ALL_FAULTS if f in self.args.faults]
        round_: list[str] = []
        while faults and not self.stop_faults.wait(self.rng.uniform(*self.args.fault_interval)):
            if not round_:
                round_ = self.rng.sample(faults, len(faults))
            fault = round_.pop()
            try:
                getattr(self, "fault_" + fault.replace("-", "_"))()
            except Exception as exc:  # a fault that could not be injected is logged, not fatal
                self.note(fault + "-not-injected", error=repr(exc)[:200])

    def live_workers(self) -> list[PainlineProcess]:
        return [w for w in self.workers if w.alive]

    def fault_kill_horse(self) -> None:
        for process in self.rng.sample(self.live_workers(), len(self.live_workers())):
            horses = horse_pids(process, self.postgres.port)
            if horses:
                import os

                os.kill(horses[0], signal.SIGKILL)
                self.note("kill-horse", worker=process.args[-1])
                return
        self.note("kill-horse-idle")  # nothing running at that instant

    def fault_kill_worker(self) -> None:
        live = self.live_workers()
        if not live:
            return
        victim = self.rng.choice(live)
        with self.lock:
            self.killed.add(victim.pid)
            victim.kill_group(signal.SIGKILL)
            self.add_worker()
        self.note("kill-worker", worker=victim.args[-1])

    def fault_redis_restart(self) -> None:
        down = self.rng.uniform(1.0, 3.0)
        self.redis.restart(down_s=down)
        self.note("redis-restart", down_s=round(down, 2))

    def fault_postgres_outage(self) -> None:
        down = self.rng.uniform(2.0, 6.0)
        self.postgres.stop(mode="fast")
        time.sleep(down)
        self.postgres.start()
        self.note("postgres-outage", down_s=round(down, 2))

    # -- calls -------------------------------------------------------------------------------------

    def one_call(self, index: int, pool: list, seed: int) -> CallResult:
        rng = random.Random(seed)
        mulaw = compose_call(pool, rng)
        roll = rng.random()
        started = time.monotonic()
        try:
            if roll < self.args.drop_rate:
                result = faulty_call(mulaw, self.url, AUTH_TOKEN, "drop", self.args.speed)
            elif roll < self.args.drop_rate + self.args.malformed_rate:
                result = faulty_call(mulaw, self.url, AUTH_TOKEN, "malformed", self.args.speed)
            else:
                result = normal_call(mulaw, self.url, AUTH_TOKEN, self.args.speed)
        except Exception as exc:  # one call's surprise must not end the run: it is reported
            result = CallResult("unknown", "error", repr(exc)[:200])
        if result.outcome != "streamed":
            # the caller stays on the line with the hotline even when painline could not take the call:
            # without this, calls during an outage would take no time and the outage would eat the run
            remaining = len(mulaw) / 8000 / self.args.speed - (time.monotonic() - started)
            time.sleep(max(0.0, remaining))
        return result

    def run(self) -> dict[str, object]:
        started_at = datetime.now(UTC)
        pool = load_clip_pool(self.args.data_dir, self.args.pool, self.rng)
        self.start()
        self.t0 = time.monotonic()
        injector = threading.Thread(target=self.inject, name="faults", daemon=True)
        injector.start()
        supervisor = threading.Thread(target=self.supervise, name="supervisor", daemon=True)
        supervisor.start()
        seeds = [self.rng.randrange(1 << 30) for _ in range(self.args.calls)]
        with ThreadPoolExecutor(self.args.concurrency) as pool_exec:
            results = list(pool_exec.map(lambda i: self.one_call(i, pool, seeds[i]), range(self.args.calls)))
        calls_s = time.monotonic() - self.t0
        self.stop_faults.set()
        injector.join(60)
        # make sure every service is up for the drain, whatever the last fault left behind
        self.redis.start()
        self.postgres.start()
        drained = self.drain()
        self.stop_supervisor.set()
        supervisor.join(30)
        outcome = outcome_counts(self.postgres.url)
        server_log = self.others[0].log_text()
        not_saved = sum(int(n) for n in re.findall(r"; (\d+) utterances not saved", server_log))
        not_saved += server_log.count("oldest unsaved utterance dropped")
        kinds = Counter(f"{r.kind}:{r.outcome}" for r in results)
        errors = [asdict(r) for r in results if r.outcome == "error"][:20]
        ok = outcome.exactly_once and outcome.calls_finalised == outcome.calls and drained and not_saved == 0
        return {
            "description": "painline soak: short RAVDESS calls through real gunicorn, RQ workers, Redis and "
            "PostgreSQL with random faults (bench/soak)",
            "started_at": started_at.isoformat(timespec="seconds"),
            "passed": ok,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(self.args).items()},
            "calls": {
                "requested": self.args.calls,
                "by_kind_and_outcome": dict(kinds),
                "errors_sample": errors,
                "wall_s": round(calls_s, 1),
            },
            "faults": dict(self.faults),
            "fault_log": self.fault_log,
            "unexpected_exits": self.exits,
            "utterances": {
                "detected": outcome.detected,
                "scored": outcome.scored,
                "score_rows": outcome.score_rows,
                "duplicate_scores": outcome.duplicate_scores,
                "pending": outcome.pending,
                "failed": outcome.failed,
                "audio_left_on_scored": outcome.audio_left_on_scored,
                "lost_after_save": outcome.lost,
                "not_saved_database_down": not_saved,
            },
            "calls_in_database": {"total": outcome.calls, "finalised": outcome.calls_finalised},
            "drained": drained,
            "exactly_once": outcome.exactly_once,
        }

    def drain(self) -> bool:
        """Wait until every saved utterance is scored and every call finalised (sweep + workers)."""

        def done() -> bool:
            o = outcome_counts(self.postgres.url)
            return o.pending == 0 and o.scored == o.detected and o.calls_finalised == o.calls

        try:
            wait_until(done, self.args.drain_timeout, interval_s=1.0, message="drain")
        except TimeoutError:
            return False
        time.sleep(3.0)  # a couple more sweeps: nothing may run a second time
        return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from painline.config import Settings

    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--calls", type=int, default=1000)
    p.add_argument("--concurrency", type=int, default=8, help="calls streaming at once")
    p.add_argument("--speed", type=float, default=4.0, help="times faster than real time")
    p.add_argument("--workers", type=int, default=2, help="painline worker processes")
    p.add_argument(
        "--worker-class",
        choices=("mixed", "fork", "default"),
        default="mixed",
        help="forking rq.Worker, painline's default class, or alternating (default)",
    )
    p.add_argument(
        "--faults", default=",".join(ALL_FAULTS), help=f"comma-separated, from {', '.join(ALL_FAULTS)} (empty: none)"
    )
    p.add_argument("--fault-interval", type=float, nargs=2, default=(4.0, 12.0), metavar=("MIN_S", "MAX_S"))
    p.add_argument("--drop-rate", type=float, default=0.05, help="share of sockets dropped without stop")
    p.add_argument("--malformed-rate", type=float, default=0.05, help="share of streams sent a bad message")
    p.add_argument("--pool", type=int, default=120, help="distinct RAVDESS clips to draw calls from")
    p.add_argument("--model", type=Path, default=Settings().model_path)
    p.add_argument("--data-dir", type=Path, default=default_data_dir())
    p.add_argument("--drain-timeout", type=float, default=300.0)
    p.add_argument("--seed", type=int, default=6)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    args.faults = tuple(f for f in args.faults.split(",") if f)
    unknown = set(args.faults) - set(ALL_FAULTS)
    if unknown:
        p.error(f"unknown faults: {', '.join(sorted(unknown))}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    soak = Soak(args)
    try:
        report = soak.run()
    finally:
        logs = soak.work
        soak.close()
    report["logs"] = str(logs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    u = report["utterances"]
    assert isinstance(u, dict)
    print(
        f"soak: {args.calls} calls, faults {report['faults']}; utterances detected {u['detected']}, "
        f"scored {u['scored']} (score rows {u['score_rows']}, duplicates {u['duplicate_scores']}), "
        f"not saved while the database was down {u['not_saved_database_down']}; "
        f"{'PASSED' if report['passed'] else 'FAILED'} -> {args.out}"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
