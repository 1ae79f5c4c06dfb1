from __future__ import annotations

from services.registry.due import DueTimers

S = 1_000_000_000
START = 1_700_000_000 * S + 123_456_789


def test_next_wake_cascades_a_burst_before_its_deadline() -> None:
    """A burst sharing one deadline 30 s ahead sits in a wide slot: the first wake is that slot's
    start, where the advance fires nothing and moves the burst down; the next wake is the exact
    deadline, where the whole burst fires."""
    timers: DueTimers[int] = DueTimers(START)
    deadline = START + 30 * S
    for k in range(1_000):
        timers.schedule(k, deadline)
    timers.schedule(-1, deadline + 1)  # one tick's slot is compared exactly: not early
    first = timers.next_wake_ns()
    assert first is not None and START <= first < deadline
    assert deadline - first < 2 * S  # a level-1 slot of the default wheel spans ~1 s
    timers.fire(first)
    assert not timers.due
    assert timers.next_wake_ns() == deadline
    timers.fire(deadline)
    assert sorted(k for k, _ in timers.due) == list(range(1_000))
    assert timers.next_wake_ns() == deadline  # timers due and not handled: at once


def test_next_wake_of_nothing_scheduled_is_none() -> None:
    timers: DueTimers[str] = DueTimers(START)
    assert timers.next_wake_ns() is None
    timers.schedule("a", START + S)
    timers.wheel.cancel("a")
    assert timers.next_wake_ns() is None
