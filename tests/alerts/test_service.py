"""The alerts service as a real process with real worker processes, over real sockets."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from shared.bus import Publisher, Subscriber
from shared.messages import AlertFired, Price
from tests.helpers import spawn
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow
FN = "tests.alerts.user_strategies"


def write_config(
    tmp_path: Path, source: str, strategies: list[dict[str, Any]], **alerts: Any
) -> tuple[Path, dict[str, Any]]:
    section = {
        "sub": [source],
        "pub": tcp_endpoint(),
        "jobs": tcp_endpoint(),
        "results": tcp_endpoint(),
        "metrics_port": free_port(),
        "sqlite_path": str(tmp_path / "alerts.sqlite3"),
        "job_timeout": "1s",
        "strategies": strategies,
        **alerts,
    }
    path = tmp_path / "poolwire.yaml"
    path.write_text(yaml.safe_dump({"common": {"data_dir": str(tmp_path)}, "alerts": section}))
    return path, section


async def scrape(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        text = await resp.text()
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(poolwire_alerts_[a-z_]+(?:\{[^}]*\})?) ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


async def pump_until(
    pub: Publisher, sub: Subscriber, symbols: list[str], done: Any, timeout: float = 30.0
) -> list[tuple[str, AlertFired]]:
    """Publish prices for ``symbols`` while collecting alerts, until ``done(alerts)`` (bounded)."""
    got: list[tuple[str, AlertFired]] = []
    price = 0.5

    async def loop() -> None:
        nonlocal price
        while not await done(got):
            price += 0.001
            for s in symbols:
                pub.publish(f"px.{s}", Price(symbol=s, price=price))
            for topic, msg in await sub.recv_batch(timeout=0.05):
                if isinstance(msg, AlertFired):
                    got.append((topic, msg))

    await asyncio.wait_for(loop(), timeout)
    return got


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    return err


async def test_crashing_and_hanging_strategies_cost_one_job_not_the_service(tmp_path: Path) -> None:
    source = tcp_endpoint()
    strategies = [
        {"id": "echo", "kind": "python", "function": f"{FN}:fire_all", "bucket": "1s", "universe": ["pm.a"]},
        {"id": "crash", "kind": "python", "function": f"{FN}:crash", "bucket": "1s", "universe": ["pm.c"]},
        {"id": "hang", "kind": "python", "function": f"{FN}:hang", "bucket": "1s", "universe": ["pm.h"]},
    ]
    path, cfg = write_config(tmp_path, source, strategies, workers=2)
    async with Publisher(source, service="ingest", heartbeat_interval=0.2) as pub:
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            async with Subscriber(cfg["pub"], ["alert."]) as sub:
                await sub.wait_for_publisher("alerts", timeout=20)
                first: dict[str, float] = {}

                async def failed_both(got: list[tuple[str, AlertFired]]) -> bool:
                    if not got:
                        return False
                    m = await scrape(cfg["metrics_port"])
                    first.update(m)
                    return m.get('poolwire_alerts_jobs_total{status="failed"}', 0) >= 2

                # a crashing job (worker exits) and a hanging one (interrupted) each: retried, then failed
                await pump_until(pub, sub, ["pm.a", "pm.c", "pm.h"], failed_both, timeout=40)
                assert first['poolwire_alerts_worker_failures_total{kind="process_exit"}'] >= 1
                assert first['poolwire_alerts_jobs_total{status="retried"}'] >= 2

                # ... and the service still runs the good strategy through (restarted) workers
                seen_after = first['poolwire_alerts_jobs_total{status="done"}']

                async def more_echoes(got: list[tuple[str, AlertFired]]) -> bool:
                    m = await scrape(cfg["metrics_port"])
                    return m['poolwire_alerts_jobs_total{status="done"}'] >= seen_after + 2 and len(got) >= 2

                got = await pump_until(pub, sub, ["pm.a"], more_echoes)
                assert {t for t, _ in got} == {"alert.echo.pm.a"}
                assert all(a.strategy == "echo" and a.symbol == "pm.a" for _, a in got)
            stop(proc)


async def test_once_alert_is_not_repeated_after_restart(tmp_path: Path) -> None:
    source = tcp_endpoint()
    strategies = [
        {"id": "once", "kind": "python", "function": f"{FN}:fire_all", "bucket": "1s", "universe": ["pm.a"],
         "frequency": "once"},
    ]  # fmt: skip
    path, cfg = write_config(tmp_path, source, strategies, workers=1)
    async with Publisher(source, service="ingest", heartbeat_interval=0.2) as pub:
        for run in range(2):
            with spawn("-m", "services.alerts", "--config", str(path)) as proc:
                async with Subscriber(cfg["pub"], ["alert."]) as sub:
                    await sub.wait_for_publisher("alerts", timeout=20)

                    async def suppressed_twice(got: list[tuple[str, AlertFired]]) -> bool:
                        m = await scrape(cfg["metrics_port"])
                        return m.get('poolwire_alerts_alerts_total{outcome="suppressed"}', 0) >= 2

                    async def published(got: list[tuple[str, AlertFired]]) -> bool:
                        return bool(got)

                    got = await pump_until(pub, sub, ["pm.a"], published if run == 0 else suppressed_twice)
                    assert len(got) == (1 if run == 0 else 0), got
                err = stop(proc)
                assert "strategy runs:" in err  # the stop line carries the summary
