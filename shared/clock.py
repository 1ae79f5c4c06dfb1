"""Injectable time: the real clock for services, a fake clock that tests advance by hand."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol


class Clock(Protocol):
    def time_ns(self) -> int:
        """Wall-clock nanoseconds since the Unix epoch."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals and timeouts)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class RealClock:
    time_ns = staticmethod(time.time_ns)  # the C function itself: read per timer on hot paths

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class FakeClock:
    """Time stands still until :meth:`advance`; sleepers wake in deadline order as it passes."""

    def __init__(self, start_ns: int = 1_700_000_000 * 1_000_000_000) -> None:
        self._now_ns = start_ns
        self._start_ns = start_ns
        self._sleepers: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time_ns(self) -> int:
        return self._now_ns

    def monotonic(self) -> float:
        return (self._now_ns - self._start_ns) / 1e9

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        deadline = self._now_ns + int(seconds * 1e9)
        heapq.heappush(self._sleepers, (deadline, next(self._order), fut))
        await fut

    @property
    def sleepers(self) -> int:
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def set_ns(self, now_ns: int) -> None:
        if now_ns < self._now_ns:
            raise ValueError("a fake clock never goes back")
        self._now_ns = now_ns
        while self._sleepers and self._sleepers[0][0] <= now_ns:
            _, _, fut = heapq.heappop(self._sleepers)
            if not fut.done():
                fut.set_result(None)

    def advance(self, seconds: float) -> None:
        """Move time forward; sleepers whose deadline passed are woken (they run at next await)."""
        self.set_ns(self._now_ns + round(seconds * 1e9))

    async def advance_and_settle(self, seconds: float, step: float | None = None) -> None:
        """Advance in steps, letting woken tasks run to completion after each: the way to drive a
        loop by time."""
        step = seconds if step is None else step
        remaining = seconds
        while remaining > 1e-12:
            delta = min(step, remaining)
            self.advance(delta)
            remaining -= delta
            await settle()


SETTLE_MAX_TURNS = 100_000


async def settle(max_turns: int = SETTLE_MAX_TURNS) -> None:
    """Return once no task can run any further: every task woken so far has gone on until it waits
    again (on the clock, an event, a socket). Only the caller's own turn is left in the loop's ready
    queue then. A loop that never goes idle (a task that spins) is an error after ``max_turns``."""
    loop = asyncio.get_running_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's ready queue; other loops do not expose one
    for _ in range(max_turns if ready is not None else 5):
        await asyncio.sleep(0)
        if ready is not None and not ready:
            return
    if ready is not None:
        raise RuntimeError(f"the event loop did not settle in {max_turns} turns: a task never waits")
