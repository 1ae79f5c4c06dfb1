"""The pool arena: exact V2/V3/V4 state, the event processor and its per-block undo journal.

Pure and synchronous. Events are :class:`shared.exex.PoolUpdate`; blocks are applied whole with
:meth:`EventProcessor.apply_block`, which keeps an undo journal ``depth`` blocks deep so that a
revert (explicit, or a block whose parent hash is not our head) restores the exact prior state.

Each pool remembers the block its scraped state is valid at (``snapshot_block``): events at or
below it are already in the state and are skipped, which is what makes replay after a scrape
correct. A revert that reaches a pool's snapshot block cannot be undone from the journal; the
pool becomes *stale* and needs a new scrape.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.sync import amm
from services.sync.amm import MathError
from services.sync.pool import Pool, ProtocolName, TickInfo, parse_hex, v4_pool_id
from shared.exex import PoolUpdate
from shared.ratelog import RateLimitedLog

# Pool and its helpers live in pool.py; importers of the arena find them here too
__all__ = ["BlockJournal", "BlockResult", "EventProcessor", "EventProcessorStats", "Pool", "ProtocolName"]
__all__ += ["ResyncNeeded", "TickInfo", "parse_hex", "v4_pool_id"]

log = logging.getLogger("poolwire.sync.arena")


# Journal entry tags.
_RESERVES = 0
_PRICE = 1
_TICK = 2


@dataclass(slots=True)
class EventProcessorStats:
    """The seed's counters, plus the skips it did not count."""

    v2_syncs_processed: int = 0
    v2_swaps_processed: int = 0
    v2_mints_processed: int = 0
    v2_burns_processed: int = 0
    v3_swaps_processed: int = 0
    v3_mints_processed: int = 0
    v3_burns_processed: int = 0
    v3_initializes_processed: int = 0
    v4_swaps_processed: int = 0
    v4_modify_liquidity_processed: int = 0
    v4_initializes_processed: int = 0
    blocks_committed: int = 0
    reverts_processed: int = 0  # blocks unwound
    reorgs: int = 0  # chains replaced: a run of explicit reverts, or a block whose parent is not our head
    errors: int = 0  # all skipped events below
    pool_not_found: int = 0
    invalid_events: int = 0
    overflows: int = 0
    stale_skipped: int = 0  # at or below the pool's snapshot block, or pool awaiting rescrape
    pending_buffered: int = 0  # events held for pools being added


class ResyncNeeded(Exception):
    """The journal cannot bring the state to the new chain: too deep a revert, or a gap."""


@dataclass(slots=True)
class BlockJournal:
    number: int
    hash: bytes
    parent_hash: bytes
    undo: list[tuple[Any, ...]]
    timestamp: int = 0


@dataclass(slots=True)
class BlockResult:
    """What a block did: pools whose state changed, blocks unwound, pools now stale."""

    changed: set[Pool] = field(default_factory=set)
    reverted: list[tuple[int, bytes]] = field(default_factory=list)
    reverted_timestamps: list[int] = field(default_factory=list)  # block time of each, seconds
    stale: list[Pool] = field(default_factory=list)


class EventProcessor:
    """Applies blocks of events to the pools, keeps the undo journal, tracks the head."""

    def __init__(self, depth: int = 64) -> None:
        if depth < 1:
            raise ValueError("journal depth must be >= 1")
        self.depth = depth
        self.pools: dict[bytes, Pool] = {}
        self.stats = EventProcessorStats()
        self.journal: deque[BlockJournal] = deque()
        self.head: tuple[int, bytes] | None = None  # (number, hash) of the last applied block
        self.head_timestamp = 0  # its block time in seconds (0: unknown)
        self._reverting = False  # the last block handled was a revert (one reorg, however deep)
        self.pending: dict[bytes, list[tuple[bytes, PoolUpdate]]] = {}  # pools being added
        self.pending_capacity = 10_000
        self._pending_count = 0
        self.last_error = ""
        self.skip_log = RateLimitedLog(log)  # "Log and skip" (seed), at most a burst per minute

    # -- pools ----------------------------------------------------------------------------------

    def add_pool(self, pool: Pool) -> None:
        """Install a scraped pool; events for it at or below ``snapshot_block`` will be skipped."""
        self.pools[pool.key] = pool
        self._drop_held(pool.key)

    def remove_pool(self, key: bytes) -> None:
        self.pools.pop(key, None)
        self._drop_held(key)

    def _drop_held(self, key: bytes) -> None:
        self._pending_count -= len(self.pending.pop(key, ()))

    def hold(self, key: bytes) -> None:
        """Start keeping events of a pool that is being scraped (incremental add)."""
        self.pending.setdefault(key, [])

    @property
    def held_events(self) -> int:
        """Events held for pools being added (bounded by ``pending_capacity``)."""
        return self._pending_count

    def release(self, key: bytes) -> list[PoolUpdate]:
        """Stop holding; the held events, in chain order, for replay after the pool's scrape."""
        held = self.pending.pop(key, [])
        self._pending_count -= len(held)
        return [ev for _, ev in held]

    # -- blocks ---------------------------------------------------------------------------------

    def hash_at(self, number: int) -> bytes | None:
        """Our chain's hash at ``number``: the head's or a journaled block's; None if not known."""
        head = self.head
        if head is None or number > head[0]:
            return None
        if number == head[0]:
            return head[1]
        journal = self.journal
        i = len(journal) - 1 - (head[0] - number)
        if 0 <= i < len(journal) and journal[i].number == number:
            return journal[i].hash
        return None

    def applied(self, number: int, block_hash: bytes) -> bool:
        """Whether this very block (number and hash) is in our chain, within the journal's reach."""
        return self.hash_at(number) == block_hash

    def apply_block(
        self,
        number: int,
        block_hash: bytes,
        parent_hash: bytes,
        events: Sequence[PoolUpdate],
        timestamp: int = 0,
    ) -> BlockResult:
        """Apply one committed block; unwinds first if it does not extend our head."""
        result = BlockResult()
        head = self.head
        if head is not None and (number <= head[0] or (parent_hash and head[1] != parent_hash)):
            self.stats.reorgs += not self._reverting  # reverts just before it: counted there
            self._unwind_to_parent(number, parent_hash, result)
            head = self.head
        self._reverting = False
        if head is not None and number != head[0] + 1:
            raise ResyncNeeded(f"block {number} does not follow head {head[0]}: blocks missing")
        undo: list[tuple[Any, ...]] = []
        changed = result.changed
        for ev in events:
            pool = self._apply(ev, undo, block_hash)
            if pool is not None:
                changed.add(pool)
        self.journal.append(BlockJournal(number, block_hash, parent_hash, undo, timestamp))
        if len(self.journal) > self.depth:
            self.journal.popleft()
        self.head = (number, block_hash)
        self.head_timestamp = timestamp
        self.stats.blocks_committed += 1
        return result

    def revert_block(self, number: int, block_hash: bytes) -> BlockResult:
        """Unwind our head block (an explicit revert). Reverting a block we never applied is a no-op."""
        result = BlockResult()
        if self.head is None:
            self._mark_stale(number, result)
            return result
        if self.head[0] < number:
            return result
        if self.head[0] > number:
            # unwind the blocks above it first
            while self.head is not None and self.head[0] > number:
                self._pop(result)
        if self.head is not None and self.head[0] == number:
            if block_hash and self.head[1] != block_hash:
                raise ResyncNeeded(f"revert of block {number} {block_hash.hex()[:10]} which is not our head")
            self._pop(result)
        if result.reverted and not self._reverting:
            self.stats.reorgs += 1  # the first revert of a run: the blocks after it replace ours
            self._reverting = True
        return result

    def _unwind_to_parent(self, number: int, parent_hash: bytes, result: BlockResult) -> None:
        while self.head is not None and (
            self.head[0] >= number
            or (self.head[0] == number - 1 and parent_hash and self.head[1] != parent_hash)
        ):
            self._pop(result)

    def _pop(self, result: BlockResult) -> None:
        if not self.journal:
            assert self.head is not None
            number = self.head[0]
            self.head = None
            self.head_timestamp = 0
            self._mark_stale(number, result)
            raise ResyncNeeded(f"revert below the journal ({self.depth} blocks deep) at block {number}")
        entry = self.journal.pop()
        for item in reversed(entry.undo):
            tag = item[0]
            pool: Pool = item[1]
            if tag == _RESERVES:
                pool.reserve0, pool.reserve1 = item[2], item[3]
            elif tag == _PRICE:
                pool.sqrt_price_x96, pool.tick, pool.liquidity = item[2], item[3], item[4]
            else:
                tick, old = item[2], item[3]
                if (old is None) != (tick not in pool.ticks):
                    pool._flip(tick)
                if old is None:
                    del pool.ticks[tick]
                else:
                    pool.ticks[tick] = old
            result.changed.add(pool)
        for held in self.pending.values():
            kept = [h for h in held if h[0] != entry.hash]
            self._pending_count -= len(held) - len(kept)
            held[:] = kept
        result.reverted.append((entry.number, entry.hash))
        result.reverted_timestamps.append(entry.timestamp)
        self.head = (entry.number - 1, entry.parent_hash) if entry.parent_hash else None
        self.head_timestamp = self.journal[-1].timestamp if self.journal else 0
        self.stats.reverts_processed += 1
        self._mark_stale(entry.number, result)

    def _mark_stale(self, number: int, result: BlockResult) -> None:
        for pool in self.pools.values():
            if not pool.stale and pool.snapshot_block >= number:
                pool.stale = True
                result.stale.append(pool)

    # -- events ---------------------------------------------------------------------------------

    def _skip(self, kind: str, ev: PoolUpdate, why: str) -> None:
        stats = self.stats
        stats.errors += 1
        if kind == "overflow":
            stats.overflows += 1
        else:
            stats.invalid_events += 1
        self.last_error = f"block {ev.block} tx {ev.tx} log {ev.log} pool 0x{ev.pool.hex()}: {why}"
        self.skip_log(kind, "skipped %s event (%s): %s", ev.kind, kind, self.last_error)

    def apply_event(self, ev: PoolUpdate, undo: list[tuple[Any, ...]], block_hash: bytes) -> Pool | None:
        """Apply one event outside apply_block (replay of held events), recording undo into ``undo``."""
        return self._apply(ev, undo, block_hash)

    def _apply(self, ev: PoolUpdate, undo: list[tuple[Any, ...]], block_hash: bytes) -> Pool | None:
        pool = self.pools.get(ev.pool)
        stats = self.stats
        if pool is None:
            held = self.pending.get(ev.pool)
            if held is not None:
                if self._pending_count >= self.pending_capacity:
                    raise ResyncNeeded(f"more than {self.pending_capacity} events held for pools being added")
                held.append((block_hash, ev))
                self._pending_count += 1
                stats.pending_buffered += 1
                return None
            stats.pool_not_found += 1
            stats.errors += 1
            return None
        if ev.block <= pool.snapshot_block or pool.stale:
            stats.stale_skipped += 1
            return None
        if ev.protocol != pool.protocol:
            self._skip("invalid", ev, f"a {ev.protocol} event for a {pool.protocol} pool")
            return None
        kind = ev.kind
        if pool.protocol == "v2":
            if kind == "Sync":
                r0 = ev.reserve0
                r1 = ev.reserve1
                if not (0 <= r0 <= amm.U112_MAX and 0 <= r1 <= amm.U112_MAX):
                    self._skip("overflow", ev, "reserves out of uint112")
                    return None
                undo.append((_RESERVES, pool, pool.reserve0, pool.reserve1))
                pool.reserve0 = r0
                pool.reserve1 = r1
                stats.v2_syncs_processed += 1
                return pool
            if kind == "Swap":
                stats.v2_swaps_processed += 1
            elif kind == "Mint":
                stats.v2_mints_processed += 1
            elif kind == "Burn":
                stats.v2_burns_processed += 1
            else:
                self._skip("invalid", ev, f"V2 has no {kind} event")
            return None  # Sync carries the reserves
        v3 = pool.protocol == "v3"
        if kind == "Swap" or kind == "Initialize":
            sqrt_price = ev.sqrt_price_x96
            tick = ev.tick
            liquidity = ev.liquidity if kind == "Swap" else pool.liquidity
            if not amm.MIN_SQRT_RATIO <= sqrt_price < amm.MAX_SQRT_RATIO:
                self._skip("overflow", ev, f"sqrt price {sqrt_price} out of range")
                return None
            if not (amm.MIN_TICK <= tick <= amm.MAX_TICK and 0 <= liquidity <= amm.U128_MAX):
                self._skip("overflow", ev, "tick out of int24 range or liquidity out of uint128")
                return None
            undo.append((_PRICE, pool, pool.sqrt_price_x96, pool.tick, pool.liquidity))
            pool.sqrt_price_x96 = sqrt_price
            pool.tick = tick
            pool.liquidity = liquidity
            if kind == "Swap":
                if v3:
                    stats.v3_swaps_processed += 1
                else:
                    stats.v4_swaps_processed += 1
            elif v3:
                stats.v3_initializes_processed += 1
            else:
                stats.v4_initializes_processed += 1
            return pool
        if (v3 and kind in ("Mint", "Burn")) or (not v3 and kind == "ModifyLiquidity"):
            delta = ev.liquidity_delta
            if (kind == "Mint" and delta <= 0) or (kind == "Burn" and delta > 0):
                self._skip("invalid", ev, f"{kind} with liquidity_delta {delta}")
                return None
            try:
                self._modify(pool, ev.tick_lower, ev.tick_upper, delta, undo)
            except MathError as exc:
                self._skip("overflow", ev, str(exc))
                return None
            except ValueError as exc:
                self._skip("invalid", ev, str(exc))
                return None
            if kind == "Mint":
                stats.v3_mints_processed += 1
            elif kind == "Burn":
                stats.v3_burns_processed += 1
            else:
                stats.v4_modify_liquidity_processed += 1
            return pool
        self._skip("invalid", ev, f"{pool.protocol.upper()} has no {kind} event")
        return None

    def _modify(self, pool: Pool, lower: int, upper: int, delta: int, undo: list[tuple[Any, ...]]) -> None:
        """Pool._modifyPosition's tick and in-range liquidity updates, all checked before any write."""
        spacing = pool.tick_spacing
        if spacing <= 0:
            raise ValueError("pool has no tick spacing")
        if not (amm.MIN_TICK <= lower < upper <= amm.MAX_TICK):
            raise ValueError(f"bad tick range [{lower}, {upper})")
        if lower % spacing or upper % spacing:
            raise ValueError(f"ticks [{lower}, {upper}) not multiples of the spacing {spacing}")
        amm.check_int128(delta, "liquidity delta")
        if delta == 0:
            return
        ticks = pool.ticks
        old_lower = ticks.get(lower)
        old_upper = ticks.get(upper)
        gross_l, net_l = old_lower or (0, 0)
        gross_u, net_u = old_upper or (0, 0)
        new_gross_l = amm.add_delta(gross_l, delta)
        new_gross_u = amm.add_delta(gross_u, delta)
        if delta > 0 and max(new_gross_l, new_gross_u) > pool.max_liquidity_per_tick:
            raise MathError("LO: tick liquidity above the maximum per tick")
        new_net_l = amm.check_int128(net_l + delta, "liquidity net")
        new_net_u = amm.check_int128(net_u - delta, "liquidity net")
        in_range = lower <= pool.tick < upper
        new_liquidity = amm.add_delta(pool.liquidity, delta) if in_range else pool.liquidity
        # all checks passed: write
        undo.append((_TICK, pool, lower, old_lower))
        undo.append((_TICK, pool, upper, old_upper))
        for tick, old, gross, net in (
            (lower, old_lower, new_gross_l, new_net_l),
            (upper, old_upper, new_gross_u, new_net_u),
        ):
            if gross == 0:
                del ticks[tick]
            else:
                ticks[tick] = (gross, net)
            if (old is None) != (gross == 0):
                pool._flip(tick)
        if in_range:
            undo.append((_PRICE, pool, pool.sqrt_price_x96, pool.tick, pool.liquidity))
            pool.liquidity = new_liquidity
