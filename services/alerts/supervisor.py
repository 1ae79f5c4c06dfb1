"""Keeps N worker processes running: a worker that exits (crash, watchdog) is started again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from shared.backoff import Backoff
from shared.clock import Clock
from shared.metrics import new_registry, serve

log = logging.getLogger("poolwire.alerts.supervisor")

# restart delays: shared.backoff's capped doubling with jitter, 0.1-0.2 s at first, at most 5 s
RESTART_DELAY_S = 0.2
RESTART_DELAY_MAX_S = 5.0


class WorkerPool:
    def __init__(self, count: int, args: Sequence[str], clock: Clock) -> None:
        self.count = count
        self.args = list(args)
        self.clock = clock
        self.restarts = 0
        self.exits = 0
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    async def _spawn(self, index: int) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.alerts.worker",
            *self.args,
            "--name",
            f"alerts-worker-{index}",
            "--parent",
            str(os.getpid()),
            env=os.environ.copy(),
        )
        self.procs[index] = proc
        return proc

    async def _keep(self, index: int) -> None:
        backoff = Backoff(RESTART_DELAY_S, RESTART_DELAY_MAX_S, clock=self.clock)
        while not self._stopping:
            proc = await self._spawn(index)
            code = await proc.wait()
            if self._stopping:
                return
            self.exits += 1
            self.restarts += 1
            delay = backoff.next_delay()
            log.warning(
                "worker %d (pid %d) exited with %s: starting another in %.1f s (restart %d)",
                index,
                proc.pid,
                code,
                delay,
                self.restarts,
            )
            await self.clock.sleep(delay)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._keep(i), name=f"alerts-worker-{i}") for i in range(self.count)]

    @property
    def alive(self) -> int:
        return sum(1 for p in self.procs.values() if p.returncode is None)

    async def stop(self, grace: float = 3.0) -> None:
        self._stopping = True
        await self._end_all(grace)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._end_all(grace)  # one spawned while we were stopping

    async def _end_all(self, grace: float) -> None:
        """SIGTERM every worker, SIGKILL those still running ``grace`` s later (one deadline for all)."""
        procs = [p for p in self.procs.values() if p.returncode is None]
        if not procs:
            return
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        await asyncio.wait([asyncio.ensure_future(p.wait()) for p in procs], timeout=grace)
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        await asyncio.gather(*(p.wait() for p in procs))


class PoolCollector(Collector):
    """The worker entry's own metrics: ``worker_failures_total{kind=process_exit}``, ``workers_alive``."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        wf = CounterMetricFamily("poolwire_alerts_worker_failures", "Worker failures", labels=["kind"])
        wf.add_metric(["process_exit"], self.pool.exits)
        yield wf
        alive = GaugeMetricFamily("poolwire_alerts_workers_alive", "Worker processes running")
        alive.add_metric([], self.pool.alive)
        yield alive


def serve_pool_metrics(pool: WorkerPool, host: str, port: int) -> Any:
    """Serve the pool's metrics on ``host:port`` (0: off); a port in use is logged, never fatal."""
    if port <= 0:
        return None
    registry = new_registry()
    registry.register(PoolCollector(pool))
    try:
        server = serve(registry, port, host or "127.0.0.1")
    except OSError as exc:
        log.error("cannot serve worker metrics on %s:%d: %s", host, port, exc)
        return None
    log.info("worker metrics on http://%s:%d/metrics", host, port)
    return server
