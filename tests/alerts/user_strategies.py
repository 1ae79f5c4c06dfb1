"""User strategies (``module:function``) for the worker tests: one fires, one crashes, one hangs."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

from services.alerts.strategies import Outcome, Signal
from shared.messages import StrategyJob


def fire_all(job: StrategyJob) -> Iterator[Signal]:
    for t in job.tickers:
        yield Signal(t, f"{t} moved", 1.0)


def fire_all_after_gate(job: StrategyJob) -> Iterator[Signal]:
    """``fire_all`` once the file named by ``ALERTS_TEST_GATE`` exists (bounded): a test opens the gate
    when its subscriber is in, so no alert goes out before anyone listens (PUB/SUB's slow joiner)."""
    gate = os.environ["ALERTS_TEST_GATE"]
    deadline = time.monotonic() + 30
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)  # a worker process polling a file: nothing else to wait on
    yield from fire_all(job)


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
