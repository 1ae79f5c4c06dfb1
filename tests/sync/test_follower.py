"""The log follower on a real node: every block, reorgs (evm_revert, anvil_rollback), cold start
while blocks keep coming. Pool state is compared with the contracts after every block."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from services.sync.coordinator import StartupCoordinator
from services.sync.eth_logs import decode_log
from services.sync.follower import LogFollower
from services.sync.journal import ResyncNeeded
from services.sync.metrics import lag_metrics
from services.sync.rpc import RpcClient
from services.sync.rpc_scraper import RpcScraper
from services.sync.source import Resync
from shared.messages import PoolSpec
from tests.sync.chain import Chain, Trader, pools_view


@dataclass
class Synced:
    chain: Chain
    follower: LogFollower
    coord: StartupCoordinator
    resyncs: int = 0

    async def catch_up(self, timeout: float = 20.0) -> None:
        """Apply delivered blocks until our head is the node's head."""
        target = self.chain.head()

        async def run() -> None:
            proc = self.coord.processor
            while proc.head != target:
                item = await self.follower.blocks.get()
                if isinstance(item, Resync):
                    raise ResyncNeeded(item.reason)
                if item.is_revert:
                    proc.revert_block(item.number, item.hash)
                else:
                    proc.apply_block(item.number, item.hash, item.parent_hash, item.updates, item.timestamp)

        await asyncio.wait_for(run(), timeout)

    def check(self) -> None:
        number, _ = self.chain.head()
        assert self.coord.processor.head is not None and self.coord.processor.head[0] == number
        assert pools_view(self.coord.processor.pools) == self.chain.truth(number)


def addresses(chain: Chain) -> list[str]:
    return [*chain.v2_pairs, *(p.address for p in chain.v3_pools), chain.manager]


@asynccontextmanager
async def synced(chain: Chain, **follower_kw: object) -> AsyncIterator[Synced]:
    rpc = RpcClient([chain.a.url], max_batch=200)
    kw: dict[str, Any] = {"poll_interval": 0.02, **follower_kw}
    follower = LogFollower(rpc, addresses=lambda: addresses(chain), **kw)
    scraper = RpcScraper(rpc, state_view=chain.state_view)
    coord = StartupCoordinator(follower, scraper, v3_v4_batch=4, replay_wait=20)
    follower.start()
    try:
        await asyncio.wait_for(follower.connected.wait(), 10)
        yield Synced(chain, follower, coord)
    finally:
        await follower.close()
        await rpc.close()


def specs(chain: Chain) -> list[PoolSpec]:
    return [PoolSpec(**s) for s in chain.specs()]


async def test_state_equals_the_contracts_after_every_block(chain: Chain) -> None:
    trader = Trader(chain, seed=5)
    for _ in range(5):
        trader.block(8)
    async with synced(chain) as s:
        await s.coord.cold_start(specs(chain))
        s.check()
        for _ in range(30):
            trader.block(10)
            await s.catch_up()
            s.check()
        stats = s.coord.processor.stats
        assert stats.v2_syncs_processed and stats.v3_mints_processed and stats.v3_burns_processed
        assert stats.v3_swaps_processed and stats.v4_swaps_processed and stats.v4_modify_liquidity_processed
        assert stats.errors == 0, s.coord.processor.last_error


async def test_reorgs_by_evm_revert_and_anvil_rollback_follow_the_new_chain(chain: Chain) -> None:
    trader = Trader(chain, seed=6)
    trader.block(8)
    async with synced(chain) as s:
        await s.coord.cold_start(specs(chain))
        for _ in range(3):
            trader.block(8)
            await s.catch_up()
        # a reorg of 3 blocks to a longer branch, with no removed: true anywhere
        snap = chain.a.rpc("evm_snapshot")
        for _ in range(3):
            trader.block(8)
        await s.catch_up()
        s.check()
        chain.a.rpc("evm_revert", snap)
        other = Trader(chain, seed=99)
        for _ in range(4):
            other.block(6)
        await s.catch_up()
        s.check()
        assert s.follower.fstats.reorgs >= 1 and s.follower.fstats.blocks_reverted >= 3
        # the chain gets shorter and nothing new is mined: state is the ancestor's
        chain.a.rpc("anvil_rollback", 2)
        await s.catch_up()
        s.check()
        # a same-height replacement of the head block
        chain.a.rpc("anvil_rollback", 1)
        other.block(5)
        await s.catch_up()
        s.check()
        assert s.coord.processor.stats.reverts_processed >= 6


async def test_cold_start_while_blocks_keep_coming_misses_nothing_and_doubles_nothing(chain: Chain) -> None:
    trader = Trader(chain, seed=7)
    for _ in range(3):
        trader.block(8)
    stop = threading.Event()

    def trade() -> None:
        while not stop.is_set():
            trader.block(6)

    async with synced(chain) as s:
        worker = asyncio.get_running_loop().run_in_executor(None, trade)
        try:
            await s.coord.cold_start(specs(chain))
            for _ in range(5):  # live for a while as blocks keep coming
                await s.catch_up()
        finally:
            stop.set()
            await worker
        await s.catch_up()
        s.check()
        assert s.coord.metrics.blocks_replayed + s.coord.processor.stats.blocks_committed > 0
        assert s.coord.processor.stats.errors == 0


def lag(s: Synced, now: float) -> dict[str, float]:
    return {fam.name: fam.samples[0].value for fam in lag_metrics(s.coord.processor, s.follower, now)}


async def test_catch_up_over_many_blocks_fetches_logs_by_ranges_and_the_lag_shows_it(chain: Chain) -> None:
    trader = Trader(chain, seed=8)
    async with synced(chain, logs_range=50) as s:
        await s.coord.cold_start(specs(chain))
        for _ in range(12):
            trader.block(4)
        chain.mine(40)  # empty blocks too
        number, _ = chain.head()
        assert await s.follower.wait_for_block(number, 20)  # delivered, not applied yet
        applied = s.coord.processor.head
        assert applied is not None
        assert lag(s, 0)["poolwire_sync_lag_blocks"] == number - applied[0] >= 52
        await s.catch_up()
        s.check()
        stamp = int(chain.a.rpc("eth_getBlockByNumber", hex(number), False)["timestamp"], 16)
        assert lag(s, stamp + 7.5) == {"poolwire_sync_lag_seconds": 7.5, "poolwire_sync_lag_blocks": 0}


async def test_newheads_over_websocket_triggers_the_follower(chain: Chain) -> None:
    trader = Trader(chain, seed=9)
    trader.block(8)
    # polling every 10 minutes: only newHeads can bring the blocks within catch_up's timeout
    ws_url = f"ws://127.0.0.1:{chain.a.port}"
    async with synced(chain, ws_url=ws_url, poll_interval=600.0) as s:
        await s.coord.cold_start(specs(chain))
        await asyncio.wait_for(s.follower.ws_subscribed.wait(), 10)
        s.check()
        triggers = s.follower.fstats.triggers
        for _ in range(5):
            trader.block(8)
            await s.catch_up(timeout=20)
            s.check()
        chain.mine(3)  # empty blocks too
        await s.catch_up(timeout=20)
        s.check()
        assert s.follower.fstats.triggers > triggers
        assert s.follower.fstats.rpc_failures == 0 and s.coord.processor.stats.errors == 0


def test_decode_log_rejects_garbage() -> None:
    from services.sync.eth_logs import V2_SYNC

    entry = {
        "topics": [V2_SYNC], "data": "0x12", "address": "0x" + "11" * 20,
        "blockNumber": "0x1", "transactionIndex": "0x0", "logIndex": "0x0",
    }  # fmt: skip
    try:
        decode_log(entry)
    except ValueError:
        pass
    else:
        raise AssertionError("short log data must not decode")
    entry["topics"] = ["0x" + "00" * 32]
    assert decode_log(entry) is None
