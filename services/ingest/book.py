"""A local order book per asset, and the SHA-1 book hash Polymarket publishes.

The hash is SHA-1 hex of compact JSON with keys in the order market, asset_id, timestamp,
hash (empty), bids, asks, min_order_size, tick_size, neg_risk, last_trade_price; levels are
``{"price": str, "size": str}`` with bids ascending and asks descending (best level last), the
order the server lists them in. Prices and sizes stay the server's strings, so the hash is exact.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

_ENC = msgspec.json.Encoder()


def book_hash(
    market: str,
    asset_id: str,
    timestamp: str,
    bids: Iterable[tuple[str, str]],
    asks: Iterable[tuple[str, str]],
    min_order_size: str = "",
    tick_size: str = "",
    neg_risk: bool = False,
    last_trade_price: str = "",
) -> str:
    """The server's book hash; ``bids`` ascending and ``asks`` descending by price."""
    doc = {
        "market": market,
        "asset_id": asset_id,
        "timestamp": timestamp,
        "hash": "",
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "min_order_size": min_order_size,
        "tick_size": tick_size,
        "neg_risk": neg_risk,
        "last_trade_price": last_trade_price,
    }
    return hashlib.sha1(_ENC.encode(doc)).hexdigest()


class LocalBook:
    """Levels of one asset keyed by the price string; size "0" removes a level.

    The price order is kept between updates: most changes only resize a level, so the hash check
    (which needs the levels sorted) re-sorts a side only after a level was added or removed.
    """

    __slots__ = (
        "_ask_order",
        "_bid_order",
        "asks",
        "bids",
        "last_trade_price",
        "min_order_size",
        "neg_risk",
        "tick_size",
    )

    def __init__(self) -> None:
        self.bids: dict[str, str] = {}
        self.asks: dict[str, str] = {}
        self._bid_order: list[str] | None = []  # prices ascending; None: to sort again
        self._ask_order: list[str] | None = []  # prices descending
        self.tick_size = ""
        self.min_order_size = ""
        self.neg_risk = False
        self.last_trade_price = ""

    def reset(self, bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> None:
        self.bids = {p: s for p, s in bids if _positive(s)}
        self.asks = {p: s for p, s in asks if _positive(s)}
        self._bid_order = self._ask_order = None

    def apply(self, is_buy: bool, price: str, size: str) -> None:
        side = self.bids if is_buy else self.asks
        if _positive(size):
            if price not in side:
                self._forget_order(is_buy)
            side[price] = size
        elif side.pop(price, None) is not None:
            self._forget_order(is_buy)

    def _forget_order(self, is_buy: bool) -> None:
        if is_buy:
            self._bid_order = None
        else:
            self._ask_order = None

    def best_bid(self) -> float:
        order = self._bid_order
        if order is not None:
            return float(order[-1]) if order else 0.0
        return max(map(float, self.bids), default=0.0)

    def best_ask(self) -> float:
        order = self._ask_order
        if order is not None:
            return float(order[-1]) if order else 0.0
        return min(map(float, self.asks), default=0.0)

    def _bid_prices(self) -> list[str]:
        order = self._bid_order
        if order is None:
            order = self._bid_order = sorted(self.bids, key=float)
        return order

    def _ask_prices(self) -> list[str]:
        order = self._ask_order
        if order is None:
            order = self._ask_order = sorted(self.asks, key=float, reverse=True)
        return order

    def sorted_bids(self) -> list[tuple[str, str]]:
        """Ascending by price (the server's order, best last)."""
        bids = self.bids
        return [(p, bids[p]) for p in self._bid_prices()]

    def sorted_asks(self) -> list[tuple[str, str]]:
        """Descending by price (the server's order, best last)."""
        asks = self.asks
        return [(p, asks[p]) for p in self._ask_prices()]

    def hash(self, market: str, asset_id: str, timestamp: str) -> str:
        return book_hash(
            market,
            asset_id,
            timestamp,
            self.sorted_bids(),
            self.sorted_asks(),
            self.min_order_size,
            self.tick_size,
            self.neg_risk,
            self.last_trade_price,
        )


def _positive(size: str) -> bool:
    try:
        return float(size) > 0.0
    except ValueError:
        return False
