"""Resume from a checkpoint with a source that cannot replay the past (the ExEx socket): the log
follower, stepped here, catches up from the checkpoint to the node's tip (ranged eth_getLogs), then
the socket's buffer is replayed over the caught-up chain (reverts of blocks applied from JSON-RPC
unwound, blocks already applied skipped) -> live. Every block applied or unwound is announced
(``on_block``) as a live one is."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.sync.follower import LogFollower
from services.sync.journal import EventProcessor, ResyncNeeded
from services.sync.pool import Pool
from services.sync.rpc import Header, RpcError, RpcUnavailable
from services.sync.source import BlockSource, Resync
from services.sync.startup import OnBlock, StartupMetrics
from shared.clock import Clock
from shared.messages import PoolSpec

log = logging.getLogger("poolwire.sync.startup")


class CatchUp:
    """The StartupCoordinator's resume over JSON-RPC (a mixin: the coordinator's state)."""

    processor: EventProcessor
    client: BlockSource
    buffer_capacity: int
    live: bool
    on_block: OnBlock
    metrics: StartupMetrics
    clock: Clock

    def _install(
        self, pools: Sequence[Pool], specs: Sequence[PoolSpec], block: int, block_hash: bytes, timestamp: int
    ) -> None:
        raise NotImplementedError

    async def resume_with_catch_up(
        self,
        pools: Sequence[Pool],
        specs: Sequence[PoolSpec],
        header: Header,
        follower: LogFollower,
        attempts: int = 3,
    ) -> bool:
        """Resume from a checkpoint with a source that cannot replay the past (the ExEx socket,
        buffering since before this call): catch up from ``header`` (the checkpoint's block,
        canonical) with ``follower`` (stepped here, not started: its ranged eth_getLogs) to the node's
        tip, then replay the socket's buffer on top: its reverts of blocks we applied are unwound from
        the journal, its blocks already applied (same number and hash) skipped, the others applied
        (a block of another branch unwinds ours first, as live), and go live. False: the buffer
        overflowed or was damaged every time, or the blocks do not join up: scrape instead."""
        t0 = self.clock.monotonic()
        self._install(pools, specs, header.number, header.hash, header.timestamp)
        follower.anchor(header)
        follower.go_live()  # its blocks on its queue, applied by _catch_up
        caught_up = 0
        for attempt in range(1, attempts + 1):
            try:
                caught_up += await self._catch_up(follower)
            except ResyncNeeded as exc:
                log.warning("catch-up from the checkpoint failed (%s): scraping", exc)
                return False
            client = self.client
            head = self.processor.head
            assert head is not None
            if client.buffer_error is not None:
                log.warning("catch-up attempt %d: %s; buffering again", attempt, client.buffer_error)
                client.start_buffering(self.buffer_capacity)
                continue
            first = client.buffer.first_block
            if first is not None and first > head[0] + 1:
                log.info(
                    "the stream starts at block %d, after our head %d: catching up further", first, head[0]
                )
                await follower.clock.sleep(follower.poll_interval)
                continue
            try:
                skipped, replayed = self._replay_over_head()  # no await from here to go_live
            except ResyncNeeded as exc:
                log.warning("the stream does not join the caught-up chain (%s): scraping", exc)
                return False
            client.go_live()
            self.live = True
            head = self.processor.head
            assert head is not None
            self.metrics.total_startup_duration_ms = (self.clock.monotonic() - t0) * 1000
            log.info(
                "resumed from the checkpoint at block %d with %d pool(s): %d block(s) caught up over "
                "JSON-RPC, %d buffered block(s) already applied, %d replayed; live at block %d in %.0f ms",
                header.number, len(pools), caught_up, skipped, replayed, head[0],
                self.metrics.total_startup_duration_ms,
            )  # fmt: skip
            return True
        log.warning("could not join the stream to the catch-up in %d attempts: scraping", attempts)
        return False

    async def _catch_up(self, follower: LogFollower) -> int:
        """Step the follower to the node's tip, applying its blocks; the number of blocks applied."""
        proc = self.processor
        applied = 0
        backoff = follower.backoff()
        while True:
            try:
                await follower.step()
            except (RpcUnavailable, RpcError, ValueError, KeyError, TypeError) as exc:
                follower.fstats.rpc_failures += 1
                delay = backoff.next_delay()
                log.warning("catch-up: %r; retrying in %.2f s", exc, delay)
                await follower.clock.sleep(delay)
                continue
            backoff.reset()
            moved = False
            while not follower.blocks.empty():
                item = follower.blocks.get_nowait()
                moved = True
                if isinstance(item, Resync):
                    raise ResyncNeeded(item.reason)
                if item.is_revert:
                    self.on_block(proc.revert_block(item.number, item.hash), False, ())
                else:
                    result = proc.apply_block(
                        item.number, item.hash, item.parent_hash, item.updates, item.timestamp
                    )
                    self.on_block(result, True, item.updates)
                    applied += 1
            tip, head = follower.tip, follower.head
            if tip is not None and head is not None and tip.hash == head.hash:
                return applied
            if not moved:  # the chain moved under the step: again, as the follower's next trigger would
                await follower.clock.sleep(follower.backoff_initial)

    def _replay_over_head(self) -> tuple[int, int]:
        """The buffer on top of the caught-up chain: (blocks skipped as applied, blocks applied)."""
        proc = self.processor
        buffer = self.client.buffer
        reverts = list(buffer.reverts)
        stamps = buffer.timestamps()
        blocks = self.client.take_buffered_blocks()
        for number, bhash in reverts:  # each came before every block still buffered
            head = proc.head
            assert head is not None
            if proc.applied(number, bhash):
                self.on_block(proc.revert_block(number, bhash), False, ())
            elif number <= head[0] and proc.hash_at(number) is None:
                raise ResyncNeeded(f"revert of block {number}, below the journal")
        skipped = replayed = 0
        for number, bhash, parent, events in blocks:
            head = proc.head
            assert head is not None
            oldest = proc.journal[0].number if proc.journal else head[0]
            if proc.applied(number, bhash) or number < oldest:
                skipped += 1  # applied from JSON-RPC (below the journal: the next ones are checked)
                continue
            result = proc.apply_block(number, bhash, parent, events, stamps.get(number, 0))
            self.on_block(result, True, events)
            self.metrics.events_replayed += len(events)
            self.metrics.blocks_replayed += 1
            replayed += 1
        return skipped, replayed
