"""Saving through database outages: what could not be saved waits in memory and is retried.

A Media Stream must keep being read while PostgreSQL is down (Twilio discards audio from a reader
that falls behind), so an utterance the database refuses cannot be retried on the spot. It waits
here instead, in order, and is saved once the database answers again. This is a policy of its own
(how much to hold, how often to try, how long to keep trying once the stream is over, what to give
up and how loudly), so it lives outside :class:`~telephony.session.StreamSession`, which keeps the
Media Stream protocol, and is tested alone with a fake clock and a fake store instead of a database
restart.

The saver knows nothing about utterances or SQL: it is handed a ``save`` function that returns the
new row's id or ``None`` when the database refused, and an ``on_saved`` function that hands the id
on (the session enqueues its scoring job). It never raises for an outage and only sleeps in
:meth:`OutageTolerantSaver.finish`, when the socket is done and waiting costs no audio.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

Item = TypeVar("Item")


def _monotonic() -> float:
    # looked up at each call (not bound at import) so a test that patches time.monotonic reaches here
    return time.monotonic()


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


@dataclass(frozen=True)
class SavingPolicy:
    """How hard to try. The defaults ride out a 30 s outage without losing anything.

    ``max_waiting`` caps memory (120 utterances is about 10 minutes of speech): beyond it the oldest
    is dropped, because the newest speech is what a nurse looks at first. While items are being
    added, a refused save is retried at most every ``retry_s`` so the caller's thread (the socket's)
    is not stalled for a connect timeout on every item. At the end, :meth:`OutageTolerantSaver.finish`
    keeps trying every ``finish_retry_interval_s`` for up to ``finish_retry_s``.
    """

    max_waiting: int = 120
    retry_s: float = 2.0
    finish_retry_s: float = 60.0
    finish_retry_interval_s: float = 1.0


class FinishOutcome(enum.Enum):
    """How :meth:`OutageTolerantSaver.finish` ended."""

    # everything saved and the closing step (marking the call ended) done
    DONE = "done"
    # the deadline passed with items still waiting: they were given up and the closing step was never
    # tried (the caller carries on as before the split: it announces the end and enqueues finalisation)
    ITEMS_GIVEN_UP = "items_given_up"
    # everything saved, but the closing step was refused until the deadline (the sweep ends the call)
    CLOSE_FAILED = "close_failed"


@dataclass(frozen=True)
class FinishResult:
    outcome: FinishOutcome
    given_up: int  # items that were never saved
    error: str | None  # the closing step's last refusal (an exception's name), if it was refused


class OutageTolerantSaver(Generic[Item]):
    """Items waiting to be saved, in the order they were added; saved oldest first, never reordered.

    ``label`` names the owner in logs (``"call 42"``) and ``noun`` what is saved (``"utterance"``);
    neither ever carries anything about the caller.
    """

    def __init__(
        self,
        save: Callable[[Item], int | None],
        on_saved: Callable[[int], None],
        policy: SavingPolicy,
        *,
        label: str,
        noun: str = "item",
        clock: Callable[[], float] = _monotonic,
        sleep: Callable[[float], None] = _sleep,
    ) -> None:
        self._save = save
        self._on_saved = on_saved
        self._policy = policy
        self.label = label
        self._noun = noun
        self._clock = clock
        self._sleep = sleep
        self._waiting: deque[Item] = deque()
        self._paused_until = 0.0  # no save attempt before this clock reading (the database refused)

    @property
    def waiting(self) -> int:
        """How many items are held because the database refused them."""
        return len(self._waiting)

    def add(self, items: Iterable[Item]) -> int:
        """Queue ``items`` behind those already waiting, then save what the cool-down allows.

        Returns how many of the oldest waiting items were dropped to stay within ``max_waiting``.
        """
        before = len(self._waiting)
        self._waiting.extend(items)
        if len(self._waiting) == before:
            return 0
        dropped = 0
        while len(self._waiting) > self._policy.max_waiting:
            self._waiting.popleft()
            dropped += 1
            log.error("%s: database unavailable too long; oldest unsaved %s dropped", self.label, self._noun)
        self.save_waiting()
        return dropped

    def save_waiting(self) -> None:
        """Save waiting items oldest first; stop at the first refusal and wait ``retry_s`` before retrying.

        Stopping at the first refusal keeps the order: a later item is never saved before an earlier one.
        """
        if self._clock() < self._paused_until:
            return
        while self._waiting:
            row_id = self._save(self._waiting[0])
            if row_id is None:
                self._paused_until = self._clock() + self._policy.retry_s
                return
            self._waiting.popleft()
            self._on_saved(row_id)

    def finish(self, close: Callable[[], str | None]) -> FinishResult:
        """Save everything still waiting, then run ``close`` (``None`` on success, else the error's
        name), retrying both, without cool-down, for up to ``finish_retry_s``.

        Blocks by design: it is called once the stream is over, when waiting costs no audio, and a
        short outage at hang-up is common (the database restarting with the deployment). At the
        deadline whatever still waits is given up, with one error log naming how many.
        """
        deadline = self._clock() + self._policy.finish_retry_s
        while True:
            self._paused_until = 0.0
            self.save_waiting()
            error = None if self._waiting else close()
            if not self._waiting and error is None:
                return FinishResult(FinishOutcome.DONE, 0, None)
            if self._clock() >= deadline:
                given_up = len(self._waiting)
                log.error(
                    "%s: database unavailable at stream end (%s); %d %ss not saved, given up after %s s",
                    self.label,
                    error or f"{self._noun}s pending",
                    given_up,
                    self._noun,
                    self._policy.finish_retry_s,
                )
                self._waiting.clear()
                if error is not None:
                    return FinishResult(FinishOutcome.CLOSE_FAILED, given_up, error)
                return FinishResult(FinishOutcome.ITEMS_GIVEN_UP, given_up, None)
            self._sleep(self._policy.finish_retry_interval_s)
