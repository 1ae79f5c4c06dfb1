"""Memory held for zones that are gone stays bounded by the live ones (issue 19): the price index's
invalidated heap items, a book's unsorted spans and the eviction heap; and the per-zone and
per-candle objects stay out of the cyclic GC (its full collections were the longest stalls)."""

from __future__ import annotations

import gc

from services.registry import zones
from services.registry.price_index import STALE_SLACK
from services.registry.registry import Registry
from services.registry.zones import Rules, TimeframeRules
from shared.bars import BarBuilder

S = 1_000_000_000
T0 = 1_700_000_000 * S
CYCLES = 5_000  # zones created and expired on one symbol, three alive at a time


def rules(max_per_tf: int = 10_000) -> Rules:
    return Rules(
        timeframes={"S5": TimeframeRules(ttl_ns=30 * S), "M1": TimeframeRules(ttl_ns=60 * S)},
        grace_ns=15 * S,
        max_per_tf=max_per_tf,
        strength_threshold=0.0,
    )


def churn(reg: Registry, cycles: int, start: int = 0) -> None:
    """Zones above and below the price, created a second apart, each expiring 30 s later."""
    for k in range(start, start + cycles):
        now = T0 + k * S
        level = 1.0 + (k % 7) / 10
        reg.create("pm.a", "S5", "custom", level + 0.05, level, 0.5 + (k % 5) / 10, now, now)
        reg.on_price("pm.a", 1.3 + (k % 2) / 100, now)
        reg.advance(now)
        reg.drain()


def test_what_gone_zones_leave_in_the_index_and_books_is_bounded_by_the_live_ones() -> None:
    reg = Registry(rules(), T0)
    churn(reg, CYCLES)
    live = reg.active_count("S5")
    assert 0 < live <= 31
    idx = reg._prices.by_symbol["pm.a"]
    heap_items = len(idx.above) + len(idx.below) + len(idx.in_hi) + len(idx.in_lo)
    assert idx.live <= 2 * live
    assert heap_items - idx.live == idx.stale <= max(STALE_SLACK, idx.live) + 2
    book = reg._books["pm.a"]["S5"]
    assert len(book.recent) <= max(8, len(book.zones)) + 1
    assert len(book.spans) <= CYCLES // 10  # merged with the dead dropped, not one per zone ever


def test_the_eviction_heap_is_dropped_when_no_eviction_rebuilds_it() -> None:
    """After a burst of evictions, creations with no eviction used to push into the heap forever."""
    reg = Registry(rules(max_per_tf=20), T0)
    churn(reg, 100)  # 30 would be alive: evictions build the heap
    assert reg.stats.by_tf["S5"].expired_evicted > 0
    reg.rules = rules(max_per_tf=10_000)  # from now on, no eviction
    churn(reg, CYCLES, start=100)
    heap = reg._weakest._heaps.get("S5", [])
    assert len(heap) <= 2 * reg.active_count("S5") + 65


def test_zone_entries_heap_items_and_bars_are_not_tracked_by_the_cyclic_gc() -> None:
    reg = Registry(rules(), T0)
    churn(reg, 50)
    gc.collect()  # untracks the tuples that hold only untracked objects
    idx = reg._prices.by_symbol["pm.a"]
    items = idx.above + idx.below + idx.in_hi + idx.in_lo
    assert items and not any(gc.is_tracked(item) or gc.is_tracked(item.entry) for item in items)
    bars = BarBuilder(5 * S)
    bars.add(T0, 1.0)
    bars.add(T0 + 6 * S, 1.1)
    assert bars.bars and not any(gc.is_tracked(b) for b in bars.bars)


def test_the_id_timestamp_cache_stays_small_while_zones_are_made_every_second() -> None:
    reg = Registry(rules(), T0)
    churn(reg, CYCLES)  # 5 000 zones, each created in a second of its own
    assert reg.stats.by_tf["S5"].created == CYCLES
    assert 0 < len(zones._iso_cache) <= zones.ISO_CACHE_MAX
