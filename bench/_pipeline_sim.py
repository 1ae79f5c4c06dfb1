"""The outside world for ``bench/pipeline.py``: the simulator's Polymarket + Gamma servers, in a
process of their own, with a rate knob and timed probe ticks.

    python -m bench._pipeline_sim WS_PORT HTTP_PORT ASSETS PROBES SEED

- Background: ``MarketSim`` books moving at ``rate`` market updates/s (price_change entries and
  trades, as ingest counts them), sent by the simulator's own server code, hashes and all.
- Probes: ``PROBES`` extra markets whose YES asset nothing else moves (books 0.19 / 0.21, mid
  0.20). A probe is one ``best_bid_ask`` frame that moves an asset's mid into 0.45-0.55, where the
  benchmark put a zone; ``time.time_ns()`` is taken right before the frame is written to the
  socket. Half a cycle later the asset is moved back out to 0.20, so the next probe touches again.
- ``POST /bench/rate {"updates_per_s": R, "probes_per_s": P}`` sets the load; ``GET /bench/state``
  returns updates sent, subscribed assets and every probe sent as ``[asset, price, send_ns]``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any

import msgspec
import uvloop
from aiohttp import web

from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer

_JSON = msgspec.json.Encoder()


UPDATES_PER_STEP = 2.15  # one MarketSim step makes ~2.15 updates (two entries per change, trades)
OUT_MID = 0.20


class BenchServer(PolymarketServer):
    """The simulator's server, counting the updates it routes to subscribers."""

    updates = 0

    def _route(self, ev: dict[str, Any], outbox: dict[Any, list[str]]) -> None:
        subs = self.subscribers
        if ev["event_type"] == "price_change":
            self.updates += sum(1 for e in ev["price_changes"] if subs.get(e["asset_id"]))
        elif subs.get(ev.get("asset_id", "")):
            self.updates += 1
        super()._route(ev, outbox)

    async def _run(self) -> None:
        # The simulator's loop adds ``rate * tick`` per tick, and a tick lasts longer than ``tick``
        # (sleep granularity, the burst itself): at 10 k/s it delivered ~60 %. Pace on the clock.
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(self.tick)
            now = loop.time()
            rate = self.events_per_s * self.rate_factor
            self._carry = min(self._carry + rate * (now - last), rate * 0.05)  # no runaway backlog
            last = now
            n = int(self._carry)
            self._carry -= n
            if n:
                await self.emit_steps(n)


class Probes:
    def __init__(self, server: BenchServer, sim: MarketSim) -> None:
        self.server = server
        self.assets = [m.assets[0] for m in sim.markets]  # YES assets
        self.rate = 0.0
        self.rate_set = asyncio.Event()  # a new rate: an idle prober starts
        self.sent: list[tuple[str, float, int]] = []
        self.k = 0
        self._inside: set[str] = set()

    def _frame(self, asset_id: str, market: str, mid: float) -> str:
        return json.dumps(
            {
                "event_type": "best_bid_ask",
                "market": market,
                "asset_id": asset_id,
                "best_bid": f"{mid - 0.01:.2f}",
                "best_ask": f"{mid + 0.01:.2f}",
                "spread": "0.02",
                "timestamp": str(self.server.now_ms()),
            },
            separators=(",", ":"),
        )

    async def _move(self, index: int, mid: float, record: bool) -> None:
        a = self.assets[index % len(self.assets)]
        for conn in list(self.server.subscribers.get(a.asset_id, ())):
            text = self._frame(a.asset_id, a.market.condition_id, mid)
            t = time.time_ns()
            await conn.ws.send_str(text)
            if record:
                self.sent.append((a.asset_id, mid, t))
        if record:
            self._inside.add(a.asset_id)
        else:
            self._inside.discard(a.asset_id)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        half = len(self.assets) // 2
        next_at = loop.time()
        while True:
            if self.rate <= 0:
                self.rate_set.clear()
                await self.rate_set.wait()
                next_at = loop.time()
                continue
            next_at += 1.0 / self.rate
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            k = self.k
            self.k += 1
            back = self.assets[(k - half) % len(self.assets)]
            if back.asset_id in self._inside:
                await self._move(k - half, OUT_MID, record=False)
            await self._move(k, 0.45 + (k % 11) / 100, record=True)


async def main(ws_port: int, http_port: int, n_assets: int, n_probes: int, seed: int) -> None:
    sim = MarketSim(n_assets, seed=seed)
    probe_sim = MarketSim(2 * n_probes, seed=seed + 1, depth=2)
    for m in probe_sim.markets:  # one level a side, mid 0.20; nothing but the probes moves them
        m.bids.clear()
        m.asks.clear()
        m.bids[19] = "100"
        m.asks[21] = "100"
        for a in m.assets:
            a.rehash("0")
    sim.assets.update(probe_sim.assets)  # their books are served; Gamma lists only the background
    server = BenchServer(sim, events_per_s=0.0, tick=0.005)
    gamma = GammaServer(server, page_limit=500)
    probes = Probes(server, probe_sim)

    async def set_rate(request: web.Request) -> web.Response:
        body = await request.json()
        server.events_per_s = float(body.get("updates_per_s", 0.0)) / UPDATES_PER_STEP
        probes.rate = float(body.get("probes_per_s", probes.rate))
        probes.rate_set.set()
        return web.json_response({"ok": True})

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "updates": server.updates,
                "subscribed": sum(1 for conns in server.subscribers.values() if conns),
                "connections": server.connection_sizes(),
                "probe_assets": [a.asset_id for a in probes.assets],
                "probes": probes.sent,
            }
        )

    gamma.app.router.add_post("/bench/rate", set_rate)
    gamma.app.router.add_get("/bench/state", state)
    task = asyncio.get_running_loop().create_task(probes.run())
    try:
        await serve_until_stopped(server, gamma, ws_port, http_port)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def serve_until_stopped(server: BenchServer, gamma: GammaServer, ws_port: int, http_port: int) -> None:
    """Serve the WebSocket and Gamma apps, say "ready" on stdout, run until SIGTERM or SIGINT."""
    runners = [
        web.AppRunner(server.app, handle_signals=False),
        web.AppRunner(gamma.app, handle_signals=False),
    ]
    for r in runners:
        await r.setup()
    await web.TCPSite(runners[0], "127.0.0.1", ws_port).start()
    await web.TCPSite(runners[1], "127.0.0.1", http_port).start()
    server.start()
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    for r in runners:
        await r.cleanup()


if __name__ == "__main__":
    ws, http, assets, n_probes, seed = (int(x) for x in sys.argv[1:6])
    # The outside world runs on other machines: here it yields the CPU to the pipeline under test.
    os.nice(10)
    uvloop.run(main(ws, http, assets, n_probes, seed))
