"""A worker stops when asked and only then: SIGTERM ends it, a Redis restart does not.

``painline.workers.run_worker`` starts a fresh RQ worker when RQ's quits because Redis went away;
it must still honour a warm shutdown, whether the worker is idle (RQ raises internally and sets no
stop flag) or busy.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.helpers import FaultStack


@pytest.mark.parametrize("fork", [False, True], ids=["simple", "fork"])
def test_sigterm_stops_an_idle_worker(fault_stack: FaultStack, fork: bool) -> None:
    process = fault_stack.worker("w", fork=fork)
    assert process.process is not None
    # RQ registers the worker a moment before it installs its signal handlers; give it that
    # moment so the warm-shutdown path is the one exercised (a SIGTERM before it simply kills)
    time.sleep(2.0)
    process.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 15.0
    while process.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert process.process.poll() in (0, -signal.SIGTERM), "the worker did not stop on SIGTERM"
    assert "starting a new RQ worker" not in (fault_stack.tmp_path / "w.log").read_text()
