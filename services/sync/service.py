"""The sync service's shell: ExEx stream or log follower + scraper -> exact pool state ->
dex.pool.*, px.dex.*, dex.block.

Its parts come from build.py, what it publishes is announce.py's; here are the loops: start-up
(resume from the checkpoint or scrape), live blocks, WhitelistAdd on PULL, pools whose scrape
failed, periodic checkpoints, and the stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from services.sync import checkpoint
from services.sync.announce import Announcer
from services.sync.build import SyncParts
from services.sync.config import SyncConfig
from services.sync.journal import ResyncNeeded
from services.sync.metrics import SyncCollector
from services.sync.rpc import RpcError, RpcUnavailable, hex_int
from services.sync.scraper import pool_key
from services.sync.source import Resync
from services.sync.whitelist import WhitelistGate
from shared.backoff import Backoff
from shared.bus import Publisher, Puller
from shared.lifecycle import run_loops
from shared.messages import PoolSpec
from shared.runner import ServiceContext
from shared.snapshot import SnapshotServer

log = logging.getLogger("poolwire.sync")


class SyncService:
    def __init__(self, ctx: ServiceContext[SyncConfig]) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.cfg = cfg
        self.clock = ctx.clock
        self.parts = parts = SyncParts(cfg, ctx.clock, ctx.common.data_dir)
        self.rpc = parts.rpc
        self.client = parts.client
        self.follower = parts.follower
        self.rpc_scraper = parts.rpc_scraper
        self.coord = parts.coord
        self.retry = parts.retry
        self.use_checkpoint = parts.use_checkpoint
        self.checkpoints = checkpoint.CheckpointStore(parts.checkpoint_path)
        self.pools_retried = 0
        self.chain_id = cfg.chain_id
        self.pub = Publisher(
            cfg.pub,
            service="sync",
            clock=ctx.clock,
            heartbeat_interval=ctx.common.heartbeat_interval,
            hold=ctx.common.rejoin_wait,
            wire_version=ctx.common.wire_version,
            bind_later=True,
        )
        self.whitelist = WhitelistGate()
        self.pull = Puller(cfg.pull, max_message_size=ctx.common.max_message_size, bind_later=True)
        # a WhitelistAdd's good pools survive a bad neighbour (decoded pool by pool when the shared
        # schema refuses the whole message): Puller's ``decode`` hook
        self.pull.decode = self.whitelist.decode
        self.announce = Announcer(self.pub, self.coord)
        self.coord.on_block = self.announce.block  # blocks a cold start or a catch-up applies, too
        self.snap = SnapshotServer(
            cfg.snapshot,
            self.announce.snapshot,
            publisher=self.pub,
            max_message_size=ctx.common.max_message_size,
            bind_later=True,
        )
        self.configured = {pool_key(spec) for spec in cfg.pools}  # never forgotten by the missing cap
        self.block_errors = 0  # unforeseen errors applying a block: each resyncs
        self._tasks: set[asyncio.Task[None]] = set()
        ctx.bus_stats.add("pub", self.pub.stats)
        ctx.bus_stats.add("pull", self.pull.stats)
        ctx.metrics.register(SyncCollector(lambda: self.coord, self))

    # -- loops ----------------------------------------------------------------------------------

    async def cold_start(self) -> None:
        """Scrape and replay until it works: a node failing mid-scrape costs an attempt (counted)."""
        self.coord.live = False
        if self.follower is not None:
            await self.follower.connected.wait()  # anchored at the tip before the scrape pins a block
        specs = list(self.coord.specs.values()) or self.cfg.pools
        await self.retry.run("cold_start", lambda: self.coord.cold_start(specs))
        self.announce.pools(self.coord.processor.pools.values())

    async def check_chain(self) -> None:
        """eth_chainId against sync.chain_id (retried until the node answers)."""
        assert self.rpc is not None
        backoff = Backoff(self.cfg.backoff_initial, self.cfg.backoff_max, clock=self.clock)
        while True:
            try:
                chain_id = hex_int(await self.rpc.call("eth_chainId"))
                break
            except (RpcUnavailable, RpcError, ValueError) as exc:
                log.warning("eth_chainId: %r; retrying", exc)
                await backoff.wait()
        if self.cfg.chain_id and chain_id != self.cfg.chain_id:
            raise RuntimeError(
                f"the node at {self.cfg.rpc_urls} is chain {chain_id}, sync.chain_id is {self.cfg.chain_id}"
            )
        self.chain_id = chain_id

    async def start_up(self) -> None:
        if self.cfg.checkpoint and not self.use_checkpoint:
            log.info(
                "checkpoint not used: the ExEx source without sync.rpc_urls cannot catch up from one "
                "(eth_getLogs), so every start scrapes every pool"
            )
        if self.follower is None:
            self.client.start()  # the ExEx socket buffers from now on, before the checkpoint is read
        if self.rpc is not None:
            await self.check_chain()
        resumed = self.use_checkpoint and await self.coord.try_resume(self.chain_id)
        if self.follower is not None:
            self.client.start()
        if not resumed:
            await self.cold_start()
            return
        self.announce.pools(self.coord.processor.pools.values())
        known = set(self.coord.processor.pools)
        missing = [spec for spec in self.cfg.pools if pool_key(spec) not in known]
        if missing:
            log.info("%d configured pool(s) not in the checkpoint: adding them", len(missing))
            self._spawn(self._add(missing))

    def write_checkpoint(self) -> bytes | None:
        head = self.coord.processor.head
        if not self.coord.live or head is None:
            return None
        return checkpoint.encode(
            head[0],
            head[1],
            self.coord.processor.pools.values(),
            self.coord.specs.values(),
            self.chain_id,
            written_ns=self.clock.time_ns(),
        )

    async def checkpoint_loop(self) -> None:
        while True:
            await self.ctx.clock.sleep(self.cfg.checkpoint_interval)
            await self.save_checkpoint()

    async def save_checkpoint(self) -> None:
        data = self.checkpoints.encode(self.write_checkpoint)
        if data is not None:
            await asyncio.to_thread(self.checkpoints.store, data)
        self.checkpoints.skip_log.flush()

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
        self.announce.pools(added)
        self.cap_missing()

    def whitelisted_missing(self) -> list[bytes]:
        """Pools added over PULL whose last scrape found them not on chain, oldest first."""
        coord = self.coord
        pools = coord.processor.pools
        return [k for k in coord.absent if k not in self.configured and k in coord.specs and k not in pools]

    def cap_missing(self) -> None:
        """Keep at most ``whitelist_max_missing`` of them (retried); forget the newest others."""
        missing = self.whitelisted_missing()
        for key in missing[self.cfg.whitelist_max_missing :]:
            del self.coord.specs[key]
            del self.coord.absent[key]
            self.whitelist.missing_dropped += 1
            self.whitelist.skip_log(
                "missing_dropped",
                "pool 0x%s is not on chain and %d whitelisted pools already are not: forgotten",
                key.hex(),
                self.cfg.whitelist_max_missing,
            )

    async def live_loop(self) -> None:
        while True:
            item = await self.client.blocks.get()
            try:
                if isinstance(item, Resync):
                    raise ResyncNeeded(item.reason)
                proc = self.coord.processor
                known = proc.hash_at(item.number)
                if known is not None and item.hash and (known == item.hash) != item.is_revert:
                    # a block we already applied, or a revert of a block not in our chain: both only
                    # where the socket's stream overlaps the catch-up from a checkpoint over JSON-RPC
                    continue
                if item.is_revert:
                    result = proc.revert_block(item.number, item.hash)
                    self.announce.block(result, committed=False)
                else:
                    result = proc.apply_block(
                        item.number, item.hash, item.parent_hash, item.updates, item.timestamp
                    )
                    self.announce.block(result, committed=True, updates=item.updates)
                proc.skip_log.flush()
                self.client.assembler.skip_log.flush()
                if result.stale:
                    keys = [p.key for p in result.stale]
                    log.warning("%d pool(s) reverted below their scrape: scraping them again", len(keys))
                    self._spawn(self._add([self.coord.specs[k] for k in keys if k in self.coord.specs]))
            except ResyncNeeded as exc:
                log.warning("resync: %s", exc)
                await self.cold_start()
            except Exception as exc:  # a block that broke something unforeseen: not out of the loop
                self.block_errors += 1
                log.exception("block %s failed (%r): resyncing", getattr(item, "number", "?"), exc)
                await self.cold_start()

    def missing_pools(self) -> list[PoolSpec]:
        """Configured or whitelisted pools that are not installed (their scrape failed); not the
        ones being added right now (their events are held)."""
        pools, adding = self.coord.processor.pools, self.coord.processor.pending
        return [
            spec
            for key, spec in self.coord.specs.items()
            if key not in adding and (key not in pools or pools[key].stale)
        ]

    async def retry_loop(self) -> None:
        """Scrape pools that failed again, with backoff: a node or socket that was down comes back."""
        backoff = Backoff(self.cfg.failed_pool_retry, self.cfg.failed_pool_retry_max, clock=self.clock)
        delay: float = self.cfg.failed_pool_retry
        while True:
            await self.clock.sleep(delay)
            missing = self.missing_pools()
            if missing:
                log.info("retrying %d pool(s) whose scrape failed", len(missing))
                self.pools_retried += len(missing)
                await self._add(missing)
            if self.missing_pools():
                delay = backoff.next_delay()
            else:
                backoff.reset()
                delay = self.cfg.failed_pool_retry

    async def whitelist_loop(self) -> None:
        async for msg in self.pull:
            specs = self.whitelist.take(msg)  # each pool checked on its own: bad ones refused, counted
            if specs:
                log.info("whitelist: %d pool(s) to add", len(specs))
                self._spawn(self._add(specs))
            self.whitelist.skip_log.flush()

    async def start_then_follow(self) -> None:
        """Start up (resume or cold start), then follow the chain until a loop fails or a stop."""
        await self.start_up()
        loops: dict[str, Coroutine[Any, Any, None]] = {
            "live": self.live_loop(),
            "whitelist": self.whitelist_loop(),
            "retry": self.retry_loop(),
        }
        if self.use_checkpoint:
            loops["checkpoint"] = self.checkpoint_loop()
        await run_loops(self.ctx.stopping, loops)

    async def run(self) -> None:
        for owner in (self.pub, self.pull, self.snap):  # bound here, where a retry can await
            await owner.bound(self.clock)
        self.pub.start()
        self.snap.start()
        try:
            # a stop cuts the start-up short as well as the loops; a failure in either is raised
            await run_loops(self.ctx.stopping, {"sync": self.start_then_follow()})
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self.client.close()
            if self.use_checkpoint:
                data = self.checkpoints.encode(self.write_checkpoint)
                if data is not None and self.checkpoints.store(data):
                    log.info("checkpoint written at block %d", self.coord.processor.head[0])  # type: ignore[index]
            if self.rpc is not None:
                await self.rpc.close()
            await self.snap.close()
            self.pull.close()
            with contextlib.suppress(Exception):
                await self.pub.close()


async def main(ctx: ServiceContext[SyncConfig]) -> None:
    await SyncService(ctx).run()
