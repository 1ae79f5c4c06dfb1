"""User strategies (``module:function``) for the worker tests: one fires, one crashes, one hangs."""

from __future__ import annotations

import os
from collections.abc import Iterator

from services.alerts.strategies import Outcome, Signal
from shared.messages import StrategyJob


def fire_all(job: StrategyJob) -> Iterator[Signal]:
    for t in job.tickers:
        yield Signal(t, f"{t} moved", 1.0)


def discover_first(job: StrategyJob) -> Outcome:
    used = sorted(job.tickers)[:1]
    return Outcome([Signal(t, "used") for t in used], used_symbols=used)


def crash(job: StrategyJob) -> None:
    os._exit(3)  # the worker process dies with the job


def hang(job: StrategyJob) -> None:
    while True:
        pass


def boom(job: StrategyJob) -> None:
    raise RuntimeError("strategy bug")
