"""The price index's heaps pop in heapq's order over (key, tok, entry) tuples, compiled or pure."""

import gc
import heapq

from hypothesis import given
from hypothesis import strategies as st

from services.registry import heap
from services.registry.entry import Entry
from services.registry.stats import TimeframeStats
from shared.messages import Zone

ZONE = Zone(
    id="z",
    symbol="s",
    timeframe="H1",
    kind="k",
    top=1.0,
    bottom=0.5,
    strength=0.5,
    created_ns=1,
    expires_ns=2,
)
ENTRY = Entry(ZONE, 0.5, 1.0, 0, TimeframeStats())
KEYS = st.floats(allow_nan=False, width=64) | st.sampled_from([0.0, -0.0, 0.5, 1.0])  # ties on the key


@given(st.lists(st.tuples(st.booleans(), KEYS), max_size=300))
def test_pushes_and_pops_come_out_in_heapqs_order(ops: list[tuple[bool, float]]) -> None:
    mine: list[heap.Item] = []
    theirs: list[tuple[float, int]] = []
    for tok, (is_pop, key) in enumerate(ops, 1):
        if is_pop and theirs:
            item = heap.pop(mine)
            assert (item.key, item.tok) == heapq.heappop(theirs)
        else:
            heap.push(mine, heap.Item(key, tok, ENTRY))
            heapq.heappush(theirs, (key, tok))
    assert [(i.key, i.tok) for i in (heap.pop(mine) for _ in range(len(mine)))] == sorted(theirs)


@given(st.lists(KEYS, max_size=200))
def test_a_heapified_list_pops_in_order(keys: list[float]) -> None:
    items = [heap.Item(k, tok, ENTRY) for tok, k in enumerate(keys)]
    heap.heapify(items)
    out = [heap.pop(items) for _ in range(len(keys))]
    assert [(i.key, i.tok) for i in out] == sorted((k, tok) for tok, k in enumerate(keys))


def test_an_item_is_not_tracked_by_the_cyclic_gc() -> None:
    assert not gc.is_tracked(heap.Item(1.0, 1, ENTRY))
