"""Print the union of lock files from ``requirements/`` as one requirement file.

``scripts/setup.sh`` installs the core lock plus one lock per extra. Two extras can need the same
package (torch for speaker and clap); ``scripts/lock.py`` takes every file from one resolution, so
such blocks are identical and the first is kept. A package pinned differently in two files means
the locks were edited by hand or generated apart: that is an error, not a choice to make here.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def blocks(text: str, *, keep_comments: bool = False) -> list[tuple[str, str]]:
    """(normalised name, requirement block: the pin and its hash lines) in file order.

    ``keep_comments`` keeps the resolver's indented "via" notes (``scripts/lock.py`` writes them into
    the locks for people); installing needs only pins and hashes.
    """
    out: list[tuple[str, str]] = []
    in_block = False
    for line in text.splitlines(keepends=True):
        match = _PIN.match(line)
        if match:
            out.append((re.sub(r"[-_.]+", "-", match.group(1)).lower(), line))
            in_block = True
        elif in_block and line.startswith((" ", "\t")):
            if keep_comments or not line.strip().startswith("#"):
                name, block = out[-1]
                out[-1] = (name, block + line)
        else:
            in_block = False
    return out


def merge(paths: list[Path]) -> str:
    chosen: dict[str, str] = {}
    for path in paths:
        for name, block in blocks(path.read_text()):
            if name in chosen and chosen[name] != block:
                raise SystemExit(f"merge_locks: {name} is locked differently in {path}; run python scripts/lock.py")
            chosen.setdefault(name, block)
    return "".join(chosen.values())


# resemblyzer's metadata asks for these; the locks leave them out on purpose (requirements/overrides.in)
_KNOWN = re.compile(r"^resemblyzer 0\.1\.4 requires (webrtcvad|typing), which is not installed\.$")


def check(paths: list[Path]) -> int:
    """``pip check``, reporting only packages these locks installed; 1 if any is broken."""
    ours = {name for path in paths for name, _ in blocks(path.read_text())}
    report = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
    broken = [
        line
        for line in report.splitlines()
        if line.split(" ", 1)[0].lower().replace("_", "-") in ours and not _KNOWN.match(line)
    ]
    for line in broken:
        print(f"setup: {line}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--check"]:
        raise SystemExit(check([Path(arg) for arg in args[1:]]))
    sys.stdout.write(merge([Path(arg) for arg in args]))
