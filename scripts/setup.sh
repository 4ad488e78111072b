#!/usr/bin/env bash
# Install painline and everything its tests need into the current Python environment.
# Order matters: the CPU build of torch first (a bare `torch` would pull a multi-GB CUDA build),
# then resemblyzer without its dependencies (it pins the old `webrtcvad` sdist, which breaks on
# import; webrtcvad-wheels provides the same module), then the project with its extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${PAINLINE_EXTRAS:-speaker,clap,hear,dev}
# the browser tests drive Debian's Chromium (a test tool's own browser download cannot work offline)
if [[ ",${extras}," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing (apt-get install chromium); browser tests will be skipped" >&2
  fi
fi
$PY -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
$PY -m pip install --quiet --disable-pip-version-check --no-deps "resemblyzer==0.1.4"
$PY -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
# resemblyzer's old webrtcvad may have been pulled by something else: make sure the wheel wins
if $PY -m pip show webrtcvad >/dev/null 2>&1; then
  $PY -m pip uninstall --quiet -y webrtcvad
  $PY -m pip install --quiet --force-reinstall --no-deps webrtcvad-wheels
fi
