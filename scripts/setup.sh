#!/usr/bin/env bash
# Install painline and the extras it is asked for into the current Python environment, exactly as
# locked in requirements/ (every version and file hash fixed; pip resolves nothing). The locks pin
# the CPU build of torch (torch==2.13.0+cpu), so no CUDA build can be pulled in.
#
#   PAINLINE_EXTRAS=speaker bash scripts/setup.sh        # what the demo needs
#   bash scripts/setup.sh                                # every extra (what the tests need)
#   PAINLINE_INSTALL=latest bash scripts/setup.sh        # the newest versions pyproject allows, unlocked
#
# Regenerate the locks with `python scripts/lock.py` (see its docstring).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras=${PAINLINE_EXTRAS:-speaker,clap,hear,dev}
mode=${PAINLINE_INSTALL:-locked}
pip=("$PY" -m pip install --quiet --disable-pip-version-check)

# the browser tests drive Debian's Chromium (a test tool's own browser download cannot work offline)
if [[ ",${extras}," == *",dev,"* ]] && [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: /usr/bin/chromium is missing (apt-get install chromium); browser tests will be skipped" >&2
  fi
fi

locks=(requirements/core.txt)
IFS=, read -ra wanted <<<"$extras"
for extra in "${wanted[@]}"; do
  [ -n "$extra" ] || continue
  if [ ! -f "requirements/${extra}.txt" ]; then
    echo "setup: no lock for extra '${extra}' (known: $(cd requirements && ls ./*.txt | sed 's|./||;s|.txt||' | tr '\n' ' '))" >&2
    exit 2
  fi
  locks+=("requirements/${extra}.txt")
done

case "$mode" in
  locked)
    # One requirement file from the chosen locks (an extra's lock repeats a package another extra
    # also needs, such as torch for speaker and clap; the blocks are identical, so keep the first).
    merged=$(mktemp)
    trap 'rm -f "$merged"' EXIT
    "$PY" scripts/merge_locks.py "${locks[@]}" >"$merged"
    "${pip[@]}" --require-hashes --no-deps -r "$merged"
    # painline itself, editable, built by the locked setuptools (no unlocked build environment)
    "${pip[@]}" --no-deps --no-build-isolation -e .
    ;;
  latest)
    # The newest versions pyproject allows: for the newest-versions test run, never for CI.
    # torch stays the CPU build the brief fixes (an eager upgrade would pull a CUDA build)
    pins=$(mktemp)
    trap 'rm -f "$pins"' EXIT
    echo "torch==2.13.0" >"$pins"
    "${pip[@]}" -c "$pins" "torch==2.13.0"
    "${pip[@]}" -c "$pins" --upgrade --upgrade-strategy eager -e ".[${extras}]"
    "${pip[@]}" --upgrade --no-deps "resemblyzer==0.1.4"
    ;;
  *)
    echo "setup: PAINLINE_INSTALL must be 'locked' or 'latest', not '${mode}'" >&2
    exit 2
    ;;
esac

# pip check over the environment, limited to what painline installed (a shared interpreter may
# hold unrelated packages with conflicts of their own). resemblyzer's metadata asks for the old
# `webrtcvad` sdist and the `typing` backport, which are deliberately absent (webrtcvad-wheels ships
# the same module); any other broken requirement of ours fails the set-up.
"$PY" scripts/merge_locks.py --check "${locks[@]}"
"$PY" -c "import webrtcvad; webrtcvad.Vad(2)"
