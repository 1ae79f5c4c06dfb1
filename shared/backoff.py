"""Waiting between attempts, on the injected clock: one backoff for every retry in poolwire.

``Backoff`` is capped exponential with equal jitter: the delay before attempt n+1 is half of
``min(cap, base * 2**n)`` fixed and half random, so processes restarted together do not retry in
step, and a failure never retries sooner than half the ceiling. ``sleep_or_wake`` is a timed wait
that an event cuts short (a stop, new work).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

from shared.clock import Clock, RealClock


class Backoff:
    """Delays for successive failures; ``reset`` after a success."""

    def __init__(
        self,
        base: float,
        cap: float,
        *,
        clock: Clock | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base <= 0 or cap < base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base {base}, cap {cap}")
        self.base = base
        self.cap = cap
        self.clock: Clock = clock or RealClock()
        self.rng = rng
        self.failures = 0  # since the last reset

    def ceiling(self) -> float:
        """The largest delay the next failure can wait: ``min(cap, base * 2**failures)``."""
        return min(self.cap, self.base * 2.0 ** min(self.failures, 60))

    def next_delay(self) -> float:
        """Count a failure and return how long to wait before the next attempt."""
        ceiling = self.ceiling()
        self.failures += 1
        return ceiling / 2 + self.rng() * ceiling / 2

    async def wait(self) -> float:
        """Count a failure and sleep its delay on the clock; returns the delay."""
        delay = self.next_delay()
        await self.clock.sleep(delay)
        return delay

    def reset(self) -> None:
        self.failures = 0


async def sleep_or_wake(clock: Clock, seconds: float, wake: asyncio.Event) -> bool:
    """Sleep ``seconds`` on ``clock`` unless ``wake`` is set first; True if it was woken."""
    if wake.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waiter = asyncio.ensure_future(wake.wait())
    try:
        await asyncio.wait((sleeper, waiter), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sleeper, waiter):
            task.cancel()
        await asyncio.gather(sleeper, waiter, return_exceptions=True)
    return wake.is_set()
