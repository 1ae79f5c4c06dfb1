"""The sync service as a real process: ExEx server in the test, ZeroMQ out, state equal to the chain."""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
import yaml

from services.simulator.exex_chain import SimChain, SimPool
from services.simulator.exex_server import ExExServer
from shared.bus import Pusher, Subscriber
from shared.messages import BlockUpdate, PoolSpec, PoolState, Price, WhitelistAdd
from shared.snapshot import request_snapshot
from tests.helpers import eventually, spawn
from tests.ports import tcp_endpoint


async def until_committed(
    seen: list[BlockUpdate],
    number: int,
    next_block: Callable[[], Awaitable[object]],
    proc: subprocess.Popen[str],
    timeout: float,
) -> None:
    """Drive ``next_block`` (make a block, receive into ``seen``) until block ``number`` is committed."""
    await eventually(
        lambda: any(b.status == "committed" and b.number >= number for b in seen),
        wake=next_block,
        timeout=timeout,
        what=f"committed block {number}",
        process=proc,
    )


def spec(pool: SimPool) -> dict[str, object]:
    if pool.protocol == "v4":
        return {
            "protocol": "v4",
            "pool_id": "0x" + pool.key.hex(),
            "fee": pool.fee,
            "tick_spacing": pool.spacing,
        }
    return {"protocol": pool.protocol, "address": "0x" + pool.key.hex()}


def assert_matches(states: dict[str, PoolState], chain: SimChain, keys: list[bytes]) -> None:
    for key in keys:
        pool = chain.pools[key]
        state = states["0x" + key.hex()]
        assert state.block == chain.number
        assert (state.token0, state.token1) == pool.tokens()  # from the scrape reply
        if pool.protocol == "v2":
            assert (state.reserve0, state.reserve1) == (str(pool.reserve0), str(pool.reserve1))
        else:
            got = (state.sqrt_price_x96, state.tick, state.liquidity)
            assert got == (str(pool.sqrt), pool.tick, str(pool.liquidity)), pool.protocol


async def test_cold_start_live_reorgs_and_whitelist_add_over_real_sockets() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        chain = SimChain(seed=9, pools_per_protocol=2, events_per_block=12)
        server = await ExExServer(chain, f"{tmp}/exex.sock", f"{tmp}/scrape.sock").start()
        keys = list(chain.pools)
        first, later = keys[:3], keys[3:]  # one pool of each protocol now, the others while live
        pub, pull, snap = tcp_endpoint(), tcp_endpoint(), tcp_endpoint()
        config = {
            "common": {"heartbeat_interval": "200ms"},
            "sync": {
                "pub": pub, "pull": pull, "snapshot": snap, "metrics_port": 0,
                "exex_socket": f"{tmp}/exex.sock", "scraper": "simulator", "scrape_socket": f"{tmp}/scrape.sock",
                "pools": [spec(chain.pools[k]) for k in first],
            },
        }  # fmt: skip
        cfg = Path(tmp) / "poolwire.yaml"
        cfg.write_text(yaml.safe_dump(config))
        for _ in range(3):
            await server.block()
        sub = Subscriber(pub, ["dex.", "px.dex."])
        pusher = Pusher(pull, sender="test")
        try:
            with spawn("-m", "services.sync", "--config", str(cfg)) as proc:
                await sub.wait_for_publisher("sync", timeout=20)
                await asyncio.wait_for(server.connected.wait(), 20)
                seen: list[BlockUpdate] = []
                prices: list[Price] = []

                async def receive() -> None:
                    for _topic, msg in await sub.recv_batch(timeout=0.1):
                        if isinstance(msg, BlockUpdate):
                            seen.append(msg)
                        elif isinstance(msg, Price):
                            prices.append(msg)

                async def blocks_until(number: int, fault: str = "") -> None:
                    await server.block(fault)
                    await receive()

                    async def next_block() -> None:
                        await server.block()
                        await receive()

                    await until_committed(seen, number, next_block, proc, timeout=30)

                await blocks_until(6)
                await blocks_until(chain.number + 1, "revert")
                await blocks_until(chain.number + 1, "reorg")
                assert any(b.status == "reverted" for b in seen)
                assert prices and all(p.symbol.startswith("dex.0x") for p in prices)

                await pusher.send(
                    WhitelistAdd(pools=[msgspec.convert(spec(chain.pools[k]), PoolSpec) for k in later]),
                    timeout=5,
                )
                for _ in range(200):
                    await blocks_until(chain.number + 1)
                    header, items = await request_snapshot(snap, timeout=5)
                    if len(items) == len(keys):
                        break
                # settle: no new blocks until the service reports the chain's head
                for _ in range(100):
                    if any(b.status == "committed" and b.number == chain.number for b in seen[-3:]):
                        break
                    seen += [m for _t, m in await sub.recv_batch(timeout=0.1) if isinstance(m, BlockUpdate)]
                header, items = await request_snapshot(snap, timeout=5)
                states = {s.pool: s for s in items if isinstance(s, PoolState)}
                assert header.count == len(keys)
                assert_matches(states, chain, keys)
                assert proc.poll() is None
        finally:
            pusher.close()
            sub.close()
            await server.close()
