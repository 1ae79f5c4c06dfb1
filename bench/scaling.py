"""Scaling curves: how a core's cost grows with the work it holds, in-process (the pipeline's own
curve, p99 at 1 k, 10 k and 30 k updates/s, is ``pipeline.scaling_p99_ms`` in bench/pipeline.py).

Each figure carries its curve as ``table`` (``columns``, ``rows``; the first column is the x axis,
the second the y) and its value is the growth: the y at the largest x over the y at the smallest,
both measured in this run (1.0 is flat). ``bench/plots.py`` draws them into bench/scaling.png.
Times are CPU time (``time.process_time``): the machine is shared, and a curve should not bend
where another job took the core.

- ``registry_price_update_us``: one price update through ``Registry.on_price`` with 1 k, 10 k and
  100 k active zones on the symbol (prices 0..100, a gaussian walk from 50; at 10 k zones the
  layout and the steps (0.002) of ``registry.price_updates_per_s``, at the others the same zoomed:
  zone heights and steps scaled by 10 k / zones, so that the zones a price is in and the touches an
  update makes stay about the same and the curve is the price index's own cost). 100 k updates,
  best of 3 passes of the same walk.
- ``ingest_cpu_us_per_update``: CPU (this process, every thread: ZeroMQ's I/O thread included) per
  update through ingest's ``Router`` with hash checks on, publishing on a real PUB socket, with 5 k,
  20 k and 50 k assets' books held (one router, its books added as the simulator's markets grow);
  best of 3 passes, each ~11 k updates (5 k simulator steps of its own) over all the assets.
- ``sync_events_per_s``: V2 Sync events applied by ``EventProcessor.apply_block`` (200 a block,
  journal depth 64) over 10, 1 000 and 10 000 pools; 50 k events, best of 3.
"""

from __future__ import annotations

import gc
import json
import random
import time
from typing import Any

import uvloop

from bench.sync import _apply_rate, _v2_blocks
from services.ingest.router import Router
from services.registry.registry import Registry
from services.registry.zones import Rules, TimeframeRules
from services.simulator.market import MarketSim
from shared.bus import Publisher
from tests.ports import tcp_endpoint

S = 1_000_000_000
T0 = 1_700_000_000 * S
ZONES = (1_000, 10_000, 100_000)
ASSETS = (5_000, 20_000, 50_000)
POOLS = (10, 1_000, 10_000)
REPEATS = 3

Figure = dict[str, Any]


def _curve(columns: list[str], rows: list[list[float]], unit: str) -> Figure:
    return {
        "value": rows[-1][1] / rows[0][1],
        "unit": f"x ({columns[1]} at {rows[-1][0]:g} / at {rows[0][0]:g} {columns[0]})",
        "goal": "",
        "table": {"columns": columns, "rows": rows, "unit": unit},
    }


# -- registry: the price index ------------------------------------------------------------------


def registry_price_update_us(n_zones: int, n_prices: int = 100_000) -> tuple[float, float]:
    """(us per update, touches per update) with ``n_zones`` active zones on one symbol."""
    rng = random.Random(3)
    scale = 10_000 / n_zones  # the 10 k layout zoomed: the same overlaps and touches an update
    zones = [(rng.uniform(0, 100), rng.uniform(0.01, 0.3) * scale) for _ in range(n_zones)]
    prices = []
    p = 50.0
    for _ in range(n_prices):
        p = min(100.0, max(0.0, p + rng.gauss(0, 0.002 * scale)))
        prices.append(p)
    rules = Rules(
        timeframes={"H1": TimeframeRules(ttl_ns=7200 * S)}, strength_threshold=0.1, max_per_tf=1_000_000
    )
    reg = Registry(rules, T0)
    reg.on_price("pm.x", 50.0, T0)
    for i, (b, h) in enumerate(zones):
        reg.create("pm.x", "H1", "other", b + h, b, 0.5, T0 + i, T0)
    reg.drain()
    on_price = reg.on_price
    best, touched = float("inf"), 0
    for _ in range(REPEATS):  # the same walk again (its first step jumps back to 50: one update)
        gc.collect()
        t0 = time.process_time()
        for px in prices:
            on_price("pm.x", px, T0)
        best = min(best, (time.process_time() - t0) / n_prices * 1e6)
        touched = len(reg.drain())
    if reg.active_count("H1") != n_zones:
        raise RuntimeError(f"zones left the index: {reg.active_count('H1')} of {n_zones}")
    return best, touched / n_prices


# -- ingest: the router with many books ---------------------------------------------------------


def _discard(topic: str, msg: Any) -> None:
    pass


async def ingest_cpu_us_per_update(counts: tuple[int, ...] = ASSETS, steps: int = 5_000) -> list[list[float]]:
    """Rows of (assets, CPU us per update, updates a pass) through one router as its books grow to
    each count (markets added to the simulator, their books routed): at each, the best of
    ``REPEATS`` passes, each over its own ``steps`` simulator steps (a frame replayed would not
    match its hash: the mismatch path is another cost)."""
    sim = MarketSim(counts[0], seed=5)
    pub = Publisher(tcp_endpoint(), service="ingest", heartbeat_interval=0)
    router = Router(pub.publish, verify_hashes=True)
    rows: list[list[float]] = []
    routed = 0
    now = T0 // 1_000_000
    try:
        for n in counts:
            while len(sim.assets) < n:
                sim.add_market(str(now))
            new = sim.markets[routed // 2 :]
            assets = [a for m in new for a in m.assets]
            router.assign([a.asset_id for a in assets], "c1")
            router.publish = _discard  # the books' snapshots are not what is measured
            for m in new:
                router.set_params([a.asset_id for a in m.assets], m.min_order_size, m.neg_risk)
            for i in range(0, len(assets), 500):  # the books as the server sends them, 500 a frame
                router.handle_frame("c1", json.dumps([a.book_event() for a in assets[i : i + 500]]))
            router.publish = pub.publish
            routed = len(sim.assets)
            best, per_pass = float("inf"), 0
            for _ in range(REPEATS):
                frames = [json.dumps(ev, separators=(",", ":")) for _ in range(steps) for ev in sim.step(now)]
                now += 1
                gc.collect()
                u0, c0 = router.stats.updates, time.process_time()
                for i, text in enumerate(frames):
                    router.handle_frame("c1", text)
                    if i % 64 == 0:
                        pub.flush()
                pub.flush()
                per_pass = router.stats.updates - u0
                best = min(best, (time.process_time() - c0) / per_pass * 1e6)
            rows.append([n, best, per_pass])
        stats = router.hashes.stats
        if stats.unverifiable or stats.mismatches or stats.checks < sum(r[2] for r in rows):
            raise RuntimeError(f"hash checks did not all pass: {stats}")
        return rows
    finally:
        await pub.close()


# -- sync: the arena ----------------------------------------------------------------------------


def sync_events_per_s(n_pools: int, n_events: int = 50_000) -> float:
    pools, blocks = _v2_blocks(n_pools, n_events, random.Random(7))
    return max(_apply_rate(pools, blocks, time.process_time) for _ in range(REPEATS))


def run() -> dict[str, Figure]:
    reg = [[n, *registry_price_update_us(n)] for n in ZONES]
    ing = uvloop.run(ingest_cpu_us_per_update())
    syn = [[n, sync_events_per_s(n)] for n in POOLS]
    return {
        "scaling.registry_price_update_us": _curve(
            ["active_zones", "us_per_update", "touches_per_update"], reg, "us per price update"
        ),
        "scaling.ingest_cpu_us_per_update": _curve(
            ["assets", "cpu_us_per_update", "updates_per_pass"], ing, "CPU us per update"
        ),
        "scaling.sync_events_per_s": _curve(["pools", "events_per_s"], syn, "events/s"),
    }


if __name__ == "__main__":
    for key, fig in run().items():
        print(f"{key:<40} {fig['value']:>8.3f} {fig['unit']}  {fig['table']['rows']}")
