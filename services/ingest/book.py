"""A local order book per asset, and the SHA-1 book hash Polymarket publishes.

The hash (measured on real frames, issue 12) is SHA-1 hex of compact JSON (separators ``,`` and
``:``, non-ASCII kept) of an object with, in this order: ``market``, ``asset_id``, ``timestamp``
(a string), ``hash`` (empty), ``bids``, ``asks``, ``min_order_size``, ``tick_size``, ``neg_risk``
and, in the 10-field variant (2026-05 books), ``last_trade_price``; the 9-field variant (2025-10)
stops at ``neg_risk``. Levels are ``{"price": str, "size": str}`` holding the wire strings
verbatim, bids ascending and asks descending (best level last), the order the server lists them in.

The serialized levels are cached per side, and a level's fragment per price: a change re-joins
one side's cached fragments and encodes one level, not the whole book.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import msgspec

_ENC = msgspec.json.Encoder()
_enc = _ENC.encode
VARIANTS = (10, 9)  # fields hashed, in the order they are tried on a book not pinned yet


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
    fields: int = 10,
) -> str:
    """The server's book hash; ``bids`` ascending and ``asks`` descending by price."""
    return _digest(
        market,
        asset_id,
        timestamp,
        b",".join(_level(p, s) for p, s in bids),
        b",".join(_level(p, s) for p, s in asks),
        min_order_size,
        tick_size,
        neg_risk,
        last_trade_price,
        fields,
    )


def _level(price: str, size: str) -> bytes:
    return b'{"price":' + _enc(price) + b',"size":' + _enc(size) + b"}"


def _digest(
    market: str,
    asset_id: str,
    timestamp: str,
    bids: bytes,
    asks: bytes,
    min_order_size: str,
    tick_size: str,
    neg_risk: bool,
    last_trade_price: str,
    fields: int,
) -> str:
    parts = [
        b'{"market":',
        _enc(market),
        b',"asset_id":',
        _enc(asset_id),
        b',"timestamp":',
        _enc(timestamp),
        b',"hash":"","bids":[',
        bids,
        b'],"asks":[',
        asks,
        b'],"min_order_size":',
        _enc(min_order_size),
        b',"tick_size":',
        _enc(tick_size),
        b',"neg_risk":true' if neg_risk else b',"neg_risk":false',
    ]
    if fields >= 10:
        parts += (b',"last_trade_price":', _enc(last_trade_price))
    parts.append(b"}")
    return hashlib.sha1(b"".join(parts)).hexdigest()


class LocalBook:
    """Levels of one asset keyed by the price string; size "0" removes a level.

    The price order is kept between updates: most changes only resize a level, so the hash check
    (which needs the levels sorted) re-sorts a side only after a level was added or removed.
    """

    __slots__ = (
        "_ask_json",
        "_ask_order",
        "_bid_json",
        "_bid_order",
        "_frags",
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
        self._bid_json: bytes | None = b""  # the side's levels serialized; None: to join again
        self._ask_json: bytes | None = b""
        self._frags: tuple[dict[str, bytes], dict[str, bytes]] = ({}, {})  # (bids, asks): price -> level
        self.tick_size = ""
        self.min_order_size = ""
        self.neg_risk = False
        self.last_trade_price = ""

    def take_fields(
        self,
        tick_size: str | None,
        last_trade_price: str | None,
        min_order_size: str | None,
        neg_risk: bool | None,
    ) -> None:
        """The hashed fields a book carries (None: it does not, the known value stays)."""
        if tick_size is not None:
            self.tick_size = tick_size
        if last_trade_price is not None:
            self.last_trade_price = last_trade_price
        if min_order_size is not None:
            self.min_order_size = min_order_size
        if neg_risk is not None:
            self.neg_risk = neg_risk

    def reset(self, bids: Iterable[tuple[str, str]], asks: Iterable[tuple[str, str]]) -> None:
        self.bids = {p: s for p, s in bids if _positive(s)}
        self.asks = {p: s for p, s in asks if _positive(s)}
        self._bid_order = self._ask_order = None
        self._bid_json = self._ask_json = None
        self._frags = ({}, {})

    def apply(self, is_buy: bool, price: str, size: str) -> None:
        side = self.bids if is_buy else self.asks
        if is_buy:
            self._bid_json = None
            self._frags[0].pop(price, None)
        else:
            self._ask_json = None
            self._frags[1].pop(price, None)
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

    def _side_json(self, is_buy: bool) -> bytes:
        cached = self._bid_json if is_buy else self._ask_json
        if cached is not None:
            return cached
        levels, order, frags = (
            (self.bids, self._bid_prices(), self._frags[0])
            if is_buy
            else (self.asks, self._ask_prices(), self._frags[1])
        )
        out = []
        for p in order:
            frag = frags.get(p)
            if frag is None:
                frag = frags[p] = _level(p, levels[p])
            out.append(frag)
        joined = b",".join(out)
        if is_buy:
            self._bid_json = joined
        else:
            self._ask_json = joined
        return joined

    def hash(self, market: str, asset_id: str, timestamp: str, fields: int = 10) -> str:
        """The book's hash under the ``fields`` (9 or 10) variant."""
        return _digest(
            market,
            asset_id,
            timestamp,
            self._side_json(True),
            self._side_json(False),
            self.min_order_size,
            self.tick_size,
            self.neg_risk,
            self.last_trade_price,
            fields,
        )


def _positive(size: str) -> bool:
    try:
        return float(size) > 0.0
    except ValueError:
        return False
