"""A local order book per asset, and the SHA-1 book hash Polymarket publishes.

The hash (measured on real frames, issue 12) is SHA-1 hex of compact JSON (separators ``,`` and
``:``, non-ASCII kept) of an object with, in this order: ``market``, ``asset_id``, ``timestamp``
(a string), ``hash`` (empty), ``bids``, ``asks``, ``min_order_size``, ``tick_size``, ``neg_risk``
and, in the 10-field variant (2026-05 books), ``last_trade_price``; the 9-field variant (2025-10)
stops at ``neg_risk``. Levels are ``{"price": str, "size": str}`` holding the wire strings
verbatim, bids ascending and asks descending (best level last), the order the server lists them in.

Serialization is incremental: each side keeps its levels' JSON, comma-joined, in price order, and a
change splices the one level's fragment in or out of it; the document's head (market, asset) and
tail (the four fields after the levels) are cached while they stay the same. A check after a
resize costs one level's encoding, a scan and a copy of the side's bytes, and the SHA-1 itself.
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from typing import Final

import msgspec

_ENC: Final = msgspec.json.Encoder()
_enc: Final = _ENC.encode
VARIANTS: Final = (10, 9)  # fields hashed, in the order they are tried on a book not pinned yet


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
    head = _head(market, asset_id)
    tail = _tail(min_order_size, tick_size, neg_risk, last_trade_price, fields)
    return _sha1(b"".join((head, _enc(timestamp), _MID, bids, _ASKS, asks, tail))).hexdigest()


_sha1: Final = hashlib.sha1
_MID: Final = b',"hash":"","bids":['
_ASKS: Final = b'],"asks":['


def _head(market: str, asset_id: str) -> bytes:
    return b'{"market":' + _enc(market) + b',"asset_id":' + _enc(asset_id) + b',"timestamp":'


def _tail(min_order_size: str, tick_size: str, neg_risk: bool, last_trade_price: str, fields: int) -> bytes:
    tail = (
        b'],"min_order_size":'
        + _enc(min_order_size)
        + b',"tick_size":'
        + _enc(tick_size)
        + (b',"neg_risk":true' if neg_risk else b',"neg_risk":false')
    )
    if fields >= 10:
        tail += b',"last_trade_price":' + _enc(last_trade_price)
    return tail + b"}"


class _Side:
    """One side's levels (price string -> size string) and their serialization, kept in order.

    ``order`` holds the prices ascending by number (for bisect with the C ``float`` as key) and
    ``joined`` the levels' JSON, comma-joined, in the server's order (asks descending, best last). A change splices ``joined`` in place (the level's
    fragment is found by its unique ``{"price":..,`` prefix, a scan in C): a resize replaces one
    fragment, an added or removed level inserts or deletes one (its place by bisect on the prices'
    numbers, no re-sort). No per-level copies are kept: a book costs its levels and one bytes
    object a side. After a reset both are rebuilt when next needed.
    """

    __slots__ = ("descending", "joined", "levels", "order")

    def __init__(self, descending: bool) -> None:
        self.descending = descending
        self.levels: dict[str, str] = {}
        self.order: list[str] | None = []
        self.joined: bytearray | None = bytearray()  # None: to build again from the levels

    def reset(self, levels: Iterable[tuple[str, str]]) -> None:
        self.levels = {p: s for p, s in levels if _positive(s)}
        self.order = self.joined = None

    def set(self, price: str, size: str, positive: bool | None = None) -> None:
        """Set a level (``positive``: whether ``size`` is above 0, when the caller already knows)."""
        levels = self.levels
        if positive is None:
            positive = _positive(size)
        old = levels.get(price)
        if positive:
            levels[price] = size
            joined = self.joined
            if old is not None:
                if joined is not None:  # in place: the size's bytes only
                    pre = _PREFIXES.get(price) or _prefix(price)
                    at = joined.find(pre) + len(pre) + 7  # past '"size":'
                    # a stored size reads as a number: no "}" in it, the first one ends the level
                    joined[at : joined.index(b"}", at)] = _enc(size)
                return
            order = self.order
            if order is None:
                return
            descending = self.descending
            # ascending by number; among equal numbers in the server's order (asks: reversed)
            if descending:
                i = bisect_left(order, float(price), key=float)
            else:
                i = bisect_right(order, float(price), key=float)
            order.insert(i, price)
            if joined is not None:
                frag = _level(price, size)
                # the level after it in the JSON: the next price up (bids) or down (asks)
                j = i - 1 if descending else i + 1
                if len(order) == 1:
                    joined[:] = frag
                elif 0 <= j < len(order):
                    nxt = order[j]
                    at = joined.find(_PREFIXES.get(nxt) or _prefix(nxt))
                    joined[at:at] = frag + b","
                else:
                    joined += b"," + frag
        elif old is not None:
            del levels[price]
            order = self.order
            if order is None:
                return
            order.remove(price)
            joined = self.joined
            if joined is not None:
                pre = _PREFIXES.get(price) or _prefix(price)
                at = joined.find(pre)
                end = joined.index(b"}", at + len(pre)) + 1  # see the resize
                if end < len(joined):  # not the last: its comma goes with it
                    del joined[at : end + 1]
                else:
                    del joined[max(0, at - 1) :]

    def prices(self) -> list[str]:
        """Ascending by number (asks: the reverse of the server's order)."""
        order = self.order
        if order is None:
            order = sorted(self.levels, key=float, reverse=self.descending)
            if self.descending:
                order.reverse()
            self.order = order
        return order

    def server_order(self) -> list[str]:
        """The server's order: bids ascending, asks descending (best last)."""
        return self.prices()[::-1] if self.descending else self.prices()

    def best(self) -> float:
        order = self.order
        if order is not None:
            return float(order[0 if self.descending else -1]) if order else 0.0
        if not self.levels:
            return 0.0
        return (min if self.descending else max)(map(float, self.levels))

    def json(self) -> bytearray:
        joined = self.joined
        if joined is None:
            levels = self.levels
            joined = self.joined = bytearray(b",".join([_level(p, levels[p]) for p in self.server_order()]))
        return joined


# Level prefixes already made: prices sit on a tick grid and repeat; bounded, cleared when full.
_PREFIXES: Final[dict[str, bytes]] = {}
PREFIX_CACHE_MAX: Final = 4096


def _prefix(price: str) -> bytes:
    """The start of a level's fragment, unique in its side (prices are the side's keys)."""
    pre = b'{"price":%b,' % _enc(price)
    if len(_PREFIXES) >= PREFIX_CACHE_MAX:
        _PREFIXES.clear()
    _PREFIXES[price] = pre
    return pre


class LocalBook:
    """Levels of one asset keyed by the price string; size "0" removes a level."""

    __slots__ = (
        "_head",
        "_head_asset",
        "_head_market",
        "_last_trade_price",
        "_min_order_size",
        "_neg_risk",
        "_tail",
        "_tail_fields",
        "_tick_size",
        "ask_side",
        "bid_side",
    )

    def __init__(self) -> None:
        self.bid_side = _Side(descending=False)
        self.ask_side = _Side(descending=True)
        self._head_market: str | None = None  # the ids ``_head`` is for; None: none yet
        self._head_asset: str | None = None
        self._head = b""
        self._tail_fields = -1  # the variant ``_tail`` is for; -1: to make again (a field changed)
        self._tail = b""
        self._tick_size = ""
        self._min_order_size = ""
        self._neg_risk = False
        self._last_trade_price = ""

    # The four hashed fields after the levels: setting one drops the cached tail.
    @property
    def tick_size(self) -> str:
        return self._tick_size

    @tick_size.setter
    def tick_size(self, value: str) -> None:
        self._tick_size = value
        self._tail_fields = -1

    @property
    def min_order_size(self) -> str:
        return self._min_order_size

    @min_order_size.setter
    def min_order_size(self, value: str) -> None:
        self._min_order_size = value
        self._tail_fields = -1

    @property
    def neg_risk(self) -> bool:
        return self._neg_risk

    @neg_risk.setter
    def neg_risk(self, value: bool) -> None:
        self._neg_risk = value
        self._tail_fields = -1

    @property
    def last_trade_price(self) -> str:
        return self._last_trade_price

    @last_trade_price.setter
    def last_trade_price(self, value: str) -> None:
        self._last_trade_price = value
        self._tail_fields = -1

    @property
    def bids(self) -> dict[str, str]:
        return self.bid_side.levels

    @property
    def asks(self) -> dict[str, str]:
        return self.ask_side.levels

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
        self.bid_side.reset(bids)
        self.ask_side.reset(asks)

    def apply(self, is_buy: bool, price: str, size: str, positive: bool | None = None) -> None:
        """Set a level; ``positive``: whether ``size`` is above 0, when the caller has read it."""
        (self.bid_side if is_buy else self.ask_side).set(price, size, positive)

    def best_bid(self) -> float:
        return self.bid_side.best()

    def best_ask(self) -> float:
        return self.ask_side.best()

    def sorted_bids(self) -> list[tuple[str, str]]:
        """Ascending by price (the server's order, best last)."""
        bids = self.bid_side.levels
        return [(p, bids[p]) for p in self.bid_side.server_order()]

    def sorted_asks(self) -> list[tuple[str, str]]:
        """Descending by price (the server's order, best last)."""
        asks = self.ask_side.levels
        return [(p, asks[p]) for p in self.ask_side.server_order()]

    def hash(self, market: str, asset_id: str, timestamp: str, fields: int = 10) -> str:
        """The book's hash under the ``fields`` (9 or 10) variant."""
        if market != self._head_market or asset_id != self._head_asset:
            self._head_market, self._head_asset = market, asset_id
            self._head = _head(market, asset_id)
        if fields != self._tail_fields:
            self._tail_fields = fields
            self._tail = _tail(
                self._min_order_size, self._tick_size, self._neg_risk, self._last_trade_price, fields
            )
        bids = self.bid_side.joined
        if bids is None:
            bids = self.bid_side.json()
        asks = self.ask_side.joined
        if asks is None:
            asks = self.ask_side.json()
        return _sha1(b"".join((self._head, _enc(timestamp), _MID, bids, _ASKS, asks, self._tail))).hexdigest()


def _positive(size: str) -> bool:
    try:
        return float(size) > 0.0
    except ValueError:
        return False
