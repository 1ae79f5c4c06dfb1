"""The node (JSON-RPC) fails while the real sync process needs it to start: half-way through a cold
start's scrape, or while resuming from a checkpoint. Each failed attempt is counted and retried
with backoff; the service keeps heartbeating, never exits, and is exact once the node is back."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import tempfile
from collections.abc import Callable

from aiohttp import web

from shared.bus import Subscriber
from tests.helpers import eventually, polling, spawn
from tests.ports import free_port
from tests.sync.chain import Chain, Trader
from tests.sync.test_bad_rpc import FaultyProxy
from tests.sync.test_fuzz_service import scrape
from tests.sync.test_rpc_service import Watch, assert_state, config

FAST = {"rpc_retries": 1, "rpc_timeout": "2s", "backoff_initial": "20ms", "backoff_max": "200ms"}


class Outage(FaultyProxy):
    """A clean proxy that answers 503 to every request ``down`` selects (all of them by default);
    ``trip``: a request that puts the node down (its own answer included)."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, faults=["ok"])
        self.down = False
        self.selects: Callable[[bytes], bool] = lambda body: True
        self.trip: Callable[[bytes], bool] = lambda body: False
        self.refused = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if not self.down and self.trip(body):
            self.down = True
        if self.down and self.selects(body):
            self.refused += 1
            return web.Response(status=503, text="node down")
        return await super().handle(request)


async def until_metric(
    port: int, name: str, value: float, proc: subprocess.Popen[str], timeout: float = 30
) -> dict[str, float]:
    figures: dict[str, float] = {}

    async def ask() -> None:
        with contextlib.suppress(OSError):  # the metrics server is not up yet
            figures.update(await asyncio.to_thread(scrape, port))

    await eventually(
        lambda: figures.get(name, 0) >= value,
        wake=polling(ask),
        timeout=timeout,
        what=f"{name} >= {value}",
        state=lambda: figures.get(name),
        process=proc,
    )
    return figures


async def heartbeats(pub: str, proc: subprocess.Popen[str]) -> None:
    """A fresh subscriber hears the service's heartbeat (it is alive and publishing)."""
    with Subscriber(pub, ["sync.health"]) as sub:
        await sub.wait_for_publisher("sync", timeout=10)
    assert proc.poll() is None


async def test_the_node_fails_mid_scrape_at_cold_start_then_comes_back(chain: Chain) -> None:
    trader = Trader(chain, seed=71)
    for _ in range(2):
        trader.block(8)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        async with Outage(chain.a.url) as node:
            node.trip = lambda body: b'"eth_call"' in body  # the scrape's first call: down from there
            path, eps = config(chain, tmp, rpc_urls=[node.url], metrics_port=port, **FAST)
            watch = Watch(eps["pub"])
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    name = 'poolwire_sync_startup_failures_total{phase="cold_start"}'
                    await until_metric(port, name, 3, proc)
                    await heartbeats(eps["pub"], proc)
                    trader.block(8)  # the chain moves on during the outage
                    node.down, node.trip = False, lambda body: False
                    await watch.until_head(chain, proc, nudge=True)
                    await assert_state(chain, eps["snapshot"])
                    trader.block(8)
                    await watch.until_head(chain, proc)
                    await assert_state(chain, eps["snapshot"])
                    figures = await asyncio.to_thread(scrape, port)
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
            finally:
                watch.sub.close()
    assert proc.returncode == 0, err[-3000:]
    assert node.refused > 0
    assert figures[name] >= 3
    assert figures['poolwire_sync_startup_failures_total{phase="resume"}'] == 0
    assert 0 < err.count("cold_start failed") <= 10  # logged rate-limited: at most a burst a minute


async def test_the_node_fails_during_the_checkpoint_resume_then_comes_back(chain: Chain) -> None:
    trader = Trader(chain, seed=72)
    trader.block(8)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        async with Outage(chain.a.url) as node:
            path, eps = config(chain, tmp, rpc_urls=[node.url], metrics_port=port, **FAST)
            watch = Watch(eps["pub"])
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    await watch.sub.wait_for_publisher("sync", timeout=20)
                    trader.block(8)
                    await watch.until_head(chain, proc)
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
                    assert "checkpoint written at block" in err
                for _ in range(3):
                    trader.block(8)
                # the node answers eth_chainId (so the checkpoint's chain is known), then nothing
                node.selects = lambda body: b'"eth_chainId"' not in body
                node.down = True
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    name = 'poolwire_sync_startup_failures_total{phase="resume"}'
                    await until_metric(port, name, 3, proc)
                    await heartbeats(eps["pub"], proc)
                    node.down = False
                    await watch.until_head(chain, proc, nudge=True)
                    await assert_state(chain, eps["snapshot"])
                    figures = await asyncio.to_thread(scrape, port)
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
            finally:
                watch.sub.close()
    assert proc.returncode == 0, err[-3000:]
    assert figures[name] >= 3
    assert figures['poolwire_sync_startup_failures_total{phase="cold_start"}'] == 0
    assert "resumed from the checkpoint" in err and "scraped" not in err  # the checkpoint, not a scrape
    assert 0 < err.count("resume failed") <= 10
