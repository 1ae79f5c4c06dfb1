"""Pure readings of venue values: numbers, sides, times and levels, each checked.

A value that no valid frame carries (not a number, NaN, infinite, negative, a time outside int64)
reads as None, and the router counts and skips what holds it (``bad_values``) instead of
publishing it or raising.
"""

from __future__ import annotations

import math
from typing import Literal

from services.ingest.protocol import Level, Num, ms_to_ns
from shared.messages import BookLevel


def side(value: str) -> Literal["buy", "sell"] | None:
    """``BUY``/``buy``/``Buy`` -> buy, ``SELL``/... -> sell; anything else None."""
    low = value.lower()
    if low == "buy":
        return "buy"
    if low == "sell":
        return "sell"
    return None


def number(value: Num) -> float | None:
    """A finite, non-negative decimal (a price, size, fee or tick size); None otherwise."""
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return x if x >= 0.0 and math.isfinite(x) else None


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
