#!/usr/bin/env bash
# The main job on a fresh machine: install painline, then run one sample call end to end on the
# embedded default (SQLite and an embedded Redis; no services to install).
set -euo pipefail
cd "$(dirname "$0")/.."
PAINLINE_EXTRAS=${PAINLINE_EXTRAS:-speaker} bash scripts/setup.sh
exec painline demo "$@"
