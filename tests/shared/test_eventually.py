"""tests.helpers.eventually: what wakes it, and what it says when the condition never holds."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from tests.helpers import eventually, polling


async def test_an_event_wakes_it_and_the_condition_is_checked_again() -> None:
    changed = asyncio.Event()
    state = {"n": 0}
    checks = 0

    def cond() -> bool:
        nonlocal checks
        checks += 1
        return state["n"] >= 3

    async def producer() -> None:
        for _ in range(3):
            await asyncio.sleep(0)
            state["n"] += 1
            changed.set()

    task = asyncio.create_task(producer())
    await eventually(cond, wake=changed, timeout=5, what="three changes")
    await task
    assert checks <= 4  # once at first, then once per change: no re-checks without a wake


async def test_a_call_wakes_it_each_time_it_returns() -> None:
    received: list[int] = []

    async def receive() -> None:
        received.append(len(received))

    await eventually(lambda: len(received) == 5, wake=receive, timeout=5, what="five receives")
    assert received == [0, 1, 2, 3, 4]


async def test_the_timeout_names_what_it_waited_for_and_the_last_state() -> None:
    never = asyncio.Event()
    with pytest.raises(
        AssertionError, match=r"timed out after 0.05 s waiting for the moon \(last state: 'new'\)"
    ):
        await eventually(lambda: False, wake=never, timeout=0.05, what="the moon", state=lambda: "new")


async def test_a_process_that_exits_fails_it_at_once_with_its_stderr() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.exit('broken at start')"], stderr=subprocess.PIPE, text=True
    )
    proc.wait(10)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    with pytest.raises(AssertionError, match="the process exited\nbroken at start"):
        await eventually(lambda: False, wake=asyncio.Event(), timeout=30, what="service up", process=proc)
    assert loop.time() - t0 < 5


async def test_polling_fetches_at_once_then_every_interval() -> None:
    fetched = 0

    async def fetch() -> None:
        nonlocal fetched
        fetched += 1

    await eventually(
        lambda: fetched == 3, wake=polling(fetch, interval=0.001), timeout=5, what="three fetches"
    )
    assert fetched == 3
