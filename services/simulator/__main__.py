"""``python -m services.simulator``: the Polymarket market channel and Gamma REST on aiohttp."""

from __future__ import annotations

from aiohttp import web

from services.simulator.config import SimulatorConfig
from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer
from shared.runner import ServiceContext, run


async def main(ctx: ServiceContext[SimulatorConfig]) -> None:
    cfg = ctx.config
    sim = MarketSim(cfg.assets, seed=cfg.seed, depth=cfg.depth)
    ws = PolymarketServer(sim, events_per_s=cfg.events_per_s, tick=cfg.tick, stall_above=cfg.stall_above)
    gamma = GammaServer(ws, page_limit=cfg.gamma_page_limit)
    runners = [web.AppRunner(ws.app, handle_signals=False), web.AppRunner(gamma.app, handle_signals=False)]
    for r in runners:
        await r.setup()
    await web.TCPSite(runners[0], cfg.host, cfg.ws_port).start()
    await web.TCPSite(runners[1], cfg.host, cfg.http_port).start()
    ws.start()
    ctx.log.info(
        "polymarket ws://%s:%d/ws/market, gamma http://%s:%d/markets/keyset: %d assets, %.0f events/s",
        cfg.host,
        cfg.ws_port,
        cfg.host,
        cfg.http_port,
        len(sim.assets),
        cfg.events_per_s,
    )
    try:
        await ctx.stopping.wait()
    finally:
        await ws.stop()
        for r in runners:
            await r.cleanup()


if __name__ == "__main__":
    raise SystemExit(run("simulator", SimulatorConfig, main))
