"""The quick soak: ``python -m bench.soak --calls 50`` as CI runs it (the full run is 1,000 calls).

Whole-worker kills are left out of the quick variant: recovering their job waits for RQ's ~90 s
heartbeat lease (tests/faults/test_worker_kill.py covers that case; the full soak includes it).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.soak.services import REPO
from tests.e2e_fixtures import corpus_available, data_dir, missing_corpus_reason
from tests.reliability import ReliabilityRecorder


@pytest.mark.slow
@pytest.mark.corpus
@pytest.mark.skipif(not corpus_available("ravdess"), reason=missing_corpus_reason("ravdess"))
def test_quick_soak(tmp_path: Path, reliability: ReliabilityRecorder) -> None:
    out = tmp_path / "soak.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.soak",
            "--calls",
            "50",
            "--concurrency",
            "4",
            "--speed",
            "2",
            "--faults",
            "kill-horse,redis-restart,postgres-outage",
            "--fault-interval",
            "3",
            "6",
            "--worker-class",
            "fork",
            "--drain-timeout",
            "90",
            "--data-dir",
            str(data_dir()),
            "--out",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.exists(), result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    u = report["utterances"]
    reliability.record_outcome(
        "soak-quick-50-calls",
        "soak",
        "50 RAVDESS calls through gunicorn, 2 RQ workers, private Redis and PostgreSQL with work-horse kills, "
        "Redis restarts, PostgreSQL outages, dropped sockets and malformed messages; checked every saved "
        "utterance scored exactly once and every call finalised",
        bool(report["passed"]),
        lost=u["lost_after_save"] + u["not_saved_database_down"],
        detected=u["detected"],
        scored=u["scored"],
        not_saved_database_down=u["not_saved_database_down"],
        faults=report["faults"],
        unexpected_exits_restarted=len(report["unexpected_exits"]),
    )
    assert result.returncode == 0 and report["passed"], json.dumps(report, indent=1)[:4000]
    assert u["detected"] >= 20 and u["duplicate_scores"] == 0
    assert len({f for f in report["faults"] if not f.endswith(("-idle", "-not-injected"))}) >= 2
