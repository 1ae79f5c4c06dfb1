"""run_loops: a stop ends every loop; a failing loop ends the others and surfaces as itself."""

import asyncio

import pytest

from shared.lifecycle import run_loops


async def forever(
    started: list[str], name: str, cancelled: list[str], up: asyncio.Event | None = None
) -> None:
    started.append(name)
    if up is not None and len(started) == 2:
        up.set()
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        cancelled.append(name)
        raise


async def test_a_stop_cancels_every_loop_and_returns() -> None:
    stopping = asyncio.Event()
    started: list[str] = []
    cancelled: list[str] = []
    up = asyncio.Event()
    loops = {"a": forever(started, "a", cancelled, up), "b": forever(started, "b", cancelled, up)}
    runner = asyncio.create_task(run_loops(stopping, loops))
    await asyncio.wait_for(up.wait(), 5)
    stopping.set()
    await asyncio.wait_for(runner, 5)
    assert sorted(cancelled) == ["a", "b"]


async def test_a_failing_loop_cancels_the_others_and_raises_itself() -> None:
    cancelled: list[str] = []

    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("the store is gone")

    with pytest.raises(RuntimeError, match="the store is gone"):
        await asyncio.wait_for(
            run_loops(asyncio.Event(), {"a": forever([], "a", cancelled), "b": broken()}), 5
        )
    assert cancelled == ["a"]


async def test_a_loop_that_returns_leaves_the_others_running() -> None:
    stopping = asyncio.Event()
    done: list[str] = []

    async def once() -> None:
        done.append("once")
        stopping.set()  # the others keep going until this stop

    await asyncio.wait_for(run_loops(stopping, {"once": once(), "a": forever([], "a", [])}), 5)
    assert done == ["once"]
