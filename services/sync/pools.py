"""The pools sync keeps and the pools being added: state every other part reads.

``PoolBook`` holds the installed pools (``Pool``, one pool's exact state, in pool.py), the events
held for pools being scraped while live (bounded by ``pending_capacity``), and the counters of
everything applied or skipped (``EventProcessorStats``, exported as Prometheus counters).
Applying events is apply.py's job; blocks and reorgs are journal.py's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from services.sync.pool import Pool
from shared.exex import PoolUpdate
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.apply")


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


class PoolBook:
    """The installed pools, the events held for pools being added, the counters."""

    def __init__(self) -> None:
        self.pools: dict[bytes, Pool] = {}
        self.stats = EventProcessorStats()
        self.pending: dict[bytes, list[tuple[bytes, PoolUpdate]]] = {}  # pools being added
        self.pending_capacity = 10_000
        self._pending_count = 0
        self.last_error = ""
        self.skip_log = RateLimitedLog(log)  # "Log and skip" (seed), at most a burst per minute

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
