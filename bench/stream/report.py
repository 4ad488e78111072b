"""bench/results/stream.json and the page generated from it (docs/stream.md, plots in docs/img/).

Each invocation merges its sections into the JSON (an ingest sweep per server configuration, the
end-to-end result, the ceiling) so modes can be run separately, on different days, and still make one
page. The page is always rebuilt from the whole JSON, never edited by hand: the numbers in it are
the numbers in the file.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results" / "stream.json"
DOC = REPO / "docs" / "stream.md"
IMG = REPO / "docs" / "img"

TARGET_INGEST_CALLS = 300
TARGET_E2E_CALLS = 50
TARGET_SCORE_P95_S = 1.0
TARGET_FLAG_P95_S = 1.5
TARGET_CPU_MS_PER_CALL_S = 3.0

FULL_COMMAND = "python -m bench.stream --mode all"


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return out.stdout.strip() + ("+dirty" if dirty.strip() else "")


def load(path: Path = RESULTS) -> dict[str, Any]:
    if path.exists():
        return json.loads(path.read_text())
    return {}


def merge(update: dict[str, Any], path: Path = RESULTS) -> dict[str, Any]:
    """Merge ``update`` into the results file: ingest sweeps merge per configuration and per N."""
    data = load(path)
    for key, value in update.items():
        if key == "ingest":
            sweeps = data.setdefault("ingest", {})
            for label, sweep in value.items():
                old = {str(r["calls"]): r for r in sweeps.get(label, {}).get("runs", [])}
                old.update({str(r["calls"]): r for r in sweep["runs"]})
                sweep = dict(sweep, runs=sorted(old.values(), key=lambda r: r["calls"]))
                sweep["max_sustained_calls"] = max_sustained(sweep["runs"])
                sweeps[label] = sweep
        else:
            data[key] = value
    data["machine"] = machine()
    data["git_commit"] = git_commit()
    data["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return data


def max_sustained(runs: list[dict[str, Any]]) -> int:
    """The largest N sustained, counting only Ns below which every smaller N was sustained too."""
    best = 0
    for run in sorted(runs, key=lambda r: r["calls"]):
        if not run.get("sustained"):
            break
        best = run["calls"]
    return best


# ---------------------------------------------------------------------------------------------------
# plots


def plots(data: dict[str, Any], img: Path = IMG) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    made: list[str] = []
    sweeps = data.get("ingest", {})
    if not sweeps:
        return made
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, sweep in sorted(sweeps.items()):
        runs = sweep["runs"]
        n = [r["calls"] for r in runs]
        line = ax.plot(n, [r["lag_ms"]["p99"] for r in runs], marker="o", label=f"{label} p99")[0]
        ax.plot(
            n,
            [r["lag_ms"]["p50"] for r in runs],
            marker=".",
            linestyle="--",
            color=line.get_color(),
            label=f"{label} p50",
        )
        lost = [r for r in runs if not r["sustained"]]
        ax.scatter(
            [r["calls"] for r in lost], [r["lag_ms"]["p99"] for r in lost], marker="x", s=80, color="red", zorder=5
        )
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xlabel("concurrent real-time calls (N)")
    ax.set_ylabel("per-frame handling lag (ms)")
    ax.set_title("Ingest: frame handling lag vs N (x = not sustained)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "stream-latency-vs-n.png", dpi=110)
    plt.close(fig)
    made.append("img/stream-latency-vs-n.png")

    fig, ax1 = plt.subplots(figsize=(6.4, 4.0))
    for label, sweep in sorted(sweeps.items()):
        runs = sweep["runs"]
        ax1.plot(
            [r["calls"] for r in runs],
            [r["server_cpu_cores_mean"] for r in runs],
            marker="o",
            label=f"{label}: server cores busy",
        )
    gen = next(iter(sorted(sweeps.items())))[1]["runs"]
    ax1.plot(
        [r["calls"] for r in gen],
        [r["generator"]["cpu_cores_mean"] for r in gen],
        marker=".",
        linestyle=":",
        color="grey",
        label="load generator (first config)",
    )
    ax1.axhline(data.get("machine", {}).get("cpus") or 2, color="black", linewidth=0.8, linestyle="--")
    ax1.set_xlabel("concurrent real-time calls (N)")
    ax1.set_ylabel("CPU cores busy (mean over the run)")
    ax1.set_title("Ingest: CPU vs N")
    ax1.grid(True, alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(img / "stream-cpu-vs-n.png", dpi=110)
    plt.close(fig)
    made.append("img/stream-cpu-vs-n.png")
    return made


# ---------------------------------------------------------------------------------------------------
# the page


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**met**" if ok else "**missed**")


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def render(data: dict[str, Any]) -> str:
    images = plots(data)
    ceiling = data.get("ceiling") or {}
    sweeps = data.get("ingest", {})
    chosen = data.get("chosen_worker_class")
    lines = [
        "# Stream throughput and latency (bench/stream)",
        "",
        "Generated by `python -m bench.stream` from `bench/results/stream.json`; do not edit by hand.",
        "",
        f"Full run: `{FULL_COMMAND}` (about 25 minutes); smoke test: `python -m bench.stream --quick`.",
        "Modes separately: `--mode ingest --calls 100,200,300,500,800` (painline stream), "
        "`--mode ingest --worker-class gthread,gevent --calls 25,50,100,150,200,300`, "
        "`--mode e2e --calls 50,200`, `--mode ceiling`, `--mode report` (rebuild this page only).",
        "",
        "N concurrent Twilio-faithful calls (signed webhook, TwiML, signed WebSocket handshake, "
        "`connected`/`start`/`media` every 20 ms/`stop`, status callbacks; real RAVDESS speech with pauses, "
        "a different actor per call; odd-numbered calls are that actor angry or fearful at strong intensity, so "
        "about half the calls should raise a flag) are replayed in real time over loopback against the production "
        "commands, on PostgreSQL and Redis, with the load generator on the same machine: `painline-stream` is "
        "`painline stream` taking the sockets beside one `painline serve --gunicorn` process taking the webhooks "
        "(the production layout); `gthread-2p` and `gevent-2p` are gunicorn serving the sockets itself, as before. "
        "Calls start evenly over the ramp and each lasts the stated duration.",
        "",
        "*Frames lost* = frames Twilio would have discarded (a frame whose write cannot start within 1 s of "
        "its due time) + frames sent that the server never counted + frames the jitter buffer dropped as "
        "late. A run is *sustained* when nothing was lost, no frame was handled more than 1 s behind its "
        "best case, every call completed and the generator kept real time. *Lag* is the server's per-frame "
        "handling delay variation (`telephony/stream_stats.py`). CPU is every server process's user+system time "
        "over the run (stream process and webhook gunicorn; or the gunicorn master and workers), per second of "
        "call audio streamed.",
        "",
    ]
    m = data.get("machine", {})
    lines += [
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gb')} GB, Python "
        f"{m.get('python')}; commit `{data.get('git_commit')}`; updated {data.get('updated_at')}.",
        "",
    ]
    # targets
    best_label, best_n = None, 0
    for label, sweep in sweeps.items():
        if sweep["max_sustained_calls"] > best_n:
            best_label, best_n = label, sweep["max_sustained_calls"]
    e2e = data.get("e2e")
    score_p95 = (e2e or {}).get("end_of_utterance_to_score_s", {}).get("p95")
    flag_p95 = (e2e or {}).get("end_of_utterance_to_flag_s", {}).get("p95")
    lines += ["## Targets", "", "| target | measured | |", "|---|---|---|"]
    lines.append(
        f"| ingest >= {TARGET_INGEST_CALLS} concurrent calls, zero frames lost | "
        f"{best_n} ({best_label or '-'}) | {_met(best_n >= TARGET_INGEST_CALLS if sweeps else None)} |"
    )
    stream_sweep = sweeps.get("painline-stream")
    if stream_sweep and stream_sweep["max_sustained_calls"]:
        at = max(
            (r for r in stream_sweep["runs"] if r["calls"] <= stream_sweep["max_sustained_calls"]),
            key=lambda r: r["calls"],
        )
        cpu = at["server_cpu_ms_per_call_s"]
        lines.append(
            f"| server CPU <= {TARGET_CPU_MS_PER_CALL_S:g} ms per call-second (painline-stream) | {_fmt(cpu)} ms "
            f"(at {at['calls']} calls) | {_met(cpu <= TARGET_CPU_MS_PER_CALL_S)} |"
        )
    if e2e:
        lines.append(
            f"| e2e at {TARGET_E2E_CALLS} calls: p95 end of utterance -> score stored <= "
            f"{TARGET_SCORE_P95_S} s | {_fmt(score_p95)} s (at {e2e['calls']} calls) | "
            f"{_met(None if score_p95 is None else score_p95 <= TARGET_SCORE_P95_S)} |"
        )
        lines.append(
            f"| e2e at {TARGET_E2E_CALLS} calls: p95 end of utterance -> flag published <= "
            f"{TARGET_FLAG_P95_S} s | {_fmt(flag_p95)} s ({e2e['flags_received']} flags) | "
            f"{_met(None if flag_p95 is None else flag_p95 <= TARGET_FLAG_P95_S)} |"
        )
    if ceiling and best_n:
        eff = best_n / ceiling["ceiling_calls"]
        lines.append(
            f"| efficiency = sustained calls / ceiling calls | {best_n} / {ceiling['ceiling_calls']:.0f} "
            f"= {eff:.0%} | |"
        )
    lines.append("")
    if chosen:
        lines += [
            f"Chosen production worker class: **{chosen['worker_class']}** with "
            f"{chosen['web_processes']} web processes. {chosen.get('why', '')}",
            "",
        ]
    if ceiling:
        lines += [
            "## Ceiling",
            "",
            f"The bare per-frame work ({ceiling['work']}) in a tight loop over {ceiling['frames']} frames of real "
            f"call audio: **{ceiling['per_frame_cpu_us']} µs CPU per frame**, so "
            f"{ceiling['calls_per_core']:.0f} real-time calls per core and {ceiling['ceiling_calls']:.0f} on "
            f"this machine's {ceiling['cores']} cores (no socket, thread, database, queue or load generator).",
            "",
        ]
    floor = data.get("floor")
    if floor:
        per_loop = ", ".join(f"{loop} {r['us_per_frame']} µs" for loop, r in floor["loops"].items())
        lines += [
            "## Floor",
            "",
            f"A server that only receives, with `painline stream`'s library and options ({floor['library']}, no "
            f"compression, no pings), and {floor['calls']} paced sockets each sending one media message every "
            f"20 ms: CPU per frame received {per_loop} (`bench/stream/floor.py`). This is what the event loop "
            "and the WebSocket library cost before any of painline's work.",
            "",
        ]
    if sweeps:
        lines += ["## Ingest (no RQ worker running)", ""]
        lines += [
            f"![latency vs N]({images[0]})" if images else "",
            "",
            f"![CPU vs N]({images[1]})" if len(images) > 1 else "",
            "",
        ]
        for label, sweep in sorted(sweeps.items()):
            lines += [
                f"### {label}: largest N sustained = {sweep['max_sustained_calls']}",
                "",
                "| N | frames sent | lost | >1 s late | lag p50 / p99 / max (ms) | server CPU ms per call-s | "
                "server cores | generator late p99 (ms) | gen cores | utterances saved | sustained |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for r in sweep["runs"]:
                g = r["generator"]
                lines.append(
                    f"| {r['calls']} | {r['frames_sent']} | {r['frames_lost']} | {r['frames_handled_over_1s_late']} | "
                    f"{_fmt(r['lag_ms']['p50'])} / {_fmt(r['lag_ms']['p99'])} / {_fmt(r['lag_ms']['max'], 0)} | "
                    f"{_fmt(r['server_cpu_ms_per_call_s'])} | {_fmt(r['server_cpu_cores_mean'])} | "
                    f"{_fmt(g['unobstructed_send_late_ms']['p99'])}{' (limited)' if g['limited'] else ''} | "
                    f"{_fmt(g['cpu_cores_mean'])} | {r['utterances_saved']} | {'yes' if r['sustained'] else 'no'} |"
                )
            first = sweep["runs"][0] if sweep["runs"] else {}
            lines += [
                "",
                f"{first.get('duration_s')} s calls, {first.get('ramp_s')} s ramp. "
                "Lost frames broken down per run in the JSON (`lost_breakdown`).",
                "",
            ]
    e2e_runs = data.get("e2e_runs") or ({"": e2e} if e2e else {})
    for run in e2e_runs.values():
        lines += _e2e_section(run)
    notes = data.get("notes")
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


def _e2e_section(run: dict[str, Any]) -> list[str]:
    """The page's section for one end-to-end run."""
    lines: list[str] = []
    s, r, f = (
        run["end_of_utterance_to_score_s"],
        run["utterance_row_to_score_s"],
        run["end_of_utterance_to_flag_s"],
    )
    lines += [
        f"## End to end ({run['calls']} calls, {run['rq_workers']} RQ workers on the same machine)",
        "",
        f"Server {run['server']}, workers: `painline worker` ({run['rq_worker_kind']}, default model and "
        f"embedder, speaker verification {'on' if run['speaker_verification'] else 'off'}); "
        f"{run['duration_s']} s calls, {run['ramp_s']} s ramp.",
        "",
        "| latency (s) | n | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|---|",
        f"| end of utterance (last frame sent) -> score stored | {s['n']} | {_fmt(s['p50'])} | {_fmt(s['p95'])} | "
        f"{_fmt(s['p99'])} | {_fmt(s['max'])} |",
        f"| utterance row created (VAD closed it) -> score stored | {r['n']} | {_fmt(r['p50'])} | "
        f"{_fmt(r['p95'])} | {_fmt(r['p99'])} | {_fmt(r['max'])} |",
        f"| end of utterance -> flag received on `painline:flags` | {f['n']} | {_fmt(f['p50'])} | "
        f"{_fmt(f['p95'])} | {_fmt(f['p99'])} | {_fmt(f['max'])} |",
        "",
        f"Utterances detected {run['utterances_detected']}, scored {run['utterances_scored']} (queue drained "
        f"{run['drain_s_after_last_call']} s after the last call); frames lost {run['frames_lost']}; "
        f"server lag p99 {run['lag_ms']['p99']} ms; worker CPU {run['worker_cpu_s_per_audio_s']} s per "
        f"second of utterance audio; server CPU {run['server_cpu_ms_per_call_s']} ms per call-second.",
        "",
        "The end of an utterance is the wall-clock time the generator sent its last frame; the VAD closes "
        "an utterance only after 400 ms of unvoiced audio (hangover), which the first row includes and the "
        "second does not. All times are taken on one machine's clock.",
        "",
    ]
    return lines


def write_doc(data: dict[str, Any], path: Path = DOC) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(data))
    return path
