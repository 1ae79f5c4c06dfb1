"""The sync service: ExEx stream + scraper -> exact pool state -> dex.pool.*, px.dex.*, dex.block."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from services.sync.arena import BlockResult, Pool, ResyncNeeded
from services.sync.buffer import Block
from services.sync.client import ExExClient, Resync
from services.sync.config import SyncConfig
from services.sync.coordinator import StartupCoordinator
from services.sync.metrics import SyncCollector
from services.sync.scraper import SimulatorScraper
from shared.bus import Publisher, Puller
from shared.constants import DEX_BLOCK_TOPIC, dex_pool_topic, px_topic
from shared.messages import BlockUpdate, Message, PoolSpec, PoolState, Price, SnapshotRequest, WhitelistAdd
from shared.runner import ServiceContext
from shared.snapshot import SnapshotServer

log = logging.getLogger("poolwire.sync")


def pool_state(pool: Pool, block: int, block_hash: bytes) -> PoolState:
    return PoolState(
        pool=pool.hex,
        protocol=pool.protocol,
        block=block,
        block_hash="0x" + block_hash.hex(),
        token0=pool.token0,
        token1=pool.token1,
        fee=pool.fee,
        tick_spacing=pool.tick_spacing,
        reserve0=str(pool.reserve0),
        reserve1=str(pool.reserve1),
        sqrt_price_x96=str(pool.sqrt_price_x96),
        tick=pool.tick,
        liquidity=str(pool.liquidity),
        price=pool.price(),
    )


class SyncService:
    def __init__(self, ctx: ServiceContext[SyncConfig]) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.cfg = cfg
        self.client = ExExClient(
            cfg.exex_socket,
            capacity=cfg.buffer_capacity,
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            clock=ctx.clock,
        )
        self.coord = StartupCoordinator(
            self.client,
            SimulatorScraper(cfg.scrape_socket, retries=cfg.scrape_retries),
            journal_depth=cfg.journal_depth,
            buffer_capacity=cfg.buffer_capacity,
            incremental_capacity=cfg.incremental_buffer_capacity,
            v2_batch=cfg.v2_scrape_batch_size,
            v3_v4_batch=cfg.v3_v4_scrape_batch_size,
            replay_wait=cfg.replay_wait,
        )
        self.pub = Publisher(
            cfg.pub, service="sync", clock=ctx.clock, heartbeat_interval=ctx.common.heartbeat_interval
        )
        self.pull = Puller(cfg.pull)
        self.snap = SnapshotServer(cfg.snapshot, self.snapshot, publisher_id=self.pub.publisher_id)
        self.head_hash = b""
        self._tasks: set[asyncio.Task[None]] = set()
        ctx.bus_stats.add("pub", self.pub.stats)
        ctx.bus_stats.add("pull", self.pull.stats)
        ctx.metrics.register(SyncCollector(lambda: self.coord))

    # -- publishing -----------------------------------------------------------------------------

    def _head(self) -> tuple[int, bytes]:
        head = self.coord.processor.head
        return head if head is not None else (0, b"")

    def publish_pools(self, pools: set[Pool] | list[Pool]) -> None:
        number, bhash = self._head()
        now = self.ctx.clock.time_ns()
        for pool in pools:
            state = pool_state(pool, number, bhash)
            state.event_ns = now
            self.pub.publish(dex_pool_topic(pool.hex), state)
            symbol = f"dex.{pool.hex}"
            self.pub.publish(
                px_topic(symbol), Price(symbol=symbol, price=state.price, source="pool", event_ns=now)
            )

    def publish_result(self, result: BlockResult, committed: Block | None) -> None:
        for number, bhash in result.reverted:
            self.pub.publish(
                DEX_BLOCK_TOPIC, BlockUpdate(number=number, hash="0x" + bhash.hex(), status="reverted")
            )
        self.publish_pools(result.changed)
        if committed is not None:
            self.pub.publish(
                DEX_BLOCK_TOPIC,
                BlockUpdate(
                    number=committed.number,
                    hash="0x" + committed.hash.hex(),
                    parent_hash="0x" + committed.parent_hash.hex(),
                    status="committed",
                    pools_changed=len(result.changed),
                ),
            )

    def snapshot(self, request: SnapshotRequest) -> tuple[int, list[Message]]:
        number, bhash = self._head()
        self.pub.flush()
        items: list[Message] = []
        for pool in self.coord.processor.pools.values():
            if dex_pool_topic(pool.hex).startswith(request.prefix) or not request.prefix:
                items.append(pool_state(pool, number, bhash))
        return self.pub.seq, items

    # -- loops ----------------------------------------------------------------------------------

    async def cold_start(self) -> None:
        self.coord.live = False
        await self.coord.cold_start(self.cfg.pools)
        self.publish_pools(list(self.coord.processor.pools.values()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _add(self, specs: list[PoolSpec]) -> None:
        try:
            added = await self.coord.add_pools(specs)
        except Exception as exc:
            log.error("adding %d pool(s) failed: %r", len(specs), exc)
            return
        log.info("added %d pool(s) while live", len(added))
        self.publish_pools(added)

    async def live_loop(self) -> None:
        while True:
            item = await self.client.blocks.get()
            try:
                if isinstance(item, Resync):
                    raise ResyncNeeded(item.reason)
                proc = self.coord.processor
                if item.is_revert:
                    result = proc.revert_block(item.number, item.hash)
                    self.publish_result(result, None)
                else:
                    result = proc.apply_block(item.number, item.hash, item.parent_hash, item.updates)
                    self.publish_result(result, item)
                if result.stale:
                    keys = [p.key for p in result.stale]
                    log.warning("%d pool(s) reverted below their scrape: scraping them again", len(keys))
                    self._spawn(self._add([self.coord.specs[k] for k in keys if k in self.coord.specs]))
            except ResyncNeeded as exc:
                log.warning("resync: %s", exc)
                await self.cold_start()

    async def whitelist_loop(self) -> None:
        async for msg in self.pull:
            if isinstance(msg, WhitelistAdd):
                log.info("whitelist: %d pool(s) to add", len(msg.pools))
                self._spawn(self._add(list(msg.pools)))
            else:
                log.warning("ignored a %s on the PULL socket", type(msg).__name__)

    async def run(self) -> None:
        self.pub.start()
        self.snap.start()
        self.client.start()
        try:
            starting = asyncio.ensure_future(self.cold_start())
            stop = asyncio.ensure_future(self.ctx.stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            stop.cancel()
            starting.result()
            loops = [asyncio.ensure_future(self.live_loop()), asyncio.ensure_future(self.whitelist_loop())]
            stop = asyncio.ensure_future(self.ctx.stopping.wait())
            done, _ = await asyncio.wait({*loops, stop}, return_when=asyncio.FIRST_COMPLETED)
            for task in [*loops, stop, *self._tasks]:
                task.cancel()
            await asyncio.gather(*loops, stop, *self._tasks, return_exceptions=True)
            for task in done:
                exc = None if task is stop or task.cancelled() else task.exception()
                if exc is not None:
                    raise exc
        finally:
            await self.client.close()
            await self.snap.close()
            self.pull.close()
            with contextlib.suppress(Exception):
                await self.pub.close()


async def main(ctx: ServiceContext[SyncConfig]) -> None:
    await SyncService(ctx).run()
