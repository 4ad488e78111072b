"""OutageTolerantSaver alone: a fake store that refuses while "down", a fake clock, no database.

What a stream could not save is kept, retried once the cool-down has passed, saved oldest first, and
given up (with one clear error log) only after the configured limit. The database-backed behaviour
is covered end to end by tests/faults/test_postgres_outage_mid_call.py.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pytest

from telephony.saving import FinishOutcome, OutageTolerantSaver, SavingPolicy

POLICY = SavingPolicy(max_waiting=5, retry_s=2.0, finish_retry_s=10.0, finish_retry_interval_s=1.0)


@dataclass
class FakeClock:
    """Monotonic seconds that move only when told to (or when the saver sleeps)."""

    now: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class FakeStore:
    """Saves strings while up, refuses while down; records every attempt and every saved row."""

    down: bool = False
    attempts: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    handed_on: list[int] = field(default_factory=list)
    # the clock reading at which the store comes back (None: stays as it is)
    up_at: float | None = None
    clock: FakeClock | None = None

    def save(self, item: str) -> int | None:
        self.attempts.append(item)
        if self.up_at is not None and self.clock is not None and self.clock.now >= self.up_at:
            self.down = False
        if self.down:
            return None
        self.rows.append(item)
        return len(self.rows)  # the new row's id

    def on_saved(self, row_id: int) -> None:
        self.handed_on.append(row_id)


def make_saver(store: FakeStore, clock: FakeClock, policy: SavingPolicy = POLICY) -> OutageTolerantSaver[str]:
    store.clock = clock
    return OutageTolerantSaver(
        store.save, store.on_saved, policy, label="call 7", noun="utterance", clock=clock, sleep=clock.sleep
    )


def test_saves_at_once_and_hands_each_id_on_while_the_database_answers() -> None:
    store, clock = FakeStore(), FakeClock()
    saver = make_saver(store, clock)
    assert saver.add(["a", "b"]) == 0
    assert store.rows == ["a", "b"] and store.handed_on == [1, 2] and saver.waiting == 0


def test_keeps_what_it_could_not_save() -> None:
    store, clock = FakeStore(down=True), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a"])
    saver.add(["b", "c"])
    assert saver.waiting == 3 and store.rows == [] and store.handed_on == []


def test_retries_only_after_the_cool_down() -> None:
    store, clock = FakeStore(down=True), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a"])
    assert store.attempts == ["a"]
    store.down = False
    clock.now += POLICY.retry_s - 0.1
    saver.add(["b"])  # inside the cool-down: not even tried, so the socket's thread is not stalled
    assert store.attempts == ["a"] and saver.waiting == 2
    clock.now += 0.1
    saver.save_waiting()
    assert store.rows == ["a", "b"] and saver.waiting == 0


def test_saves_in_order_and_stops_at_the_first_refusal() -> None:
    store, clock = FakeStore(), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a"])
    store.down = True
    saver.add(["b"])
    clock.now += POLICY.retry_s
    saver.add(["c", "d"])
    # one attempt per retry, always at the oldest: nothing later is saved ahead of it
    assert store.attempts == ["a", "b", "b"]
    store.down = False
    clock.now += POLICY.retry_s
    saver.add(["e"])
    assert store.rows == ["a", "b", "c", "d", "e"] and store.handed_on == [1, 2, 3, 4, 5]


def test_drops_the_oldest_beyond_the_cap(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = FakeStore(down=True), FakeClock()
    saver = make_saver(store, clock)
    with caplog.at_level(logging.ERROR, logger="telephony.saving"):
        assert saver.add(["a", "b", "c", "d"]) == 0
        assert saver.add(["e", "f", "g"]) == 2
    assert saver.waiting == POLICY.max_waiting
    assert [r.getMessage() for r in caplog.records] == [
        "call 7: database unavailable too long; oldest unsaved utterance dropped"
    ] * 2
    store.down = False
    saver.finish(lambda: None)
    assert store.rows == ["c", "d", "e", "f", "g"]


def test_finish_rides_out_a_short_outage_without_cool_down() -> None:
    store, clock = FakeStore(down=True), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a", "b"])
    store.up_at = clock.now + 3.0
    closes: list[float] = []

    def close() -> str | None:
        closes.append(clock.now)
        return None

    result = saver.finish(close)
    assert result.outcome is FinishOutcome.DONE and result.given_up == 0 and result.error is None
    assert store.rows == ["a", "b"] and closes == [1003.0]  # closed once, after everything was saved
    assert clock.sleeps == [POLICY.finish_retry_interval_s] * 3


def test_finish_retries_a_refused_close_then_reports_it() -> None:
    store, clock = FakeStore(), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a"])
    result = saver.finish(lambda: "OperationalError")
    assert result.outcome is FinishOutcome.CLOSE_FAILED and result.error == "OperationalError"
    assert result.given_up == 0 and store.rows == ["a"]
    assert clock.now == 1000.0 + POLICY.finish_retry_s  # tried until the configured limit, no longer


def test_finish_gives_up_after_the_limit_with_a_clear_log(caplog: pytest.LogCaptureFixture) -> None:
    store, clock = FakeStore(down=True), FakeClock()
    saver = make_saver(store, clock)
    saver.add(["a", "b", "c"])
    tried_before = len(store.attempts)
    closes: list[int] = []

    def close() -> None:
        closes.append(1)

    with caplog.at_level(logging.ERROR, logger="telephony.saving"):
        result = saver.finish(close)
    assert result.outcome is FinishOutcome.ITEMS_GIVEN_UP and result.given_up == 3 and result.error is None
    assert closes == []  # the call is not marked ended over utterances that were never saved
    assert saver.waiting == 0 and store.rows == []
    assert clock.now == 1000.0 + POLICY.finish_retry_s
    # one try at the start and one per interval up to the deadline
    assert len(store.attempts) - tried_before == int(POLICY.finish_retry_s / POLICY.finish_retry_interval_s) + 1
    assert [r.getMessage() for r in caplog.records] == [
        "call 7: database unavailable at stream end (utterances pending); 3 utterances not saved, given up after 10.0 s"
    ]


def test_finish_with_nothing_waiting_only_closes() -> None:
    store, clock = FakeStore(), FakeClock()
    saver = make_saver(store, clock)
    closes: list[int] = []

    def close() -> None:
        closes.append(1)

    result = saver.finish(close)
    assert result.outcome is FinishOutcome.DONE and closes == [1] and store.attempts == [] and clock.sleeps == []
