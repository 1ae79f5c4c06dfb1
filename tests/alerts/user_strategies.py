"""User strategies (``module:function``) for the worker tests: one fires, one crashes, one hangs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator

from services.alerts.strategies import Outcome, Signal
from shared.messages import StrategyJob


def fire_all(job: StrategyJob) -> Iterator[Signal]:
    for t in job.tickers:
        yield Signal(t, f"{t} moved", 1.0)


def fire_all_after_gate(job: StrategyJob) -> Iterator[Signal]:
    """``fire_all`` once the test lets go of its lock on the file named by ``ALERTS_TEST_GATE``: a
    test holds it until its subscriber is in, so no alert goes out before anyone listens (PUB/SUB's
    slow joiner). A shared lock waits on the exclusive one; the job timeout bounds it."""
    with open(os.environ["ALERTS_TEST_GATE"]) as gate:
        fcntl.flock(gate, fcntl.LOCK_SH)
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
