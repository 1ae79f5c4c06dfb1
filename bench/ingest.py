"""ingest benchmarks: decode + normalize + publish rate, a 400-asset subscribe, memory per asset.

Noisy on a shared 2-core machine: read the figures as orders of magnitude.
"""

from __future__ import annotations

import asyncio
import gc
import json
import statistics
import time
import tracemalloc
from typing import Any

import aiohttp
from aiohttp import web

from services.ingest.protocol import initial_subscribe_frame
from services.ingest.registry import MarketRegistry
from services.ingest.router import Router
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer
from shared.bus import Publisher


def _frames(n_assets: int, steps: int) -> tuple[MarketSim, str, list[str]]:
    sim = MarketSim(n_assets, seed=5)
    dump = json.dumps([a.book_event() for a in sim.assets.values()], separators=(",", ":"))
    frames = []
    for i in range(steps):
        for ev in sim.step(1_700_000_000_000 + i):
            frames.append(json.dumps(ev, separators=(",", ":")))
    return sim, dump, frames


async def _rate(
    verify: bool, frames: list[str], sim: MarketSim, dump: str, endpoint: str
) -> tuple[float, float]:
    pub = Publisher(endpoint, service="ingest", heartbeat_interval=0)
    router = Router(pub.publish, verify_hashes=verify)
    router.assign(sim.assets, "c1")
    router.handle_frame("c1", dump)
    handle = router.handle_frame
    best = (0.0, 0.0)
    for _ in range(3):
        events0, pub0 = router.stats.updates, router.stats.published
        t0 = time.perf_counter()
        for i, text in enumerate(frames):
            handle("c1", text)
            if i % 64 == 0:
                pub.flush()
        pub.flush()
        dt = time.perf_counter() - t0
        # a market update: each price_change entry and each trade (a frame holds ~1.9 of them)
        rate = (router.stats.updates - events0) / dt
        if rate > best[0]:
            best = (rate, (router.stats.published - pub0) / dt)
    await pub.close()
    return best


async def _subscribe_400(rounds: int = 7) -> float:
    sim = MarketSim(400, seed=9)
    server = PolymarketServer(sim, events_per_s=0)
    runner = web.AppRunner(server.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    url = f"http://127.0.0.1:{port}/ws/market"
    assets = list(sim.assets)
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            router = Router(lambda t, m: None)
            router.assign(assets, "c1")
            t0 = time.perf_counter()
            async with session.ws_connect(url, max_msg_size=0) as ws:
                await ws.send_str(initial_subscribe_frame(assets))
                msg = await ws.receive(timeout=10)
                router.handle_frame("c1", msg.data)
                times.append(time.perf_counter() - t0)
            assert router.stats.by_type.get("book") == 400
    await runner.cleanup()
    return statistics.median(times) * 1000


def _memory_per_asset(n_assets: int = 20_000, conns: int = 50) -> float:
    sim = MarketSim(n_assets, seed=3)
    books = [json.dumps([a.book_event()], separators=(",", ":")) for a in sim.assets.values()]
    ids = list(sim.assets)
    del sim
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    registry = MarketRegistry()
    router = Router(lambda t, m: None, verify_hashes=False)
    registry.add(ids)
    per = n_assets // conns
    for c in range(conns):
        batch = registry.take_pending_batch(per)
        registry.mark_subscribed(batch, f"c{c}")
        router.assign(batch, f"c{c}")
    owner = {a: st.owner for a, st in router.assets.items()}
    for text, asset in zip(books, ids, strict=True):
        router.handle_frame(owner[asset], text)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del books
    return (after - before) / n_assets


def run() -> dict[str, dict[str, Any]]:
    sim, dump, frames = _frames(400, 40_000)

    async def rates() -> tuple[tuple[float, float], tuple[float, float], float]:
        with_hash = await _rate(True, frames, sim, dump, "tcp://127.0.0.1:25591")
        no_hash = await _rate(False, frames, sim, dump, "tcp://127.0.0.1:25592")
        sub = await _subscribe_400()
        return with_hash, no_hash, sub

    (rate_h, _pub_h), (rate_n, pub_n), sub_ms = asyncio.run(rates())
    mem = _memory_per_asset()
    realistic = 5_000.0  # updates/s over 20 000 assets: a busy day on Polymarket
    return {
        "ingest.msgs_per_s": {"value": rate_n, "unit": "updates/s", "goal": ">= 150000"},
        "ingest.msgs_per_s_hash_checked": {"value": rate_h, "unit": "updates/s", "goal": ""},
        "ingest.published_per_s": {"value": pub_n, "unit": "msgs/s", "goal": ""},
        "ingest.subscribe_400_ms": {"value": sub_ms, "unit": "ms", "goal": "<= 100"},
        "ingest.bytes_per_asset": {"value": mem, "unit": "B", "goal": "<= 8192"},
        "ingest.cpu_pct_at_5k_updates_s": {"value": 100.0 * realistic / rate_h, "unit": "%", "goal": "<= 50"},
    }
