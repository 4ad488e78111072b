"""bench/stream smoke test: the load generator against a real gunicorn server, two short calls.

Proves the whole measuring chain works (production gunicorn command, signed webhook and handshake,
paced media, the server's stats lines parsed back and matched to the generator's calls) without
measuring anything: on a shared test machine only "nothing was lost" is asserted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.stream import report
from bench.stream.calls import corpus_available, encode_call, ravdess_dir
from bench.stream.runs import RunPlan, ingest_run
from bench.stream.server import ASYNCIO, ServerConfig, prepare_database
from tests.app_fixtures import app_redis_url

pytestmark = pytest.mark.skipif(not corpus_available(), reason=f"RAVDESS not found at {ravdess_dir()}")


def test_call_messages_are_numbered_like_the_replay_tool() -> None:
    call = encode_call(0, 1.0)
    assert len(call.media) == 50
    assert '"sequenceNumber": "2"' in call.media[0] and '"chunk": "1"' in call.media[0]
    assert '"sequenceNumber": "1"' in call.start({"token": "t"})
    assert '"sequenceNumber": "52"' in call.stop


@pytest.mark.slow
@pytest.mark.parametrize(
    "layout", [ServerConfig("gthread", 1, 8), ServerConfig(ASYNCIO, 1, 0)], ids=["gunicorn", "painline-stream"]
)
def test_two_calls_through_each_layout_lose_nothing(tmp_path: Path, pg_url: str, layout: ServerConfig) -> None:
    """gunicorn serving the sockets, and painline stream beside a webhook gunicorn (the production layout)."""
    bench_url = pg_url  # the session's temporary database: migrated, emptied, its ids raised
    prepare_database(bench_url)
    plan = RunPlan(calls=2, duration_s=3.0, ramp_s=0.5, generator_processes=1)
    run = ingest_run(layout, plan, database_url=bench_url, redis_url=app_redis_url(), log_dir=tmp_path)
    assert run["stats_lines"] == 2  # both streams' stats lines were found in the server's log and parsed
    assert run["frames_sent"] == run["frames_received"] == 2 * 150
    assert run["frames_lost"] == 0 and run["call_errors"] == 0
    assert run["close_codes"] == ["1000"]
    assert run["lag_histogram"]["counts"] and sum(run["lag_histogram"]["counts"]) == 300
    assert len(run["server_process_cores"]) >= 2  # every server process is measured on its own
    assert report.max_sustained([{"calls": 2, "sustained": True}, {"calls": 4, "sustained": False}]) == 2
