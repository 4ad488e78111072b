#!/usr/bin/env bash
# The test command: install what the tests need, lint, then run the whole suite against the real
# PostgreSQL and Redis on this machine (PAINLINE_TEST_POSTGRES_URL / PAINLINE_TEST_REDIS_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
$PY -m ruff check .
$PY -m pytest "$@"
