"""LocalBook keeps its price order between updates: checked against sorting from scratch."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.book import LocalBook

PRICES = [f"0.{i:02d}" for i in range(1, 100)] + ["0.5", "0.50", "1", "0.001"]
SIZES = ["0", "0.0", "1", "12.5", "300", "bad"]

update = st.tuples(st.booleans(), st.sampled_from(PRICES), st.sampled_from(SIZES))
step = st.one_of(
    update.map(lambda u: ("apply", u)),
    st.lists(st.tuples(st.sampled_from(PRICES), st.sampled_from(SIZES)), max_size=12).map(
        lambda levels: ("reset", levels)
    ),
    st.just(("hash", None)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_order_kept_between_updates_equals_sorting_from_scratch(steps: list[tuple[str, object]]) -> None:
    book = LocalBook()
    for kind, arg in steps:
        if kind == "apply":
            is_buy, price, size = arg  # type: ignore[misc]
            book.apply(is_buy, price, size)
        elif kind == "reset":
            levels = list(arg)  # type: ignore[call-overload]
            book.reset(levels, levels)
        else:
            book.hash("m", "a", "1")  # sorts and keeps the order
        assert book.sorted_bids() == sorted(book.bids.items(), key=lambda kv: float(kv[0]))
        assert book.sorted_asks() == sorted(book.asks.items(), key=lambda kv: float(kv[0]), reverse=True)
        assert book.best_bid() == max(map(float, book.bids), default=0.0)
        assert book.best_ask() == min(map(float, book.asks), default=0.0)
