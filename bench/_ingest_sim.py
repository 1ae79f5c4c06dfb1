"""The outside world for ``bench/ingest.py``'s 20 000-asset figures: the simulator's Polymarket and
Gamma servers in a process of their own, with a rate knob.

    python -m bench._ingest_sim WS_PORT HTTP_PORT ASSETS SEED

The server is ``bench/_pipeline_sim.py``'s (the simulator's own code, paced on the clock, counting
the updates it routes to subscribers: price_change entries and trades). ``POST /bench/rate
{"updates_per_s": R}`` sets the load; ``GET /bench/state`` returns updates sent, subscribed assets
and the connections' sizes. Niced (+10): the exchange runs elsewhere, it yields the CPU to ingest.
"""

from __future__ import annotations

import os
import sys

import uvloop
from aiohttp import web

from bench._pipeline_sim import UPDATES_PER_STEP, BenchServer, serve_until_stopped
from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim


async def main(ws_port: int, http_port: int, n_assets: int, seed: int) -> None:
    server = BenchServer(MarketSim(n_assets, seed=seed), events_per_s=0.0, tick=0.005)
    gamma = GammaServer(server, page_limit=1000)

    async def set_rate(request: web.Request) -> web.Response:
        body = await request.json()
        server.events_per_s = float(body.get("updates_per_s", 0.0)) / UPDATES_PER_STEP
        return web.json_response({"ok": True})

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "updates": server.updates,
                "subscribed": sum(1 for conns in server.subscribers.values() if conns),
                "connections": server.connection_sizes(),
            }
        )

    gamma.app.router.add_post("/bench/rate", set_rate)
    gamma.app.router.add_get("/bench/state", state)
    await serve_until_stopped(server, gamma, ws_port, http_port)


if __name__ == "__main__":
    ws, http, assets, seed = (int(x) for x in sys.argv[1:5])
    os.nice(10)
    uvloop.run(main(ws, http, assets, seed))
