"""The deployment run for real: `make run`'s Procfile through honcho, and the metric names the
Grafana dashboard reads, scraped from the running services."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from contextlib import ExitStack
from pathlib import Path

import aiohttp
import pytest

from shared.bus import Subscriber
from tests.deploy.deployfiles import DASHBOARD, ROOT
from tests.helpers import spawn
from tests.ingest.test_integration import simulator
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent


async def scrape(port: int) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        return await r.text()


def metric_names(text: str) -> set[str]:
    """Every sample name the exposition can carry, families without samples yet included."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
            names |= {name + s for s in suffixes}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def value(text: str, sample: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(sample + " ") or line.startswith(sample + "{")
    )


def service_env(data: Path) -> dict[str, str]:
    """Private ports and paths for every service, as POOLWIRE_ overrides."""
    ingest_pub, sync_pub, registry_pub = tcp_endpoint(), tcp_endpoint(), tcp_endpoint()
    return {
        "POOLWIRE_COMMON__DATA_DIR": str(data),
        "POOLWIRE_COMMON__HEARTBEAT_INTERVAL": "200ms",
        "POOLWIRE_INGEST__PUB": ingest_pub,
        "POOLWIRE_INGEST__PULL": tcp_endpoint(),
        "POOLWIRE_INGEST__SNAPSHOT": tcp_endpoint(),
        "POOLWIRE_INGEST__METRICS_PORT": str(free_port()),
        "POOLWIRE_SYNC__PUB": sync_pub,
        "POOLWIRE_SYNC__PULL": tcp_endpoint(),
        "POOLWIRE_SYNC__SNAPSHOT": tcp_endpoint(),
        "POOLWIRE_SYNC__METRICS_PORT": str(free_port()),
        "POOLWIRE_REGISTRY__PUB": registry_pub,
        "POOLWIRE_REGISTRY__PULL": tcp_endpoint(),
        "POOLWIRE_REGISTRY__SNAPSHOT": tcp_endpoint(),
        "POOLWIRE_REGISTRY__METRICS_PORT": str(free_port()),
        "POOLWIRE_REGISTRY__PRICES": json.dumps([ingest_pub, sync_pub]),
        "POOLWIRE_ALERTS__PUB": tcp_endpoint(),
        "POOLWIRE_ALERTS__JOBS": tcp_endpoint(),
        "POOLWIRE_ALERTS__RESULTS": tcp_endpoint(),
        "POOLWIRE_ALERTS__METRICS_PORT": str(free_port()),
        "POOLWIRE_ALERTS__SUB": json.dumps([ingest_pub, sync_pub, registry_pub]),
        "POOLWIRE_ALERTS__WORKERS": "1",
    }


async def test_make_run_without_a_chain_runs_polymarkets_half(tmp_path: Path) -> None:
    async with simulator(60, events_per_s=300) as (_server, ws_url, http_url):
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWIRE_")}
        overrides = service_env(tmp_path)
        env |= overrides | {
            "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",  # as `make run` does
            "POOLWIRE_INGEST__WS_URL": ws_url,
            "POOLWIRE_INGEST__GAMMA_URL": http_url,
            "POOLWIRE_INGEST__REST_URL": http_url,
            "POOLWIRE_INGEST__MIN_PENDING": "1",
            "PYTHONUNBUFFERED": "1",
        }
        honcho = await asyncio.create_subprocess_exec(
            str(VENV_BIN / "honcho"),
            "-f",
            "Procfile",
            "-e",
            os.devnull,  # not a developer's .env
            "start",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert honcho.stdout is not None
        lines: list[str] = []
        said = asyncio.Event()

        async def read() -> None:
            assert honcho.stdout is not None
            async for raw in honcho.stdout:
                lines.append(raw.decode(errors="replace"))
                if "sync is not running" in lines[-1]:
                    said.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            # sync says what it lacks and stays idle; the rest runs on Polymarket's data
            await asyncio.wait_for(said.wait(), 30)
            text = "".join(lines)
            assert "no block source: set sync.rpc_urls" in text and "sync.exex_socket" in text
            pubs = [overrides[f"POOLWIRE_{s}__PUB"] for s in ("INGEST", "REGISTRY", "ALERTS")]
            async with Subscriber(pubs, ["px."]) as sub:
                for service in ("ingest", "registry", "alerts"):
                    await sub.wait_for_publisher(service, timeout=30)
                # prices flow from ingest, and registry and alerts read them (paced by the stream)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 30
                while True:
                    got = await sub.recv_batch(timeout=1)
                    alerts = await scrape(int(overrides["POOLWIRE_ALERTS__METRICS_PORT"]))
                    registry = await scrape(int(overrides["POOLWIRE_REGISTRY__METRICS_PORT"]))
                    if (
                        got
                        and value(alerts, "poolwire_alerts_ticker_updates_total") > 0
                        and value(registry, "poolwire_registry_prices_total") > 0
                    ):
                        break
                    assert loop.time() < deadline, "prices did not reach registry and alerts"
                assert got[0][0].startswith("px.pm.")
        finally:
            if honcho.returncode is None:
                honcho.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(honcho.wait(), 30)
            finally:
                if honcho.returncode is None:
                    honcho.kill()
                    await honcho.wait()
                await asyncio.wait_for(reader, 10)
        text = "".join(lines)
        for name in ("ingest", "registry", "alerts", "worker"):  # worker: alerts' supervised workers
            assert re.search(rf"{name}\.1 stopped \(rc=0\)", text), text[-3000:]


async def test_dashboard_reads_metrics_the_services_export(tmp_path: Path) -> None:
    env = service_env(tmp_path)
    env["POOLWIRE_SYNC__RPC_URLS"] = json.dumps([f"http://127.0.0.1:{free_port()}"])  # nobody there
    env["POOLWIRE_INGEST__MIN_PENDING"] = "1"
    env["POOLWIRE_ALERTS__WORKERS"] = "0"
    services = ("ingest", "sync", "registry", "alerts")
    exported: set[str] = set()
    pubs = [env[f"POOLWIRE_{s.upper()}__PUB"] for s in services]
    async with simulator(20, events_per_s=200) as (_server, ws_url, http_url):
        env |= {
            "POOLWIRE_INGEST__WS_URL": ws_url,
            "POOLWIRE_INGEST__GAMMA_URL": http_url,
            "POOLWIRE_INGEST__REST_URL": http_url,
        }
        with ExitStack() as stack:
            sub = stack.enter_context(Subscriber(pubs, ["px."]))
            procs = [stack.enter_context(spawn("-m", f"services.{s}", env=env)) for s in services]
            for s in services:  # a heartbeat: the service runs, so its metrics server does
                await sub.wait_for_publisher(s, timeout=30)
            assert await sub.recv_batch(timeout=30), "no price from ingest"  # its per-event figures exist
            for s in services:
                exported |= metric_names(await scrape(int(env[f"POOLWIRE_{s.upper()}__METRICS_PORT"])))
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                _, err = await asyncio.to_thread(proc.communicate, timeout=15)
                assert proc.returncode == 0, err
    used = set(re.findall(r"poolwire_[a-z0-9_]+", DASHBOARD.read_text()))
    assert len(used) > 40
    assert used - exported == set(), "the dashboard reads metrics no service exports"
