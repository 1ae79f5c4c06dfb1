"""Startup phases that need the node (a cold start's scrape, a checkpoint's resume) retried until
they succeed: a node that fails half-way through costs an attempt, never the service.

Capped exponential backoff with equal jitter (half fixed, half random: restarted services do not
retry in step), each failure counted by phase and logged through ``RateLimitedLog``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.clock import Clock
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.startup")

T = TypeVar("T")

PHASES = ("cold_start", "resume")


def jittered(delay: float, rng: Callable[[], float] = random.random) -> float:
    return delay / 2 + rng() * delay / 2


class StartupRetry:
    def __init__(self, clock: Clock, initial: float, maximum: float) -> None:
        self.clock = clock
        self.initial = initial
        self.maximum = maximum
        self.failures = dict.fromkeys(PHASES, 0)
        self.skip_log = RateLimitedLog(log)

    async def run(self, phase: str, attempt: Callable[[], Awaitable[T]]) -> T:
        """``attempt()`` until it returns; any exception (JSON-RPC down, garbage replies, a buffer
        that kept overflowing) is counted under ``phase`` and the attempt made again."""
        delay = self.initial
        while True:
            try:
                return await attempt()
            except Exception as exc:
                self.failures[phase] = self.failures.get(phase, 0) + 1
                wait = jittered(delay)
                self.skip_log(phase, "%s failed (%r): trying again in %.2f s", phase, exc, wait)
                await self.clock.sleep(wait)
                delay = min(delay * 2, self.maximum)
            finally:
                self.skip_log.flush()
