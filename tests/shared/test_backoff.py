"""The one backoff and the wakeable sleep, on the fake clock."""

import asyncio

import pytest

from shared.backoff import Backoff, sleep_or_wake
from shared.clock import FakeClock


async def sleeping(clock: FakeClock, n: int = 1) -> None:
    """Let the loop run until ``n`` tasks sleep on ``clock`` (tasks start on the loop's next turns)."""
    for _ in range(20):
        if clock.sleepers >= n:
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{clock.sleepers} sleepers, expected {n}")


def test_delays_double_up_to_the_cap_with_equal_jitter() -> None:
    low = Backoff(0.5, 4.0, rng=lambda: 0.0)
    high = Backoff(0.5, 4.0, rng=lambda: 1.0)
    assert [low.next_delay() for _ in range(6)] == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert [high.next_delay() for _ in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    low.reset()
    assert low.failures == 0 and low.next_delay() == 0.25


def test_a_thousand_failures_stay_at_the_cap() -> None:
    backoff = Backoff(1.0, 30.0)
    delays = [backoff.next_delay() for _ in range(1000)]
    assert all(15.0 <= d <= 30.0 for d in delays[10:])
    assert len({round(d, 6) for d in delays[10:]}) > 100  # jittered, not in step


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (-1, 1), (2, 1)])
def test_a_bad_configuration_is_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="0 < base <= cap"):
        Backoff(base, cap)


async def test_wait_sleeps_on_the_injected_clock() -> None:
    clock = FakeClock()
    backoff = Backoff(2.0, 8.0, clock=clock, rng=lambda: 1.0)
    task = asyncio.create_task(backoff.wait())
    await sleeping(clock)
    clock.advance(1.999)
    await asyncio.sleep(0)
    assert not task.done()
    clock.advance(0.001)
    assert await asyncio.wait_for(task, 1) == 2.0


async def test_sleep_or_wake_returns_early_on_the_event_and_leaves_no_sleeper() -> None:
    clock = FakeClock()
    wake = asyncio.Event()
    task = asyncio.create_task(sleep_or_wake(clock, 60, wake))
    await sleeping(clock)
    wake.set()
    assert await asyncio.wait_for(task, 1) is True
    assert clock.sleepers == 0


async def test_sleep_or_wake_times_out_on_the_clock() -> None:
    clock = FakeClock()
    task = asyncio.create_task(sleep_or_wake(clock, 5, asyncio.Event()))
    await sleeping(clock)
    clock.advance(5)
    assert await asyncio.wait_for(task, 1) is False
