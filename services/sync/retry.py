"""Startup phases that need the node (a cold start's scrape, a checkpoint's resume) retried until
they succeed: a node that fails half-way through costs an attempt, never the service.

``shared.backoff.Backoff`` between attempts (capped exponential, equal jitter: restarted services
do not retry in step), each failure counted by phase and logged through ``RateLimitedLog``.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from shared.backoff import Backoff
from shared.clock import Clock
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.startup")

T = TypeVar("T")

PHASES = ("cold_start", "resume")


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
        backoff = Backoff(self.initial, self.maximum, clock=self.clock)
        while True:
            try:
                return await attempt()
            except Exception as exc:
                self.failures[phase] = self.failures.get(phase, 0) + 1
                wait = backoff.next_delay()
                self.skip_log(phase, "%s failed (%r): trying again in %.2f s", phase, exc, wait)
                await self.clock.sleep(wait)
            finally:
                self.skip_log.flush()
