"""The alerts service as a real process against faults: a restart with jobs left pending, worker
processes killed, its SQLite store locked by another process."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import signal
import sqlite3
import subprocess
from collections.abc import Mapping
from functools import partial
from pathlib import Path

import pytest
import yaml

from services.alerts.store_sqlite import SqliteStore
from shared.bus import Publisher, Subscriber
from shared.messages import AlertFired, StrategyJob
from tests.alerts.test_service import FN, pump_until, scrape, stop, write_config
from tests.e2e.pipeline import children
from tests.helpers import spawn
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow
S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M


def only(job: StrategyJob, prevs: Mapping[str, int]) -> list[StrategyJob]:
    """A claim's job maker that makes this one job."""
    return [job]


async def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float = 30.0) -> re.Match[str]:
    """Read the process's stderr line by line until ``pattern`` matches (bounded)."""
    assert proc.stderr is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    seen: list[str] = []
    while True:
        left = deadline - loop.time()
        assert left > 0, f"no line matching {pattern!r} in {timeout} s:\n" + "".join(seen[-30:])
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), left)
        assert line, "stderr closed:\n" + "".join(seen[-30:])
        seen.append(line)
        m = re.search(pattern, line)
        if m:
            return m


async def test_jobs_left_pending_all_go_out_at_once_after_a_restart(tmp_path: Path) -> None:
    source = tcp_endpoint()
    strategies = [
        {
            "id": "echo",
            "kind": "python",
            "function": f"{FN}:fire_all_after_gate",
            "bucket": "1h",
            "universe": ["pm.a"],
        }
    ]
    path, cfg = write_config(tmp_path, source, strategies, workers=2, job_timeout="60s")
    gate = tmp_path / "subscribed"  # the recovered jobs answer only once this test listens
    store = SqliteStore(cfg["sqlite_path"])
    n = 8
    for k in range(n):  # a previous run's claims, their jobs never answered
        job = StrategyJob(
            job_id=f"old-{k}", strategy="echo", kind="python", function=f"{FN}:fire_all_after_gate",
            bucket_ns=B + k * M, tickers=["pm.a"],
        )  # fmt: skip
        store.claim(B + k * M, ["echo"], partial(only, job))
    assert store.pending_jobs() == n
    store.close()
    gate.touch()
    with gate.open() as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # before the service starts: its jobs wait on it
        async with Publisher(source, service="ingest", heartbeat_interval=0.2):
            with spawn(
                "-m", "services.alerts", "--config", str(path), env={"ALERTS_TEST_GATE": str(gate)}
            ) as proc:
                async with Subscriber(cfg["pub"], ["alert."]) as sub:
                    await sub.wait_for_publisher("alerts", timeout=20)
                    fcntl.flock(held, fcntl.LOCK_UN)
                    got: list[AlertFired] = []
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 30  # well inside job_timeout: no job waits it out
                    while len(got) < n:
                        assert loop.time() < deadline, f"{len(got)} of {n} recovered jobs answered"
                        got += [m for _, m in await sub.recv_batch(timeout=1) if isinstance(m, AlertFired)]
                    assert sorted(a.bucket_ns for a in got) == [B + k * M for k in range(n)]
                    m = await scrape(cfg["metrics_port"])
                    assert m['poolwire_alerts_jobs_total{status="recovered"}'] == n
                    assert m['poolwire_alerts_jobs_total{status="timeouts"}'] == 0
                stop(proc)


async def test_a_killed_worker_of_the_service_is_counted(tmp_path: Path) -> None:
    path, cfg = write_config(tmp_path, tcp_endpoint(), [], workers=1)
    with spawn("-m", "services.alerts", "--config", str(path)) as proc:
        await read_until(proc, r"worker alerts-worker-0: jobs from")
        (worker,) = children(proc.pid)
        os.kill(worker, signal.SIGKILL)
        await read_until(proc, rf"pid {worker}\) exited with -9")
        m = await scrape(cfg["metrics_port"])
        assert m['poolwire_alerts_worker_failures_total{kind="process_exit"}'] == 1
        await read_until(proc, r"worker alerts-worker-0: jobs from")  # and started again
        proc.terminate()
        proc.communicate(timeout=15)
        assert proc.returncode == 0


async def test_a_killed_worker_of_the_worker_entry_is_counted(tmp_path: Path) -> None:
    port = free_port()
    section = {"jobs": tcp_endpoint(), "results": tcp_endpoint(), "workers": 2, "spawn_workers": False,
               "worker_metrics_port": port}  # fmt: skip
    path = tmp_path / "poolwire.yaml"
    path.write_text(yaml.safe_dump({"alerts": section}))
    with spawn("-m", "services.alerts.worker", "--config", str(path)) as proc:
        await read_until(proc, r"worker metrics on http://127.0.0.1:\d+/metrics")
        for _ in range(2):
            await read_until(proc, r"worker alerts-worker-\d: jobs from")
        pids = children(proc.pid)
        assert len(pids) == 2
        os.kill(pids[0], signal.SIGKILL)
        await read_until(proc, rf"pid {pids[0]}\) exited with -9")
        m = await scrape(port)
        assert m['poolwire_alerts_worker_failures_total{kind="process_exit"}'] == 1
        assert m["poolwire_alerts_workers_alive"] in (1, 2)
        proc.terminate()
        proc.communicate(timeout=15)
        assert proc.returncode == 0


async def test_a_locked_store_loses_nothing_and_stops_nothing(tmp_path: Path) -> None:
    source = tcp_endpoint()
    strategies = [
        {"id": "once", "kind": "python", "function": f"{FN}:fire_all", "bucket": "1s", "universe": ["pm.a"],
         "frequency": "once"},
    ]  # fmt: skip
    path, cfg = write_config(tmp_path, source, strategies, workers=1)
    async with Publisher(source, service="ingest", heartbeat_interval=0.2) as pub:
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            async with Subscriber(cfg["pub"], ["alert."]) as sub:
                await sub.wait_for_publisher("alerts", timeout=20)
                other = sqlite3.connect(cfg["sqlite_path"], isolation_level=None)
                other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock

                async def published(got: list[tuple[str, AlertFired]]) -> bool:
                    return bool(got)

                got = await pump_until(pub, sub, ["pm.a"], published)
                assert len(got) == 1  # decided and published: its state waits in memory
                m = await scrape(cfg["metrics_port"])
                assert m["poolwire_alerts_store_write_failures_total"] >= 1
                assert m["poolwire_alerts_store_pending_writes"] >= 1
                other.execute("COMMIT")
                other.close()

                async def written(got: list[tuple[str, AlertFired]]) -> bool:
                    m = await scrape(cfg["metrics_port"])
                    return m["poolwire_alerts_store_pending_writes"] == 0

                got = await pump_until(pub, sub, ["pm.a"], written)
                assert got == []  # "once": never again
                assert proc.poll() is None
            stop(proc)
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:  # the state was written
            async with Subscriber(cfg["pub"], ["alert."]) as sub:
                await sub.wait_for_publisher("alerts", timeout=20)

                async def suppressed(got: list[tuple[str, AlertFired]]) -> bool:
                    m = await scrape(cfg["metrics_port"])
                    return m.get('poolwire_alerts_alerts_total{outcome="suppressed"}', 0) >= 1

                assert await pump_until(pub, sub, ["pm.a"], suppressed) == []
            stop(proc)
