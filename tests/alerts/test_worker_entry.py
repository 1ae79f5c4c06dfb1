"""``python -m services.alerts.worker`` as a Procfile line: N supervised worker processes, or one."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml

from services.alerts.config import AlertsConfig
from services.alerts.core import workers_origin
from shared.bus import Puller, Pusher
from shared.messages import JobResult, StrategyJob, TickerInput
from tests.e2e.pipeline import children, wait_gone
from tests.helpers import spawn
from tests.ports import tcp_endpoint

BAR = TickerInput(open=0.4, high=0.6, low=0.4, close=0.6, prev_close=0.4)
_job_ids = itertools.count()


def price_cross_job() -> StrategyJob:
    return StrategyJob(
        job_id=f"j{next(_job_ids)}",
        strategy="cross",
        kind="price_cross",
        bucket_ns=0,
        tickers=["pm.a"],
        params={"level": 0.5},
        inputs={"pm.a": BAR},
    )


class Ventilator:
    """The service's two sockets, bound: jobs out, results back, counted."""

    def __init__(self, jobs: str, results: str) -> None:
        self.pusher = Pusher(jobs, bind=True, linger_ms=0)
        self.puller = Puller(results, bind=True)
        self.sent = 0
        self.answered = 0

    async def results(self, timeout: float) -> list[JobResult]:
        got = [r for r in await self.puller.recv_batch(timeout=timeout) if isinstance(r, JobResult)]
        self.answered += len(got)
        assert all(r.ok for r in got), got
        return got

    async def until_answered_by(self, names: set[str], timeout: float = 30.0) -> set[str]:
        """Push jobs until a worker of each name answered one (bounded); every name that answered."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen: set[str] = set()
        while not names <= seen:
            assert loop.time() < deadline, f"answered: {seen}, expected {names}"
            for _ in names:  # PUSH deals round-robin over the workers connected
                await self.pusher.send(price_cross_job(), timeout=max(deadline - loop.time(), 0.1))
                self.sent += 1
            seen |= {r.worker for r in await self.results(timeout=0.5)}
        return seen

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait for the result of every job pushed so far."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.answered < self.sent:
            assert loop.time() < deadline, f"{self.sent - self.answered} job(s) unanswered"
            await self.results(timeout=max(deadline - loop.time(), 0.1))

    def close(self) -> None:
        self.pusher.close(0)
        self.puller.close()


@pytest.fixture
async def endpoints() -> AsyncIterator[tuple[str, str, Ventilator]]:
    jobs, results = tcp_endpoint(), tcp_endpoint()
    vent = Ventilator(jobs, results)
    try:
        yield jobs, results, vent
    finally:
        vent.close()


CROSS = {"id": "cross", "kind": "price_cross", "params": {"level": 0.5}}


def write_config(tmp_path: Path, jobs: str, results: str, workers: int, metrics_port: int = 0) -> Path:
    section = {
        "jobs": jobs,
        "results": results,
        "workers": workers,
        "spawn_workers": False,
        "worker_metrics_port": metrics_port,
        "strategies": [CROSS],  # workers run only what their config names
    }
    path = tmp_path / "poolwire.yaml"
    path.write_text(yaml.safe_dump({"alerts": section}))
    return path


def worker_name(pid: int) -> str:
    args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    return args[args.index(b"--name") + 1].decode()


async def stop(proc: subprocess.Popen[str]) -> tuple[float, str]:
    """SIGTERM; the exit must be clean and within 10 s. Returns how long it took and stderr."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.to_thread(proc.communicate, timeout=15)
    took = time.monotonic() - t0
    assert proc.returncode == 0, err
    assert took < 10, err
    return took, err


@pytest.mark.slow
async def test_n_workers_supervised_replaced_after_sigkill_and_stopped_by_sigterm(
    tmp_path: Path, endpoints: tuple[str, str, Ventilator]
) -> None:
    jobs, results, vent = endpoints
    path = write_config(tmp_path, jobs, results, workers=2)
    with spawn("-m", "services.alerts.worker", "--config", str(path)) as proc:
        names = {"alerts-worker-0", "alerts-worker-1"}
        assert await vent.until_answered_by(names) == names
        pids = children(proc.pid)
        assert len(pids) == 2, pids

        # one worker killed: the entry starts another under the same name, and stays up itself
        await vent.drain()  # any result from now on is a live worker's
        victim = pids[0]
        name = worker_name(victim)
        os.kill(victim, signal.SIGKILL)
        await wait_gone([victim], 10)
        await vent.until_answered_by({name})
        assert proc.poll() is None
        now = children(proc.pid)
        assert len(now) == 2 and victim not in now, now

        _, err = await stop(proc)
        await wait_gone(now, 1)  # reaped by the entry before it exited
    assert f"pid {victim}) exited with -9" in err, err
    assert "stopped 2 alert worker(s); 1 restart(s)" in err, err


@pytest.mark.slow
async def test_named_worker_is_one_process(tmp_path: Path, endpoints: tuple[str, str, Ventilator]) -> None:
    jobs, results, vent = endpoints
    path = write_config(tmp_path, jobs, results, workers=3)
    with spawn("-m", "services.alerts.worker", "--config", str(path), "--name", "solo") as proc:
        assert await vent.until_answered_by({"solo"}) == {"solo"}
        assert children(proc.pid) == []
        await stop(proc)


@pytest.mark.slow
def test_entry_without_workers_to_run_says_so(tmp_path: Path) -> None:
    path = tmp_path / "poolwire.yaml"
    path.write_text(yaml.safe_dump({"alerts": {"workers": 0}}))
    with spawn("-m", "services.alerts.worker", "--config", str(path)) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "alerts.workers is 0" in err, err


def test_service_says_where_its_workers_come_from() -> None:
    jobs = "tcp://127.0.0.1:5581"
    assert workers_origin(AlertsConfig(jobs=jobs, workers=3)) == (
        "spawned 3 workers on tcp://127.0.0.1:5581, restarted when they exit"
    )
    assert workers_origin(AlertsConfig(jobs=jobs, workers=2, spawn_workers=False)).startswith(
        "expecting 2 external workers on tcp://127.0.0.1:5581"
    )
    assert workers_origin(AlertsConfig(jobs=jobs, workers=0)).startswith(
        "expecting external workers on tcp://127.0.0.1:5581"
    )
