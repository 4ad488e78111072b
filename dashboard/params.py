"""Query parameters the pages and the JSON API both take, validated once for both.

Why: each of these reached PostgreSQL unchecked from the admin pages and answered 500 (issue 13): a
NUL in a text filter (PostgreSQL ``text`` cannot hold one), an id beyond its ``integer``, a date
with no next day (the "to" filter is exclusive of the day after). The API had its own checks and
the pages copies of them; now both call these functions, so a page and its API twin refuse the same
values with the same words.

Every function raises :class:`InvalidParameter` (an :class:`dashboard.store.Invalid`) whose message starts with the
parameter's name. The API blueprint answers it as a JSON 400; for pages, :mod:`dashboard.errors`
renders it as a 400 page in the layout naming the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from dashboard.store.base import Invalid


class InvalidParameter(Invalid):
    """One query parameter is wrong: ``name`` and what is wrong with it (``problem``), both safe to show.

    A subclass of :class:`~dashboard.store.Invalid`, so the API answers it as any other 400; the
    pages show ``name`` as the field to correct.
    """

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name} {problem}")
        self.name = name
        self.problem = problem


MAX_ID = 2**31 - 1
"""Row ids are PostgreSQL ``integer``s: a larger id names no row, and binding one makes the query fail."""
LAST_DAY = date(9998, 12, 31)
"""The last day a date filter may name: ``to`` is turned into the start of the next day, which must exist."""
SEARCH_MAX_CHARS = 200

AUDIT_TEXT_FIELDS: dict[str, int] = {"actor": 150, "action": 64, "object_type": 64, "object_id": 128}
"""The audit log's exact-match filters and their column widths: a longer value can match no row."""


def text(args: Mapping[str, str], name: str, max_chars: int) -> str | None:
    """A text filter, stripped; None when empty. A NUL or a value longer than its column is refused."""
    value = (args.get(name) or "").strip()
    if not value:
        return None
    if "\x00" in value:
        raise InvalidParameter(name, "must not contain NUL characters")
    if len(value) > max_chars:
        raise InvalidParameter(name, f"must be at most {max_chars} characters")
    return value


def row_id(args: Mapping[str, str], name: str) -> int | None:
    """A row id (1..MAX_ID), or None when absent."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_ID:
        raise InvalidParameter(name, f"must be a whole number from 1 to {MAX_ID}")
    return value


def day(args: Mapping[str, str], name: str) -> date | None:
    """A ``YYYY-MM-DD`` date, or None when absent; anything else is refused rather than ignored."""
    raw = (args.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = datetime.strptime(raw, "%Y-%m-%d").date()
    except ValueError:
        raise InvalidParameter(name, "must be a date written YYYY-MM-DD") from None
    if value > LAST_DAY:
        raise InvalidParameter(name, f"must be no later than {LAST_DAY.isoformat()}")
    return value


def search_query(args: Mapping[str, str]) -> str:
    """The patient search's ``q`` ("" for none)."""
    return text(args, "q", SEARCH_MAX_CHARS) or ""


@dataclass(frozen=True)
class AuditMatch:
    """The audit log's exact-match filters (None: any)."""

    actor: str | None = None
    action: str | None = None
    object_type: str | None = None
    object_id: str | None = None

    def used(self) -> dict[str, str]:
        """The filters given, by parameter name (for the audit row that records the reading)."""
        return {k: v for k, v in vars(self).items() if v is not None}


def audit_match(args: Mapping[str, str]) -> AuditMatch:
    return AuditMatch(**{name: text(args, name, width) for name, width in AUDIT_TEXT_FIELDS.items()})


@dataclass(frozen=True)
class DayRange:
    """Whole UTC days, both ends included (None: open)."""

    first: date | None = None
    last: date | None = None

    @property
    def since(self) -> datetime | None:
        return None if self.first is None else datetime.combine(self.first, datetime.min.time(), UTC)

    @property
    def until(self) -> datetime | None:
        """The exclusive upper bound: the start of the day after ``last``."""
        return None if self.last is None else datetime.combine(self.last + timedelta(days=1), datetime.min.time(), UTC)


def day_range(args: Mapping[str, str], first: str = "from", last: str = "to") -> DayRange:
    """``from``/``to`` dates; ``to`` before ``from`` is refused (it could only ever match nothing)."""
    span = DayRange(day(args, first), day(args, last))
    if span.first is not None and span.last is not None and span.last < span.first:
        raise InvalidParameter(last, f"must not be before {first}")
    return span


__all__ = [
    "AUDIT_TEXT_FIELDS",
    "LAST_DAY",
    "MAX_ID",
    "AuditMatch",
    "DayRange",
    "InvalidParameter",
    "audit_match",
    "day",
    "day_range",
    "row_id",
    "search_query",
    "text",
]
