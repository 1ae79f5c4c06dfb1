"""Blocks in, the undo journal, reorgs: the processor sync's state moves by.

Pure and synchronous. Blocks are applied whole with :meth:`EventProcessor.apply_block`, which
keeps an undo journal ``depth`` blocks deep so that a revert (explicit, or a block whose parent
hash is not our head) restores the exact prior state.

Each pool remembers the block its scraped state is valid at (``snapshot_block``): events at or
below it are already in the state and are skipped, which is what makes replay after a scrape
correct. A revert that reaches a pool's snapshot block cannot be undone from the journal; the
pool becomes *stale* and needs a new scrape.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from services.sync.apply import EventApplier, ResyncNeeded
from services.sync.pool import Pool
from shared.exex import PoolUpdate

__all__ = ["BlockJournal", "BlockResult", "EventProcessor", "ResyncNeeded"]


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


class EventProcessor(EventApplier):
    """Applies blocks of events to the pools, keeps the undo journal, tracks the head."""

    def __init__(self, depth: int = 64) -> None:
        if depth < 1:
            raise ValueError("journal depth must be >= 1")
        super().__init__()
        self.depth = depth
        self.journal: deque[BlockJournal] = deque()
        self.head: tuple[int, bytes] | None = None  # (number, hash) of the last applied block
        self.head_timestamp = 0  # its block time in seconds (0: unknown)
        self._reverting = False  # the last block handled was a revert (one reorg, however deep)

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
        self.undo(entry.undo, result.changed)
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
