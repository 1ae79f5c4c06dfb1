import asyncio

import pytest

from shared.clock import FakeClock


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
