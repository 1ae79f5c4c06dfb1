"""sync on a real local node (anvil + the real Uniswap contracts): JSON-RPC scrape and catch-up rates.

- ``scrape_v2_pools_per_s`` / ``scrape_v2_round_trips``: ``RpcScraper`` scraping 1 000 V2 pools in
  batches of 500 (one pass; no pool may fail), and the HTTP round trips it took.
- ``scrape_v3_pools_per_s`` / ``scrape_v3_round_trips``: 60 V3 pools with every initialized tick,
  batches of 50.
- ``catchup_blocks_per_s`` / ``catchup_events_per_s``: from a scrape of the test pools, 1 000 blocks
  of trading caught up over ``eth_getLogs`` by ``LogFollower`` and applied; one pass (on a node of
  its own, holding the test pools alone: mining the 1 000 blocks is the slow part of the setup).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from services.sync.buffer import Block
from services.sync.follower import LogFollower
from services.sync.journal import EventProcessor
from services.sync.rpc import Header, RpcClient
from services.sync.rpc_scraper import RpcScraper
from shared.messages import PoolSpec
from tests.sync.chain import NODE, Anvil, Chain, Trader, anvil_binary, calldata, price_at_tick

N_V2 = 1000


def _drain(chain: Chain) -> None:
    """Mine until every queued transaction is in a block (a block holds at most 1e9 gas)."""
    chain.mine()
    while int(chain.a.rpc("txpool_status")["pending"], 16):
        chain.mine()


N_V3 = 60
POSITIONS_PER_V3 = 10
CATCHUP_BLOCKS = 1000


def _many_v2(chain: Chain, n: int) -> list[str]:
    """n V2 pairs over fresh tokens (all created in one block)."""
    tokens = [chain.deploy("ERC20", ["uint256"], [10**40]) for _ in range(46)]
    pairs = [(a, b) for i, a in enumerate(tokens) for b in tokens[i + 1 :]][:n]
    chain.a.rpc("evm_setAutomine", False)
    chain.batching = True
    for a, b in pairs:
        chain.send(chain.v2_factory, calldata("createPair(address,address)", a, b))
    _drain(chain)
    chain.batching = False
    chain.a.rpc("evm_setAutomine", True)
    return [chain.call_addr(chain.v2_factory, calldata("getPair(address,address)", a, b)) for a, b in pairs]


def _many_v3(chain: Chain, n: int) -> list[str]:
    """n V3 pools (fee 0.3 %, spacing 60), each with POSITIONS_PER_V3 positions around the price."""
    tokens = [chain.deploy("ERC20", ["uint256"], [10**40]) for _ in range(12)]
    tokens.sort(key=str.lower)
    pairs = [(a, b) for i, a in enumerate(tokens) for b in tokens[i + 1 :]][:n]
    a = chain.a
    a.rpc("evm_setAutomine", False)
    chain.batching = True
    for t in tokens:
        chain.send(t, calldata("approve(address,uint256)", chain.npm, (1 << 256) - 1))
    for t0, t1 in pairs:
        chain.send(chain.v3_factory, calldata("createPool(address,address,uint24)", t0, t1, 3000))
    _drain(chain)
    pools = [
        chain.call_addr(chain.v3_factory, calldata("getPool(address,address,uint24)", t0, t1, 3000))
        for t0, t1 in pairs
    ]
    for pool in pools:
        chain.send(pool, calldata("initialize(uint160)", price_at_tick(0)))
    _drain(chain)
    sig = "mint((address,address,uint24,int24,int24,uint256,uint256,uint256,uint256,address,uint256))"
    for t0, t1 in pairs:
        for k in range(POSITIONS_PER_V3):
            lower, upper = (-600 - 60 * k * 7), (600 + 60 * k * 5)
            chain.send(
                chain.npm, calldata(sig, (t0, t1, 3000, lower, upper, 10**20, 10**20, 0, 0, chain.me, 2**40))
            )
    _drain(chain)
    chain.batching = False
    a.rpc("evm_setAutomine", True)
    return pools


async def _scrape(
    url: str, specs: list[PoolSpec], batch: int, state_view: str
) -> tuple[float, int, int, Any]:
    rpc = RpcClient([url], max_batch=2000)
    try:
        scraper = RpcScraper(rpc, state_view=state_view, concurrency=4)
        t0 = time.perf_counter()
        result = await scraper.scrape(specs, batch)
        elapsed = time.perf_counter() - t0
        assert not result.failed, result.failed[:3]
        return len(result.pools) / elapsed, result.round_trips, scraper.stats.ticks, result
    finally:
        await rpc.close()


async def _catch_up(chain: Chain, start: Header, pools: list[Any]) -> tuple[float, float, int]:
    rpc = RpcClient([chain.a.url], max_batch=1000)
    addresses = [*chain.v2_pairs, *(p.address for p in chain.v3_pools), chain.manager]
    follower = LogFollower(rpc, addresses=lambda: addresses, logs_range=1000, header_batch=1000)
    proc = EventProcessor(depth=64)
    for pool in pools:
        proc.add_pool(pool)
    proc.head = (start.number, start.hash)
    follower.anchor(start)
    follower.go_live()
    try:
        t0 = time.perf_counter()
        await follower.step()
        events = 0
        while not follower.blocks.empty():
            item = follower.blocks.get_nowait()
            assert isinstance(item, Block)
            proc.apply_block(item.number, item.hash, item.parent_hash, item.updates)
            events += len(item.updates)
        elapsed = time.perf_counter() - t0
    finally:
        await rpc.close()
    blocks = proc.head[0] - start.number if proc.head else 0
    assert blocks >= CATCHUP_BLOCKS and proc.stats.errors == 0, (blocks, proc.last_error)
    return blocks / elapsed, events / elapsed, events


def _trade(chain: Chain, blocks: int) -> None:
    """``blocks`` blocks of 3 random operations each, as ``Trader.block(3)`` makes them (automine
    switched off once for all, not twice a block)."""
    trader = Trader(chain, seed=3)
    chain.a.rpc("evm_setAutomine", False)
    chain.batching = True
    try:
        for _ in range(blocks):
            for _ in range(3):
                trader.op()
            chain.mine()
    finally:
        chain.batching = False
        chain.a.rpc("evm_setAutomine", True)


def run() -> dict[str, dict[str, Any]]:
    if not list(NODE.glob("@foundry-rs/anvil-*/bin/anvil")):
        raise FileNotFoundError("node_modules/@foundry-rs/anvil")
    anvil = Anvil(anvil_binary())
    try:
        chain = Chain(anvil)
        v2 = _many_v2(chain, N_V2)
        v3 = _many_v3(chain, N_V3)
        v2_rate, v2_trips, _, _ = asyncio.run(
            _scrape(anvil.url, [PoolSpec(protocol="v2", address=p) for p in v2], 500, chain.state_view)
        )
        v3_specs = [PoolSpec(protocol="v3", address=p) for p in v3]
        v3_rate, v3_trips, ticks, _ = asyncio.run(_scrape(anvil.url, v3_specs, 50, chain.state_view))
    finally:
        anvil.stop()
    # The catch-up follows the test pools alone, on a node of their own: with the 1 000 pairs and 60
    # pools above in its state, anvil took 40-70 ms to mine a block (1 000 blocks: 70-110 s), 4-6 ms without.
    anvil = Anvil(anvil_binary())
    try:
        chain = Chain(anvil)
        specs = [PoolSpec(**s) for s in chain.specs()]
        _, _, _, base = asyncio.run(_scrape(anvil.url, specs, 50, chain.state_view))
        start = Header(base.block, base.hash, b"")
        _trade(chain, CATCHUP_BLOCKS)
        blocks_s, events_s, events = asyncio.run(_catch_up(chain, start, base.pools))
    finally:
        anvil.stop()
    return {
        "sync.scrape_v2_pools_per_s": {"value": v2_rate, "unit": "pools/s", "goal": ">= 500"},
        "sync.scrape_v2_round_trips": {
            "value": v2_trips,
            "unit": f"round trips / {len(v2)} pools",
            "goal": "",
        },
        "sync.scrape_v3_pools_per_s": {"value": v3_rate, "unit": "pools/s", "goal": ">= 50"},
        "sync.scrape_v3_round_trips": {
            "value": v3_trips,
            "unit": f"round trips / {len(v3)} pools, {ticks} ticks",
            "goal": "",
        },
        "sync.catchup_blocks_per_s": {"value": blocks_s, "unit": "blocks/s", "goal": ""},
        "sync.catchup_events_per_s": {"value": events_s, "unit": f"events/s ({events} events)", "goal": ""},
    }
