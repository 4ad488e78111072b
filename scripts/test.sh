#!/usr/bin/env bash
# The test command: install exactly the locked versions (scripts/setup.sh), lint, then run the whole
# suite against the real PostgreSQL and Redis on this machine (PAINLINE_TEST_POSTGRES_URL /
# PAINLINE_TEST_REDIS_URL). scripts/test-latest.sh runs the same against the newest versions.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/setup.sh
"$PY" -c "import importlib.metadata as m; print('testing with', ', '.join(f'{p} {m.version(p)}' for p in ('redis', 'rq', 'torch', 'flask', 'sqlalchemy', 'numpy')))"
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m mypy  # the targets and per-module strictness are in pyproject.toml ([tool.mypy])
# lint-imports, run by this interpreter (import-linter has no `python -m` entry): the layering contracts in pyproject.toml
"$PY" -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
exec "$PY" -m pytest "$@"
