"""Where the registry's event loop goes (issue 19, timers on time): each piece of the loops' work
timed by stage, the pieces over ``SLOW_S`` counted and logged (debug) with what they did, and a
probe that counts how often the loop did not turn for a while, whatever held it (a stage, another
thread holding the GIL, the OS not running the process). The two counts side by side tell a slow
stage from a process that was not running."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from prometheus_client import Histogram
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

log = logging.getLogger("poolwire.registry.turns")

SLOW_S = 0.02  # a piece of work this long is counted and logged
PROBE_S = 0.01  # the probe's sleep
STALL_MS = (5, 20, 50, 100)  # the probe woke this much later than asked


class Turns(Collector):
    def __init__(self, processing: Histogram) -> None:
        self.processing = processing
        self._children = {
            stage: processing.labels(stage)
            for stage in ("prices", "detector_events", "expiry", "candles", "store", "outbox")
        }
        self.slow: dict[str, int] = dict.fromkeys(self._children, 0)
        self.stalls = [0] * len(STALL_MS)
        self.busy = [0] * len(STALL_MS)  # the same, counting the loop thread's CPU time only
        self.gc_slow = [0, 0, 0]  # collections over 5 ms, by generation
        self.wakes_late = [0] * len(STALL_MS)  # the expiry loop woke this late after a deadline
        self.by_expiry_loop = 0  # timers the expiry loop handled (the others: the prices')
        self._gc_t0 = 0.0

    def start(self) -> float:
        """A piece of work begins: returns its start (perf_counter), for :meth:`done`. (Not its
        CPU time: time.thread_time() is a system call, ~3 us here, and took a fifth of the loop's
        CPU at ~20 000 pieces a second; the probe tells CPU from waiting.)"""
        return time.perf_counter()

    def done(self, stage: str, t0: float, what: str = "", *args: object) -> float:
        """The piece of ``stage`` begun at ``t0`` (perf_counter) is done: its time observed, and
        counted and logged if slow (``what % args``: what it did)."""
        took = time.perf_counter() - t0
        child = self._children.get(stage)
        if child is None:
            child = self._children[stage] = self.processing.labels(stage)
        child.observe(took)
        if took > SLOW_S:
            self.slow[stage] = self.slow.get(stage, 0) + 1
            if log.isEnabledFor(logging.DEBUG):
                log.debug("slow turn: %s %.1f ms: " + what, stage, took * 1e3, *args)
        return took

    async def probe(self) -> None:
        """Sleep PROBE_S again and again; count each wake later than asked by STALL_MS."""
        stalls = self.stalls
        while True:
            t0, c0 = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_S)
            late_ms = (time.perf_counter() - t0 - PROBE_S) * 1e3
            if late_ms < STALL_MS[0]:
                continue
            mine = time.thread_time() - c0
            for i, bound in enumerate(STALL_MS):
                if late_ms >= bound:
                    stalls[i] += 1
                if mine * 1e3 >= bound:
                    self.busy[i] += 1
            if late_ms >= STALL_MS[1] and log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "the loop did not turn for %.1f ms (its thread on the CPU %.1f ms of it)",
                    late_ms + PROBE_S * 1e3,
                    mine * 1e3,
                )

    def woke(self, late_ms: float) -> None:
        """The expiry loop woke ``late_ms`` after the deadline it slept for."""
        for i, bound in enumerate(STALL_MS):
            if late_ms < bound:
                break
            self.wakes_late[i] += 1

    def on_gc(self, phase: str, info: dict[str, int]) -> None:
        """gc.callbacks: count (and log) the cyclic GC's collections over 5 ms."""
        if phase == "start":
            self._gc_t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._gc_t0
        if took > 0.005:
            self.gc_slow[info["generation"]] += 1
            log.debug("gc: generation %d took %.1f ms", info["generation"], took * 1e3)

    def collect(self) -> Iterable[Metric]:
        slow = CounterMetricFamily(
            "poolwire_registry_slow_turns",
            f"Pieces of the loops' work over {SLOW_S * 1e3:.0f} ms, by stage (each logged at debug level)",
            labels=["stage"],
        )
        for stage, n in dict(self.slow).items():
            slow.add_metric([stage], n)
        yield slow
        stalls = CounterMetricFamily(
            "poolwire_registry_loop_stalls",
            f"Times a {PROBE_S * 1e3:.0f} ms sleep on the event loop woke at least this late",
            labels=["over"],
        )
        busy = CounterMetricFamily(
            "poolwire_registry_loop_busy",
            "Of those, the times the loop's own thread was on the CPU at least this long meanwhile",
            labels=["over"],
        )
        for bound, n, m in zip(STALL_MS, list(self.stalls), list(self.busy), strict=True):
            stalls.add_metric([f"{bound}ms"], n)
            busy.add_metric([f"{bound}ms"], m)
        yield stalls
        yield busy
        wakes = CounterMetricFamily(
            "poolwire_registry_expiry_wake_delays",
            "Times the expiry loop woke at least this late after the deadline it slept for",
            labels=["over"],
        )
        for bound, n in zip(STALL_MS, list(self.wakes_late), strict=True):
            wakes.add_metric([f"{bound}ms"], n)
        yield wakes
        yield CounterMetricFamily(
            "poolwire_registry_timers_by_expiry_loop",
            "Timers (TTL and grace ends) the expiry loop handled; a price handles the others",
            value=self.by_expiry_loop,
        )
        gcs = CounterMetricFamily(
            "poolwire_registry_gc_slow", "Cyclic GC collections over 5 ms", labels=["generation"]
        )
        for gen, n in enumerate(list(self.gc_slow)):
            gcs.add_metric([str(gen)], n)
        yield gcs
