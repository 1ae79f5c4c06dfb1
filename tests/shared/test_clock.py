import asyncio

import pytest

from shared.clock import FakeClock, settle


async def test_fake_sleepers_wake_in_deadline_order_only_when_time_passes() -> None:
    clock = FakeClock()
    woke: list[str] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append(name)

    tasks = [asyncio.create_task(sleeper("late", 2.0)), asyncio.create_task(sleeper("early", 1.0))]
    await asyncio.sleep(0)
    assert clock.sleepers == 2
    await clock.advance_and_settle(0.999)
    assert woke == []
    await clock.advance_and_settle(0.001)
    assert woke == ["early"]
    await clock.advance_and_settle(5)
    assert woke == ["early", "late"]
    await asyncio.gather(*tasks)


def test_fake_clock_never_goes_back() -> None:
    clock = FakeClock(start_ns=10)
    clock.advance(1)
    assert clock.time_ns() == 1_000_000_010
    assert clock.monotonic() == 1.0
    with pytest.raises(ValueError):
        clock.set_ns(5)


async def test_settle_runs_woken_tasks_to_their_next_wait_however_many_turns_that_takes() -> None:
    clock = FakeClock()
    steps: list[int] = []
    later = asyncio.Event()

    async def long_chain() -> None:
        await clock.sleep(1.0)
        for i in range(50):  # fifty hand-offs through the loop after the wake
            await asyncio.sleep(0)
            steps.append(i)
        await later.wait()

    task = asyncio.create_task(long_chain())
    await settle()
    assert clock.sleepers == 1
    await clock.advance_and_settle(1.0)
    assert steps == list(range(50))
    later.set()
    await task


async def test_settle_refuses_a_loop_that_never_goes_idle() -> None:
    async def spin() -> None:
        while True:
            await asyncio.sleep(0)

    task = asyncio.create_task(spin())
    with pytest.raises(RuntimeError, match="did not settle"):
        await settle(max_turns=1000)
    task.cancel()
