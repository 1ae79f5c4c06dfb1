"""The sync service: ExEx stream + scraper -> exact pool state -> dex.pool.*, px.dex.*, dex.block."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.sync import checkpoint
from services.sync.announce import Announcer
from services.sync.arena import Pool, ResyncNeeded
from services.sync.client import BlockSource, ExExClient, Resync
from services.sync.config import SyncConfig
from services.sync.coordinator import StartupCoordinator
from services.sync.follower import LogFollower
from services.sync.metrics import SyncCollector
from services.sync.retry import StartupRetry
from services.sync.rpc import Header, RpcClient, RpcError, RpcUnavailable, hex_int
from services.sync.rpc_scraper import RpcScraper
from services.sync.scraper import Scraper, SimulatorScraper, pool_key
from services.sync.whitelist import WhitelistGate
from shared.backoff import Backoff
from shared.bus import Publisher, Puller
from shared.messages import (
    PoolSpec,
)
from shared.runner import ServiceContext
from shared.snapshot import SnapshotServer

log = logging.getLogger("poolwire.sync")


class SyncService:
    def __init__(self, ctx: ServiceContext[SyncConfig]) -> None:
        cfg = ctx.config
        self.ctx = ctx
        self.cfg = cfg
        self.rpc: RpcClient | None = None
        if cfg.rpc_urls:
            self.rpc = RpcClient(
                cfg.rpc_urls,
                timeout=cfg.rpc_timeout,
                retries=cfg.rpc_retries,
                backoff_initial=cfg.backoff_initial,
                backoff_max=cfg.backoff_max,
                max_batch=cfg.rpc_batch_size,
                clock=ctx.clock,
            )
        self.client: BlockSource
        self.follower: LogFollower | None = None
        if cfg.source == "rpc":
            assert self.rpc is not None
            self.follower = self.log_follower(capacity=cfg.buffer_capacity, ws_url=cfg.rpc_ws_url)
            self.client = self.follower
        else:
            self.client = ExExClient(
                cfg.exex_socket,
                capacity=cfg.buffer_capacity,
                backoff_initial=cfg.backoff_initial,
                backoff_max=cfg.backoff_max,
                clock=ctx.clock,
            )
        scraper: Scraper
        self.rpc_scraper: RpcScraper | None = None
        if cfg.scraper == "rpc":
            assert self.rpc is not None
            self.rpc_scraper = scraper = RpcScraper(
                self.rpc,
                state_view=cfg.v4_state_view,
                concurrency=cfg.scraping_concurrency,
                retries=cfg.scrape_retries,
                word_radius=cfg.v3_word_radius,
                pin_by_hash=cfg.pin_by_hash,
            )
        else:
            scraper = SimulatorScraper(cfg.scrape_socket, retries=cfg.scrape_retries)
        self.checkpoint_path = Path(ctx.common.data_dir) / "sync" / "checkpoint.msgpack"
        # the ExEx source resumes too when there is a node to catch up from (eth_getLogs)
        self.use_checkpoint = cfg.checkpoint and self.rpc is not None
        self.checkpoints = checkpoint.CheckpointStore(self.checkpoint_path)
        self.pools_retried = 0
        self.clock = ctx.clock
        self.chain_id = cfg.chain_id
        self.coord = StartupCoordinator(
            self.client,
            scraper,
            journal_depth=cfg.journal_depth,
            buffer_capacity=cfg.buffer_capacity,
            incremental_capacity=cfg.incremental_buffer_capacity,
            v2_batch=cfg.v2_scrape_batch_size,
            v3_v4_batch=cfg.v3_v4_scrape_batch_size,
            add_v2_batch=cfg.v2_add_batch_size,
            add_v3_v4_batch=cfg.v3_v4_add_batch_size,
            replay_wait=cfg.replay_wait,
            clock=ctx.clock,
        )
        self.pub = Publisher(
            cfg.pub, service="sync", clock=ctx.clock, heartbeat_interval=ctx.common.heartbeat_interval
        )
        self.whitelist = WhitelistGate()
        self.pull = Puller(cfg.pull, max_message_size=ctx.common.max_message_size)
        # a WhitelistAdd's good pools survive a bad neighbour (decoded pool by pool when the shared
        # schema refuses the whole message); the hook is Puller's ``decode`` (/tmp/brief/sync-shared.diff)
        self.pull.decode = self.whitelist.decode
        self.announce = Announcer(self.pub, self.coord)
        self.coord.on_block = self.announce.block  # blocks a cold start or a catch-up applies, too
        self.snap = SnapshotServer(
            cfg.snapshot,
            self.announce.snapshot,
            publisher_id=self.pub.publisher_id,
            max_message_size=ctx.common.max_message_size,
        )
        self.configured = {pool_key(spec) for spec in cfg.pools}  # never forgotten by the missing cap
        self.retry = StartupRetry(ctx.clock, cfg.backoff_initial, cfg.backoff_max)
        self.block_errors = 0  # unforeseen errors applying a block: each resyncs
        self._tasks: set[asyncio.Task[None]] = set()
        ctx.bus_stats.add("pub", self.pub.stats)
        ctx.bus_stats.add("pull", self.pull.stats)
        ctx.metrics.register(SyncCollector(lambda: self.coord, self))

    def log_addresses(self) -> list[str]:
        """What the follower asks eth_getLogs for: V2/V3 pools, and the PoolManager for V4."""
        out = [s.address for s in self.coord.specs.values() if s.protocol != "v4" and s.address]
        if self.cfg.v4_pool_manager and any(s.protocol == "v4" for s in self.coord.specs.values()):
            out.append(self.cfg.v4_pool_manager)
        return out

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

    def log_follower(self, **options: Any) -> LogFollower:
        """A log follower on the configured node, addresses and limits (``options``: the rest)."""
        assert self.rpc is not None
        cfg = self.cfg
        return LogFollower(
            self.rpc,
            addresses=self.log_addresses,
            poll_interval=cfg.poll_interval,
            logs_range=cfg.logs_range,
            header_batch=cfg.rpc_batch_size,
            keep=max(cfg.reorg_keep, cfg.journal_depth + 1),
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            clock=self.ctx.clock,
            **options,
        )

    def read_checkpoint(self) -> checkpoint.Checkpoint | None:
        """The checkpoint if there is one this node can resume from (None: scrape)."""
        try:
            cp = checkpoint.load(self.checkpoint_path)
            if cp is None:
                return None
            for rec in cp.pools:
                checkpoint.restore(rec, cp.block)
        except Exception as exc:  # unreadable for any reason: scrape instead
            log.warning("checkpoint %s unreadable (%r): scraping", self.checkpoint_path, exc)
            return None
        if cp.chain_id and cp.chain_id != self.chain_id:
            log.warning(
                "checkpoint is of chain %d, the node is chain %d: scraping", cp.chain_id, self.chain_id
            )
            return None
        return cp

    async def try_resume(self) -> bool:
        """Resume from the checkpoint if its block is still canonical; False: cold start instead.
        A node that fails meanwhile costs an attempt (counted), not the checkpoint."""
        cp = self.read_checkpoint()
        return cp is not None and await self.retry.run("resume", lambda: self.resume(cp))

    async def resume(self, cp: checkpoint.Checkpoint) -> bool:
        assert self.rpc is not None
        raw = await self.rpc.call("eth_getBlockByNumber", [hex(cp.block), False])
        header = Header.parse(raw) if raw is not None else None
        if header is None or header.hash != cp.hash:
            log.warning("checkpoint block %d is no longer canonical (reorged away): scraping", cp.block)
            return False
        pools = [checkpoint.restore(rec, cp.block) for rec in cp.pools]  # afresh: an attempt moves them
        if self.follower is not None:
            self.follower.anchor(header)
            self.coord.resume(pools, cp.specs, cp.block, cp.hash, header.timestamp)
            self.follower.connected.set()
            return True
        return await self.resume_exex(pools, cp.specs, header)

    async def resume_exex(self, pools: list[Pool], specs: list[PoolSpec], header: Header) -> bool:
        """ExEx source: the socket is buffering (started first); catch up from the checkpoint over
        JSON-RPC (the log follower's ranged eth_getLogs), replay the buffer over it, go live."""
        assert self.rpc is not None
        if any(s.protocol == "v4" for s in specs) and not self.cfg.v4_pool_manager:
            log.warning(
                "checkpoint has V4 pools, and no sync.v4_pool_manager to catch up their logs: scraping"
            )
            return False
        try:
            await asyncio.wait_for(self.client.connected.wait(), self.cfg.replay_wait)
        except TimeoutError:
            log.warning("ExEx socket not connected in %.0f s: scraping", self.cfg.replay_wait)
            return False
        catch_up = self.log_follower()
        return await self.coord.resume_with_catch_up(pools, specs, header, catch_up)

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
        resumed = self.use_checkpoint and await self.try_resume()
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
        """Configured or whitelisted pools that are not in the arena (their scrape failed); not the
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

    async def run(self) -> None:
        self.pub.start()
        self.snap.start()
        try:
            starting = asyncio.ensure_future(self.start_up())
            stop = asyncio.ensure_future(self.ctx.stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                return
            stop.cancel()
            starting.result()
            loops = [
                asyncio.ensure_future(self.live_loop()),
                asyncio.ensure_future(self.whitelist_loop()),
                asyncio.ensure_future(self.retry_loop()),
            ]
            if self.use_checkpoint:
                loops.append(asyncio.ensure_future(self.checkpoint_loop()))
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
