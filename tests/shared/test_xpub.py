"""SubscriberWatch's check after a send: at once when the last is a period old, else one timer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.xpub import RECHECK_AFTER_SEND_S, SubscriberWatch


class FakeLoop:
    def __init__(self) -> None:
        self.now = 100.0
        self.timers: list[tuple[float, Callable[[], None]]] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        self.timers.append((when, callback))

    def fire_due(self) -> None:
        due = [t for t in self.timers if t[0] <= self.now]
        self.timers = [t for t in self.timers if t[0] > self.now]
        for _, callback in due:
            callback()


class FakeReader:
    def __init__(self, loop: FakeLoop) -> None:
        self.loop = loop
        self.pokes = 0

    def poke(self) -> None:
        self.pokes += 1


def watch_with(loop: FakeLoop) -> tuple[SubscriberWatch, FakeReader]:
    no_socket: Any = None  # never read: the check after a send is the fake reader's
    watch = SubscriberWatch(no_socket, "inproc://unused")
    reader = FakeReader(loop)
    watch.reader = reader  # type: ignore[assignment]
    return watch, reader


def test_a_send_after_a_quiet_period_is_checked_at_once_with_no_timer() -> None:
    """A service sending now and then: each send checks there and then, and never wakes the loop
    again for it."""
    loop = FakeLoop()
    watch, reader = watch_with(loop)
    for n in range(1, 4):
        watch.sent()
        assert (reader.pokes, loop.timers) == (n, [])
        loop.now += 0.01  # 10 ms to the next send


def test_sends_within_a_period_share_one_timer_at_its_end() -> None:
    loop = FakeLoop()
    watch, reader = watch_with(loop)
    watch.sent()  # checked at once
    loop.now += RECHECK_AFTER_SEND_S / 4
    watch.sent()
    watch.sent()
    assert reader.pokes == 1 and len(loop.timers) == 1
    assert loop.timers[0][0] == 100.0 + RECHECK_AFTER_SEND_S
    loop.now = 100.0 + RECHECK_AFTER_SEND_S
    loop.fire_due()
    assert (reader.pokes, loop.timers) == (2, [])
    watch.sent()  # the timer's check began a new period: this send waits for its end
    assert reader.pokes == 2 and len(loop.timers) == 1
