"""Pure readings of venue values and events: numbers, sides, times, levels, and the poolwire
messages an event makes, each checked.

A value that no valid frame carries (not a number, NaN, infinite, negative, a time outside int64)
reads as None, and so does an event that holds one: the router counts and skips it
(``bad_values``) instead of publishing it or raising.
"""

from __future__ import annotations

import math
from typing import Final, Literal

from services.ingest.protocol import (
    BestBidAskEvent,
    BookEvent,
    LastTradePriceEvent,
    Level,
    Num,
    TickSizeChangeEvent,
    ms_to_ns,
)
from shared.constants import pm_symbol
from shared.messages import BookLevel, MarketLifecycle, Price, TickSizeChange, Trade

Side = Literal["buy", "sell"]
_SIDES: Final[dict[str, Side]] = {"buy": "buy", "sell": "sell"}
SIDES_AS_SENT: Final[dict[str, Side]] = {"BUY": "buy", "SELL": "sell", "buy": "buy", "sell": "sell"}


def side(value: str) -> Side | None:
    """``BUY``/``buy``/``Buy`` -> buy, ``SELL``/... -> sell; anything else None. The one side
    reader: changes and trades alike."""
    return SIDES_AS_SENT.get(value) or _SIDES.get(value.lower())


_INF: Final = math.inf


def number(value: Num) -> float | None:
    """A finite, non-negative decimal (a price, size, fee or tick size); None otherwise."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if 0.0 <= x < _INF else None  # NaN fails both; math.isfinite is a call through the module


# Wire price strings already read: prices sit on a tick grid and repeat (a dict hit costs a
# fifth of float() on a string); bounded, cleared (in place: the router reads it too) when full.
PRICES: Final[dict[str, float]] = {}
PRICE_CACHE_MAX: Final = 4096


def price_value(text: str) -> float | None:
    """A price string's value when finite and above 0; None otherwise."""
    x = PRICES.get(text)
    if x is not None:
        return x
    try:
        x = float(text)
    except (TypeError, ValueError, OverflowError):
        return None
    if not 0.0 < x < _INF:
        return None
    if len(PRICES) >= PRICE_CACHE_MAX:
        PRICES.clear()
    PRICES[text] = x
    return x


def change_values(price: str, size: str) -> tuple[float, float] | None:
    """A change's (price > 0, size >= 0), both finite; None if either is not (one call: hot path)."""
    p = PRICES.get(price) or price_value(price)
    if p is None:
        return None
    try:
        s = float(size)
    except (TypeError, ValueError, OverflowError):
        return None
    return (p, s) if 0.0 <= s < _INF else None


def best_or(value: str, fallback: float) -> float:
    """A best bid/ask the server sent (when readable and above 0), else ``fallback``."""
    if value:
        x = PRICES.get(value) or price_value(value)
        if x is not None:
            return x
    return fallback


def price(value: Num) -> float | None:
    """A finite price above 0."""
    x = number(value)
    return x if x is not None and x > 0.0 else None


def event_ns(ts: Num) -> int | None:
    """An exchange time in ms as int64 ns; None when unreadable or out of range."""
    ns = ms_to_ns(ts)
    return ns if ns >= 0 else None


def levels_best_first(levels: list[Level], descending: bool) -> list[BookLevel] | None:
    """The book's levels as published (best first, empty levels left out); None if one is bad."""
    out: list[BookLevel] = []
    for lv in levels:
        p = price(lv.price)
        s = number(lv.size)
        if p is None or s is None:
            return None
        if s > 0.0:
            out.append(BookLevel(p, s))
    out.sort(key=lambda lv: lv.price, reverse=descending)
    return out


def tick_size(value: str) -> float:
    """A book's tick size string as a number; 0.0 when unknown or unreadable."""
    return (number(value) or 0.0) if value else 0.0


def book_levels(ev: BookEvent) -> tuple[list[BookLevel], list[BookLevel], int] | None:
    """A book's (bids best first, asks best first, exchange time in ns); None if one is bad."""
    bids = levels_best_first(ev.bids or ev.buys or [], descending=True)
    asks = levels_best_first(ev.asks or ev.sells or [], descending=False)
    ts_ns = event_ns(ev.timestamp)
    if bids is None or asks is None or ts_ns is None:
        return None
    return bids, asks, ts_ns


def trade(ev: LastTradePriceEvent, market: str) -> Trade | None:
    """``last_trade_price`` -> Trade (``market`` when the event names none)."""
    p = price(ev.price)
    size = number(ev.size)
    fee = number(ev.fee_rate_bps)
    taker = side(ev.side)
    ts_ns = event_ns(ev.timestamp)
    if p is None or size is None or fee is None or taker is None or ts_ns is None:
        return None
    return Trade(
        asset=ev.asset_id,
        market=ev.market or market,
        price=p,
        size=size,
        side=taker,
        fee_rate_bps=fee,
        event_ns=ts_ns,
    )


def tick_size_change(ev: TickSizeChangeEvent, market: str) -> TickSizeChange | None:
    old = number(ev.old_tick_size or 0.0)
    new = price(ev.new_tick_size)
    ts_ns = event_ns(ev.timestamp)
    if old is None or new is None or ts_ns is None:
        return None
    return TickSizeChange(
        asset=ev.asset_id,
        market=ev.market or market,
        old_tick_size=old,
        new_tick_size=new,
        event_ns=ts_ns,
    )


def best_bid_ask(ev: BestBidAskEvent) -> tuple[float, float, int] | None:
    """(best bid, best ask, exchange time in ns); an absent side reads 0.0."""
    bid = number(ev.best_bid or 0.0)
    ask = number(ev.best_ask or 0.0)
    ts_ns = event_ns(ev.timestamp)
    if bid is None or ask is None or ts_ns is None:
        return None
    return bid, ask, ts_ns


def mid_price(asset: str, mid: float, bid: float, ask: float, ts_ns: int) -> Price:
    """The book mid as ``px.pm.<asset>`` carries it."""
    return Price(symbol=pm_symbol(asset), price=mid, bid=bid, ask=ask, source="book", event_ns=ts_ns)


def lifecycle(
    status: Literal["new", "resolved"],
    market: str,
    assets: list[str],
    winner: str,
    question: str,
    ts_ns: int,
) -> list[MarketLifecycle]:
    """``new_market`` / ``market_resolved`` -> one MarketLifecycle per asset."""
    return [
        MarketLifecycle(
            asset=asset,
            market=market,
            status=status,
            winning_asset=winner,
            question=question,
            event_ns=ts_ns,
        )
        for asset in assets
    ]


JSON_START: Final = ("{", "[", b"{", b"[")


def text_frame(data: bytes | str) -> Literal["notice", "garbage"] | None:
    """None for a JSON frame (after blanks); else a server notice or garbage."""
    stripped = data.strip()
    if stripped and stripped[:1] in JSON_START:
        return None
    return "notice" if is_notice(stripped) else "garbage"


def is_notice(text: bytes | str) -> bool:
    """A short upper-case server notice such as ``NO NEW ASSETS`` (not an error)."""
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            return False
    return len(text) < 200 and all(ch.isupper() or ch in " _-!." for ch in text)


def excerpt(data: bytes | str) -> str:
    """The start of a frame, for a log line."""
    return repr(data[:80]) + ("..." if len(data) > 80 else "")
