"""Shared pytest set-up: each area contributes fixtures as a plugin module listed here."""

pytest_plugins = [
    "tests.db_fixtures",
    "tests.telephony_fixtures",
    "tests.worker_fixtures",
    "tests.app_fixtures",
    "tests.dashboard_fixtures",
    "tests.pages_fixtures",
    "tests.e2e_fixtures",
    "tests.fault_fixtures",
]
