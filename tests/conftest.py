"""Shared pytest set-up: only the fixtures tests of more than one package use.

The tests are grouped by the package they test (``tests/analysis``, ``tests/telephony``,
``tests/worker``, ``tests/dashboard``, ``tests/schema``, ``tests/painline``, ``tests/bench``) plus the
cross-cutting ``tests/badinput``, ``tests/browser`` and ``tests/faults``. A fixture one folder alone
uses lives in that folder's ``conftest.py``; the shared ones are here and in the plugin modules below:

- ``tests.db_fixtures``: the session PostgreSQL and SQLite databases, ``db_url``, ``migrated_engine``.
- ``tests.app_fixtures``: the real app factory on them (``app_settings``, ``painline_app``, ``app_server``).
- ``tests.dashboard_fixtures``: ``dash_app``, ``dash_users``, ``dash_seed``, ``pages_app``.
- ``tests.telephony_fixtures``: Twilio message builders, ``synthetic_call``, ``tel_sessions``, ``rq_queue``.
- ``tests.worker_fixtures``: synthetic voices, the test ``pain_model``, ``egemaps``, ``worker_queue``.
- ``tests.e2e_fixtures``: the shipped model scored offline, ``shipped_context`` and the live-call helpers.

Here: ``reliability`` (the session's :class:`tests.reliability.ReliabilityRecorder`, used by the bad-input
and fault tests; call ``reliability.record_outcome(name, category, detail, survived, lost=0, **counts)``),
whose rows are merged into ``bench/results/reliability.json`` when the session ends.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.reliability import RECORDER, ReliabilityRecorder

pytest_plugins = [
    "tests.db_fixtures",
    "tests.app_fixtures",
    "tests.dashboard_fixtures",
    "tests.telephony_fixtures",
    "tests.worker_fixtures",
    "tests.e2e_fixtures",
]


@pytest.fixture
def reliability(request: pytest.FixtureRequest) -> Iterator[ReliabilityRecorder]:
    """The session recorder, with the current test's node id stamped on the rows it records."""
    RECORDER.current_test = request.node.nodeid
    try:
        yield RECORDER
    finally:
        RECORDER.current_test = None


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the reliability rows once, at the end (merged by name into the existing file)."""
    path = RECORDER.write()
    if path is not None:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"reliability table: {len(RECORDER.outcomes)} row(s) merged into {path}")
