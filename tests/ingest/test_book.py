"""LocalBook keeps its price order and its serialized levels between updates: checked against
sorting and serializing from scratch (stdlib json, the rule as the issue states it)."""

from __future__ import annotations

import hashlib
import json
from typing import cast

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
    st.tuples(st.sampled_from(["", "5", "15"]), st.booleans(), st.sampled_from(["", "0.5"])).map(
        lambda f: ("fields", f)
    ),
    st.tuples(st.sampled_from(["m", "0x1"]), st.sampled_from(["a", "b"])).map(lambda ids: ("ids", ids)),
)


def reference_hash(book: LocalBook, market: str, asset: str, ts: str, fields: int) -> str:
    doc = {
        "market": market,
        "asset_id": asset,
        "timestamp": ts,
        "hash": "",
        "bids": [{"price": p, "size": s} for p, s in sorted(book.bids.items(), key=lambda kv: float(kv[0]))],
        "asks": [
            {"price": p, "size": s}
            for p, s in sorted(book.asks.items(), key=lambda kv: float(kv[0]), reverse=True)
        ],
        "min_order_size": book.min_order_size,
        "tick_size": book.tick_size,
        "neg_risk": book.neg_risk,
        "last_trade_price": book.last_trade_price,
    }
    if fields == 9:
        del doc["last_trade_price"]
    return hashlib.sha1(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()


@settings(max_examples=300, deadline=None)
@given(st.lists(step, max_size=60))
def test_order_kept_between_updates_equals_sorting_from_scratch(steps: list[tuple[str, object]]) -> None:
    book = LocalBook()
    market, asset = "m", "a"
    for kind, arg in steps:
        if kind == "apply":
            is_buy, price, size = cast(tuple[bool, str, str], arg)
            book.apply(is_buy, price, size)
        elif kind == "reset":
            levels = list(arg)  # type: ignore[call-overload]
            book.reset(levels, levels)
        elif kind == "fields":
            book.min_order_size, book.neg_risk, book.last_trade_price = arg  # type: ignore[misc]
        elif kind == "ids":
            market, asset = arg  # type: ignore[misc]
        else:
            book.hash(market, asset, "1")  # sorts, serializes and keeps both
        for fields in (10, 9):
            assert book.hash(market, asset, "17", fields) == reference_hash(book, market, asset, "17", fields)
        assert book.sorted_bids() == sorted(book.bids.items(), key=lambda kv: float(kv[0]))
        assert book.sorted_asks() == sorted(book.asks.items(), key=lambda kv: float(kv[0]), reverse=True)
        assert book.best_bid() == max(map(float, book.bids), default=0.0)
        assert book.best_ask() == min(map(float, book.asks), default=0.0)
