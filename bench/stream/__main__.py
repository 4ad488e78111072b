"""``python -m bench.stream``: the stream throughput and latency benchmark (GitHub issue 5).

::

    python -m bench.stream --quick                       # smoke test, under two minutes
    python -m bench.stream --mode ingest --calls 100,200,300,500,800     # painline stream (production)
    python -m bench.stream --mode ingest --worker-class gthread,gevent --calls 25,50,100,150,200,300
    python -m bench.stream --mode e2e --calls 50,200 --rq-workers 3
    python -m bench.stream --mode ceiling
    python -m bench.stream --mode floor                  # event loop + websockets alone, per frame
    python -m bench.stream --mode all                    # everything, then the page
    python -m bench.stream --mode report                 # rebuild docs/stream.md from the JSON

Results are merged into ``bench/results/stream.json`` and ``docs/stream.md`` is regenerated after
every mode (``--no-write`` prints only). Needs PostgreSQL and Redis (``--database-url``,
``--redis-url``) and the RAVDESS corpus under ``PAINLINE_DATA_DIR`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.stream import report
from bench.stream.calls import corpus_available, ravdess_dir
from bench.stream.ceiling import measure as measure_ceiling
from bench.stream.floor import measure as measure_floor
from bench.stream.runs import RunPlan, auto_generator_processes, e2e_run, ingest_run
from bench.stream.server import ASYNCIO, DEFAULT_PG_URL, DEFAULT_REDIS_URL, ServerConfig, prepare_database

LOG_DIR = Path(__file__).resolve().parents[2] / "var" / "bench-stream" / "logs"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def server_config(worker_class: str, processes: int, calls: int) -> ServerConfig:
    """Capacity sized above the calls one process could be handed (accept is not balanced).

    gevent's ``worker_connections`` also counts the webhook POSTs' keep-alive connections, which
    wait in a greenlet each: sized at calls + 32 it queued new stream sockets unread behind them
    (seen as megabytes in the server sockets' receive queues), so it gets gunicorn's default of
    1000 or three per call. A gthread thread costs real memory, so there it stays calls + 32.
    The asyncio layout is one ``painline stream`` process beside one webhook gunicorn process.
    """
    if worker_class == ASYNCIO:
        return ServerConfig(ASYNCIO, 1, 0)
    if worker_class == "gevent":
        return ServerConfig(worker_class, processes, max(1000, 3 * calls))
    return ServerConfig(worker_class, processes, calls + 32)


def _summary(run: dict[str, Any]) -> str:
    g = run["generator"]
    return (
        f"{run['server']:>12} N={run['calls']:<4} lost={run['frames_lost']:<6} "
        f">1s={run['frames_handled_over_1s_late']:<6} lag p50/p99={run['lag_ms']['p50']}/{run['lag_ms']['p99']} ms "
        f"cpu={run['server_cpu_ms_per_call_s']} ms/call-s ({run['server_cpu_cores_mean']} cores) "
        f"gen late p99={g['unobstructed_send_late_ms']['p99']} ms{' LIMITED' if g['limited'] else ''} "
        f"errors={run['call_errors']} sustained={run['sustained']}"
    )


def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    sweeps: dict[str, Any] = {}
    for worker_class in args.worker_class.split(","):
        for processes in _ints(args.web_processes):
            runs = []
            for n in args.calls_list:
                plan = RunPlan(n, args.duration, args.ramp, args.generator_processes or auto_generator_processes(n))
                run = ingest_run(
                    server_config(worker_class, processes, n),
                    plan,
                    database_url=args.database_url,
                    redis_url=args.redis_url,
                    log_dir=LOG_DIR,
                )
                print(_summary(run), flush=True)
                runs.append(run)
                if not run["sustained"] and args.stop_at_first_loss:
                    break
            label = server_config(worker_class, processes, 0).label
            sweeps[label] = {"worker_class": worker_class, "web_processes": processes, "runs": runs}
    return {"ingest": sweeps}


def run_e2e(args: argparse.Namespace) -> dict[str, Any]:
    """One end-to-end run per N; the first N's is also kept as ``e2e`` (the targets are set at 50)."""
    runs = {str(n): _run_e2e(args, n) for n in args.calls_list}
    return {"e2e": runs[str(args.calls_list[0])], "e2e_runs": runs}


def _run_e2e(args: argparse.Namespace, n: int) -> dict[str, Any]:
    plan = RunPlan(n, args.duration, args.ramp, args.generator_processes or auto_generator_processes(n))
    worker_class = args.worker_class.split(",")[0]
    processes = _ints(args.web_processes)[0]
    run = e2e_run(
        server_config(worker_class, processes, n),
        plan,
        workers=args.rq_workers,
        database_url=args.database_url,
        redis_url=args.redis_url,
        log_dir=LOG_DIR,
        simple_workers=args.simple_workers,
        speaker=not args.no_speaker,
    )
    print(_summary(run), flush=True)
    for key in ("end_of_utterance_to_score_s", "utterance_row_to_score_s", "end_of_utterance_to_flag_s"):
        print(f"  {key}: {run[key]}", flush=True)
    print(
        f"  utterances detected {run['utterances_detected']} scored {run['utterances_scored']}; worker CPU "
        f"{run['worker_cpu_s_per_audio_s']} s per audio s",
        flush=True,
    )
    return run


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=("ingest", "e2e", "ceiling", "floor", "all", "report"), default="ingest")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: ingest 10 and 30 calls of 10 s, e2e 4 calls, short ceiling; "
        "results go to var/bench-stream/quick.json, not to the committed files",
    )
    p.add_argument("--calls", default="100,200,300,500,800", help="N values, comma-separated")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of audio per call (default 60)")
    p.add_argument("--ramp", type=float, default=10.0, help="calls start evenly over this many seconds")
    p.add_argument(
        "--worker-class",
        default=ASYNCIO,
        help="server layouts to measure: asyncio (painline stream, production), gthread, gevent "
        "(gunicorn serving the socket too); e2e and --quick: the first",
    )
    p.add_argument("--web-processes", default="2", help="gunicorn worker processes, comma-separated")
    p.add_argument("--generator-processes", type=int, default=0, help="0: one per 150 calls")
    p.add_argument(
        "--rq-workers",
        type=int,
        default=3,
        help="e2e: painline worker processes (3 on 2 cores: a burst of utterances is scored in parallel)",
    )
    p.add_argument("--simple-workers", action="store_true", help="e2e: painline worker --simple (no fork per job)")
    p.add_argument("--no-speaker", action="store_true", help="e2e: workers without speaker verification")
    p.add_argument("--stop-at-first-loss", action="store_true", help="ingest: stop a sweep at the first failure")
    p.add_argument("--database-url", default=DEFAULT_PG_URL)
    p.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    p.add_argument("--results", type=Path, default=report.RESULTS)
    p.add_argument("--no-write", action="store_true", help="print only; leave the JSON and the page alone")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.mode == "report":
        data = report.load(args.results)
        print(report.write_doc(data))
        return 0
    if not corpus_available():
        print(f"bench.stream: the RAVDESS corpus is not at {ravdess_dir()} (set PAINLINE_DATA_DIR)", file=sys.stderr)
        return 1
    modes = ["ceiling", "floor", "ingest", "e2e"] if args.mode == "all" or args.quick else [args.mode]
    if args.quick:
        args.duration, args.ramp = 10.0, 2.0
        args.results = LOG_DIR.parent / "quick.json"
    args.calls_list = _ints(args.calls)
    update: dict[str, Any] = {}
    if "ceiling" in modes:
        update["ceiling"] = measure_ceiling(*((2, 20.0, 1) if args.quick else (4, 60.0, 3)))
        print("ceiling:", json.dumps(update["ceiling"]), flush=True)
    if "floor" in modes:
        update["floor"] = measure_floor(*((30, 5.0) if args.quick else (150, 15.0)))
        print("floor:", json.dumps(update["floor"]), flush=True)
    if "ingest" in modes or "e2e" in modes:
        prepare_database(args.database_url)
    if "ingest" in modes:
        if args.quick:
            args.calls_list, args.worker_class = [10, 30], args.worker_class.split(",")[0]
        update.update(run_ingest(args))
    if "e2e" in modes:
        if args.quick:
            args.calls_list = [4]
        elif args.mode == "all":
            args.calls_list = [50, 200]
        update.update(run_e2e(args))
    if args.no_write:
        return 0
    data = report.merge(update, args.results)
    if not args.quick:
        print(report.write_doc(data))
    else:
        print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
