#!/usr/bin/env bash
# The whole test command against the NEWEST versions pyproject allows, on purpose: a fresh virtualenv
# (.venv-latest, never the one CI uses), unlocked installs, then exactly scripts/test.sh. Run it
# before widening a bound in pyproject or regenerating the locks (python scripts/lock.py); record
# the result in docs/dependencies.md.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PAINLINE_LATEST_VENV:-.venv-latest}
rm -rf "$venv"
"${PYTHON:-python3}" -m venv "$venv"
export PATH="$PWD/$venv/bin:$PATH"
export PYTHON="$PWD/$venv/bin/python"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --upgrade pip
"$PYTHON" -m pip --version
PAINLINE_INSTALL=latest exec bash scripts/test.sh "$@"
