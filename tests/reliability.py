"""The reliability table: what each fault or bad-input test did to painline, and whether it survived.

Fault tests (``tests/faults``) and bad-input tests record one row each through the ``reliability``
fixture (``tests/conftest.py``)::

    def test_worker_killed(reliability):
        ...
        reliability.record_outcome(
            "worker-sigkill-mid-job", "fault", "kill -9 of the work-horse while scoring; new worker",
            survived=scored == detected, lost=detected - scored, detected=detected, scored=scored,
        )

Rows are kept in memory and written once, at the end of the pytest session, to
``bench/results/reliability.json`` (``PAINLINE_RELIABILITY_PATH`` overrides it). The file is merged
by row name, not overwritten: running one test file must not erase the rows of the others, and the
table stays a record of the last known outcome of every scenario. Writes take an exclusive lock and
replace the file atomically, because several pytest sessions may run on the same checkout at once.

Why a row, not just a pass/fail: the table is the published answer to "what happens to the calls
when X breaks", so each row says which fault, what was checked, and how many utterances were
detected, scored and lost.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PATH = REPO_ROOT / "bench" / "results" / "reliability.json"
PATH_ENV = "PAINLINE_RELIABILITY_PATH"

# counts every row carries (0 when the recorder was not told), so the table has stable columns
STANDARD_COUNTS = ("detected", "scored")


def default_path() -> Path:
    return Path(os.environ.get(PATH_ENV) or DEFAULT_PATH)


@dataclass
class Outcome:
    """One row of the table."""

    name: str
    category: str
    detail: str
    survived: bool
    lost: int = 0
    counts: dict[str, Any] = field(default_factory=dict)
    test: str | None = None
    recorded_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "name": self.name,
            "category": self.category,
            "detail": self.detail,
            "survived": self.survived,
        }
        for key in STANDARD_COUNTS:
            row[key] = self.counts.get(key, 0)
        row["lost"] = self.lost
        row.update({k: v for k, v in self.counts.items() if k not in STANDARD_COUNTS})
        row["test"] = self.test
        row["recorded_at"] = self.recorded_at
        return row


class ReliabilityRecorder:
    """Collects :class:`Outcome` rows during a session; :meth:`write` merges them into the JSON file."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._rows: dict[str, Outcome] = {}
        self._lock = threading.Lock()
        self.current_test: str | None = None  # set by the fixture, so each row names its test

    @property
    def outcomes(self) -> list[Outcome]:
        with self._lock:
            return list(self._rows.values())

    def record_outcome(
        self, name: str, category: str, detail: str, survived: bool, lost: int = 0, **counts: Any
    ) -> Outcome:
        """Record (or replace) the row ``name``.

        ``category`` groups rows (e.g. ``"fault"``, ``"bad-input"``, ``"soak"``); ``detail`` says what
        was done and what was checked; ``survived`` is the verdict; ``lost`` the utterances (or other
        units of work) that never made it; ``counts`` any further numbers, conventionally
        ``detected=`` and ``scored=``. Values must be JSON-serialisable.
        """
        if not name:
            raise ValueError("an outcome needs a name")
        outcome = Outcome(
            name=name,
            category=category,
            detail=detail,
            survived=bool(survived),
            lost=int(lost),
            counts=dict(counts),
            test=self.current_test,
        )
        json.dumps(outcome.as_row())  # fail in the test that passed a bad value, not at session end
        with self._lock:
            self._rows[name] = outcome
        return outcome

    def write(self, path: Path | None = None) -> Path | None:
        """Merge this session's rows into the file (by name); returns the path, or None if no rows."""
        rows = self.outcomes
        if not rows:
            return None
        target = Path(path or self.path or default_path())
        target.parent.mkdir(parents=True, exist_ok=True)
        # the lock lives outside the results folder, so it is never mistaken for a result
        lock_path = Path(tempfile.gettempdir()) / f"painline-{target.name}.lock"
        with open(lock_path, "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            merged = {row["name"]: row for row in read_rows(target)}
            for outcome in rows:
                merged[outcome.name] = outcome.as_row()
            document = {
                "description": "painline reliability table: one row per fault or bad-input scenario "
                "(tests/reliability.py); merged by name across test runs",
                "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "survived": sum(1 for r in merged.values() if r.get("survived")),
                "total": len(merged),
                "rows": [merged[name] for name in sorted(merged)],
            }
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".reliability-", suffix=".json")
            with os.fdopen(fd, "w") as handle:
                json.dump(document, handle, indent=2, sort_keys=False)
                handle.write("\n")
            os.replace(tmp, target)
            markdown = target.with_suffix(".md")
            markdown.write_text(render_markdown(document))
        return target


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(document: dict[str, Any]) -> str:
    """The table as Markdown (written beside the JSON; ``docs/security.md`` links it)."""
    rows = document.get("rows", [])
    lines = [
        "# Reliability table",
        "",
        f"Generated by the test suite (`tests/reliability.py`) from `{DEFAULT_PATH.name}`; last updated "
        f"{document.get('updated_at', '?')}. **{document.get('survived', 0)} of {document.get('total', 0)} "
        "scenarios survived.** Counts are utterances (detected by the VAD, scored, lost).",
        "",
        "| scenario | kind | what was done and checked | survived | detected | scored | lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in sorted(rows, key=lambda r: (r.get("category", ""), r.get("name", ""))):
        lines.append(
            f"| `{_cell(row.get('name'))}` | {_cell(row.get('category'))} | {_cell(row.get('detail'))} | "
            f"{'yes' if row.get('survived') else '**NO**'} | {row.get('detected', 0)} | {row.get('scored', 0)} | "
            f"{row.get('lost', 0)} |"
        )
    return "\n".join(lines) + "\n"


def read_rows(path: Path | None = None) -> list[dict[str, Any]]:
    """The rows currently in the file (an empty list if it is missing or unreadable)."""
    target = Path(path or default_path())
    try:
        document = json.loads(target.read_text())
    except (OSError, ValueError):
        return []
    rows = document.get("rows", []) if isinstance(document, dict) else []
    return [row for row in rows if isinstance(row, dict) and row.get("name")]


# one recorder per pytest process; tests/conftest.py writes it at session end
RECORDER = ReliabilityRecorder()


def record_outcome(name: str, category: str, detail: str, survived: bool, lost: int = 0, **counts: Any) -> Outcome:
    """Module-level shortcut to :meth:`ReliabilityRecorder.record_outcome` on the session recorder."""
    return RECORDER.record_outcome(name, category, detail, survived, lost, **counts)


__all__ = [
    "DEFAULT_PATH",
    "RECORDER",
    "Outcome",
    "ReliabilityRecorder",
    "default_path",
    "read_rows",
    "record_outcome",
]
