"""Run each atheris harness in fuzz/ for a bounded number of inputs; it must exit 0 (nothing found).

A subprocess, because libFuzzer owns the process it runs in (it installs signal handlers and calls
``exit``). The quick runs keep the harnesses from rotting in every test run; the ``slow`` runs give
the fuzzer enough inputs to get past the shallow branches. The webhook harness runs on a PostgreSQL
database of its own (text columns there refuse NUL, which SQLite accepts).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.db_fixtures import temporary_postgres_database
from tests.reliability import ReliabilityRecorder

REPO = Path(__file__).resolve().parents[2]


def run_harness(
    name: str, runs: int, env: dict[str, str] | None = None, timeout_s: float = 300
) -> tuple[int, int, str]:
    """(exit code, inputs run, output tail) of ``python fuzz/<name>.py -atheris_runs=<runs>``."""
    command = [
        sys.executable,
        str(REPO / "fuzz" / f"{name}.py"),
        f"-atheris_runs={runs}",
        "-max_len=4096",
        "-len_control=0",
        "-seed=1",
    ]
    completed = subprocess.run(
        command,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    output = completed.stdout + completed.stderr
    done = re.search(r"Done (\d+) in", output)
    return completed.returncode, int(done.group(1)) if done else 0, output[-3000:]


def _record(reliability: ReliabilityRecorder, name: str, code: int, ran: int, target: str) -> None:
    reliability.record_outcome(
        f"bad-input-fuzz-{name}",
        "bad input",
        f"atheris (coverage-guided) on {target}: every input ends in a message, a documented close code or a "
        "clean HTTP status; the harness exits 0",
        survived=code == 0,
        runs=ran,
    )


@pytest.mark.parametrize(
    "runs", [pytest.param(2_000, id="quick"), pytest.param(20_000, id="20k", marks=pytest.mark.slow)]
)
def test_stream_messages_harness(runs: int, reliability: ReliabilityRecorder) -> None:
    code, ran, tail = run_harness("fuzz_stream_messages", runs)
    _record(reliability, "stream-messages", code, ran, "the Media Stream parser and a streaming StreamSession")
    assert code == 0, tail
    assert ran == runs


@pytest.mark.parametrize("runs", [pytest.param(300, id="quick"), pytest.param(5_000, id="5k", marks=pytest.mark.slow)])
def test_webhooks_harness(runs: int, reliability: ReliabilityRecorder) -> None:
    with temporary_postgres_database() as url:
        code, ran, tail = run_harness("fuzz_webhooks", runs, {"PAINLINE_FUZZ_DATABASE_URL": url})
    _record(reliability, "webhooks", code, ran, "signed /twilio/voice and /twilio/stream-status requests")
    assert code == 0, tail
    assert ran == runs
