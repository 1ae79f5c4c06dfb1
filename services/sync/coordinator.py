"""The startup coordinator: cold start in the seed's phases, and pools added while live.

Cold start: connect the socket (buffering) -> scrape V2 pools -> set the reference block ->
scrape V3/V4 pools -> wait until the stream reached the scrape blocks -> replay the buffered
blocks (each pool skips events at or below its own snapshot block) -> live.

Incremental add (live): hold the new pools' events, scrape them at our head block (pinned, when the
scraper can: the JSON-RPC one) in the seed's smaller live batches (``add_v2_batch`` /
``add_v3_v4_batch``), install each pool at its snapshot block and replay its held events after it.
Other pools are not interrupted.

Resume from a checkpoint (resume.py: when; catchup.py: the ExEx socket's catch-up): install its
pools at its block; a source that can replay the past (the log follower) goes live from there. The
ExEx socket cannot: it buffers while the log follower, stepped here, catches up from the checkpoint
to the node's tip (ranged eth_getLogs), then its buffer is replayed over the caught-up chain
(reverts of blocks applied from JSON-RPC unwound, blocks already applied skipped) -> live.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.sync.journal import EventProcessor
from services.sync.pool import Pool
from services.sync.resume import Resume, ResumeFrom
from services.sync.scraper import NOT_ON_CHAIN, PinUnavailable, Scraper, ScrapeResult, pool_key
from services.sync.source import BlockSource
from services.sync.startup import OnBlock, StartupError, StartupMetrics, unannounced
from shared.clock import Clock, RealClock
from shared.exex import PoolUpdate
from shared.messages import PoolSpec

log = logging.getLogger("poolwire.sync.startup")


class StartupCoordinator(Resume):
    def __init__(
        self,
        client: BlockSource,
        scraper: Scraper,
        *,
        journal_depth: int = 64,
        buffer_capacity: int = 100_000,
        incremental_capacity: int = 10_000,
        v2_batch: int = 500,
        v3_v4_batch: int = 50,
        add_v2_batch: int = 100,
        add_v3_v4_batch: int = 10,
        replay_wait: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.clock: Clock = clock or RealClock()
        self.scraper = scraper
        self.journal_depth = journal_depth
        self.buffer_capacity = buffer_capacity
        self.incremental_capacity = incremental_capacity
        self.v2_batch = v2_batch
        self.v3_v4_batch = v3_v4_batch
        self.add_v2_batch = add_v2_batch
        self.add_v3_v4_batch = add_v3_v4_batch
        self.replay_wait = replay_wait
        self.metrics = StartupMetrics()
        self.processor = self._new_processor()
        self.on_block: OnBlock = unannounced  # every block a cold start or a catch-up applies or unwinds
        self.specs: dict[bytes, PoolSpec] = {}
        self.absent: dict[bytes, None] = {}  # pools whose last scrape found none on chain, oldest first
        self.live = False
        self.resume_from: ResumeFrom | None = None  # set when a checkpoint may be resumed from

    def _new_processor(self) -> EventProcessor:
        proc = EventProcessor(self.journal_depth)
        proc.pending_capacity = self.incremental_capacity
        old: EventProcessor | None = getattr(self, "processor", None)
        if old is not None:  # exported as Prometheus counters: a resync must not set them back
            proc.stats, proc.skip_log = old.stats, old.skip_log
        return proc

    async def _scrape_at(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None
    ) -> ScrapeResult:
        """One scraper call, pinned to ``at`` when the scraper can pin. Pools the node does not serve
        at ``at`` (the block is gone, or its state pruned: eth_call errors) are scraped at the latest
        block instead: installed at that later snapshot, the blocks in between are skipped for them."""
        if at is None or not getattr(self.scraper, "can_pin", False):
            return await self.scraper.scrape(specs, batch_size)
        try:
            result = await self.scraper.scrape(specs, batch_size, at=at)
        except PinUnavailable as exc:
            log.warning("%s: scraping %d pool(s) at the latest block instead", exc, len(specs))
            return await self.scraper.scrape(specs, batch_size)
        if result.failed:
            log.warning(
                "%d pool(s) could not be scraped at block %d (state not served?): "
                "scraping them at the latest block",
                len(result.failed),
                at[0],
            )
            more = await self.scraper.scrape([spec for spec, _ in result.failed], batch_size)
            result.pools += more.pools
            result.failed = more.failed
            if more.pools and more.block > result.block:
                result.block, result.hash, result.timestamp = more.block, more.hash, more.timestamp
        return result

    async def _scrape(
        self, specs: Sequence[PoolSpec], live: bool = False, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        v2 = [s for s in specs if s.protocol == "v2"]
        rest = [s for s in specs if s.protocol != "v2"]
        v2_batch, v3_v4_batch = (
            (self.add_v2_batch, self.add_v3_v4_batch) if live else (self.v2_batch, self.v3_v4_batch)
        )
        t0 = self.clock.monotonic()
        result = await self._scrape_at(v2, v2_batch, at) if v2 else ScrapeResult(0, b"")
        self.metrics.v2_scraping_duration_ms += (self.clock.monotonic() - t0) * 1000
        self.metrics.v2_pools_scraped += len(result.pools)
        self.metrics.reference_block = result.block
        t0 = self.clock.monotonic()
        if rest:
            more = await self._scrape_at(rest, v3_v4_batch, at)
            self.metrics.v3_v4_pools_scraped += len(more.pools)
            result.pools += more.pools
            result.failed += more.failed
            if more.block >= result.block:
                result.block, result.hash, result.timestamp = more.block, more.hash, more.timestamp
        self.metrics.v3_v4_scraping_duration_ms += (self.clock.monotonic() - t0) * 1000
        self.metrics.pools_failed += len(result.failed)
        for spec, reason in result.failed:
            log.warning("pool 0x%s skipped: %s", pool_key(spec).hex(), reason)
            if reason.startswith(NOT_ON_CHAIN):
                self.absent[pool_key(spec)] = None
        for pool in result.pools:
            self.absent.pop(pool.key, None)
        return result

    async def cold_start(self, specs: Sequence[PoolSpec], attempts: int = 3) -> None:
        """Scrape everything and replay the buffer; afterwards blocks arrive on ``client.blocks``."""
        if self.live:
            raise StartupError("AlreadyLive: use add_pools while live")
        t_start = self.clock.monotonic()
        self.metrics.cold_starts += 1
        for spec in specs:
            self.specs[pool_key(spec)] = spec
        for attempt in range(1, attempts + 1):
            self.client.start_buffering(self.buffer_capacity)
            self.processor = self._new_processor()
            result = await self._scrape(list(self.specs.values()))
            if result.pools and not await self.client.wait_for_block(result.block, self.replay_wait):
                log.warning(
                    "the stream did not reach scrape block %d in %.0f s", result.block, self.replay_wait
                )
            if self.client.buffer_error is not None:
                log.warning("cold start attempt %d: %s; starting over", attempt, self.client.buffer_error)
                self.metrics.rescrapes += 1
                continue
            if self._replay(result):
                self.metrics.total_startup_duration_ms = (self.clock.monotonic() - t_start) * 1000
                self.client.go_live()  # no await between take and go_live: no block can slip
                self.live = True
                log.info(
                    "live at block %s with %d pool(s) (%d failed) in %.0f ms",
                    self.processor.head[0] if self.processor.head else result.block,
                    len(self.processor.pools),
                    len(result.failed),
                    self.metrics.total_startup_duration_ms,
                )
                return
            self.metrics.rescrapes += 1
        raise StartupError(f"cold start failed after {attempts} attempts")

    def resume(
        self,
        pools: Sequence[Pool],
        specs: Sequence[PoolSpec],
        block: int,
        block_hash: bytes,
        timestamp: int = 0,
    ) -> None:
        """Go live from a checkpoint: ``pools`` valid at ``block``; the source delivers its children."""
        self._install(pools, specs, block, block_hash, timestamp)
        self.client.go_live()
        self.live = True
        log.info("resumed from the checkpoint at block %d with %d pool(s)", block, len(pools))

    def _install(
        self, pools: Sequence[Pool], specs: Sequence[PoolSpec], block: int, block_hash: bytes, timestamp: int
    ) -> None:
        if self.live:
            raise StartupError("AlreadyLive: use add_pools while live")
        self.processor = self._new_processor()
        for spec in specs:
            self.specs[pool_key(spec)] = spec
        for pool in pools:
            self.processor.add_pool(pool)
        self.processor.head = (block, block_hash)
        self.processor.head_timestamp = timestamp

    def _replay(self, result: ScrapeResult) -> bool:
        """Install scraped pools, replay the buffer; False if the buffer does not cover the scrape."""
        buffer = self.client.buffer
        floor = buffer.reorg_floor
        if floor is not None and any(p.snapshot_block >= floor for p in result.pools):
            log.warning("a reorg reached below the buffer (block %d): scraping again", floor)
            return False
        first = buffer.first_block
        if first is not None and any(p.snapshot_block < first - 1 for p in result.pools):
            log.warning("the buffer starts at block %d, after a pool's snapshot: scraping again", first)
            return False
        self.metrics.events_buffered = len(buffer)
        t0 = self.clock.monotonic()
        stamps = buffer.timestamps()
        blocks = self.client.take_buffered_blocks()
        for pool in result.pools:
            self.processor.add_pool(pool)
        if not blocks and result.hash:
            self.processor.head = (result.block, result.hash)
            self.processor.head_timestamp = result.timestamp
        for number, bhash, parent, events in blocks:
            done = self.processor.apply_block(number, bhash, parent, events, stamps.get(number, 0))
            self.on_block(done, True, events)
            self.metrics.events_replayed += len(events)
            self.metrics.blocks_replayed += 1
        self.metrics.replay_duration_ms = (self.clock.monotonic() - t0) * 1000
        return True

    async def add_pools(self, specs: Sequence[PoolSpec], attempts: int = 3) -> list[Pool]:
        """Add pools while live: hold their events, scrape, install, replay what was held."""
        if not self.live:
            raise StartupError("NotLive: complete the cold start first")
        self.metrics.incremental_adds += 1
        proc = self.processor
        # a pool whose events are held is being added by another call (the retry loop, a repeated
        # WhitelistAdd): a second add would drop what the first holds and install its own scrape over it
        todo = {
            key: s
            for s in specs
            if (key := pool_key(s)) not in proc.pending and (key not in proc.pools or proc.pools[key].stale)
        }
        added: list[Pool] = []
        for _ in range(attempts):
            if not todo:
                break
            # scraped at the block our state is at (pinned: the pools' first state is exact at the head
            # it is published with, however far the node is ahead); events after it are held
            pin = proc.head
            head_at_hold = pin[0] if pin else 0
            for key in todo:
                proc.remove_pool(key)
                proc.hold(key)
                self.specs[key] = todo[key]
            try:
                result = await self._scrape(list(todo.values()), live=True, at=pin)
            except BaseException:  # held no longer (else no later add would take them)
                for key in todo:
                    proc.release(key)
                raise
            for pool in result.pools:
                if pool.snapshot_block < head_at_hold:
                    continue  # the scraper lags our stream: events in between were not held
                if pin and pool.snapshot_block == pin[0] and self._pin_lost(pin):
                    continue  # the pinned block was reorged away meanwhile: scraped again at the new head
                held = proc.release(pool.key)
                proc.add_pool(pool)
                self._replay_held(pool, held)
                added.append(pool)
                del todo[pool.key]
            for spec, _ in result.failed:
                key = pool_key(spec)
                proc.release(key)
                todo.pop(key, None)
        for key in todo:
            proc.release(key)
        self.metrics.pools_added_live += len(added)
        return added

    def _pin_lost(self, pin: tuple[int, bytes]) -> bool:
        """The block a scrape was pinned to is no longer in our chain (a reorg during the scrape)."""
        head = self.processor.head
        if head is None or head[0] < pin[0]:
            return True
        known = self.processor.hash_at(pin[0])
        return known is not None and known != pin[1]  # None: below the journal, too deep to be reorged

    def _replay_held(self, pool: Pool, held: Sequence[PoolUpdate]) -> None:
        """Apply held events after the pool's snapshot, journaled into their own blocks' undo."""
        proc = self.processor
        journal = {entry.number: entry for entry in proc.journal}
        for ev in held:
            entry = journal.get(ev.block)
            proc.apply_event(ev, entry.undo if entry is not None else [], entry.hash if entry else b"")
            self.metrics.events_replayed += 1
