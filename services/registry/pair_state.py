"""What the detectors of one (symbol, timeframe) store to continue exactly after a restart.

msgspec Structs the store encodes and decodes, kept out of the compiled detectors (detectors.py):
a Struct class compiled by mypyc loses the field types msgspec decodes by.
"""

from __future__ import annotations

import msgspec


class CandleState(msgspec.Struct, array_like=True, gc=False):
    """A candle as stored; run pure, also candles.py's ``Bar`` (``gc=False``: the GC does not track
    it, where it would a Python class), made as ``Bar(start_ns, end_ns, ...)``."""

    start_ns: int
    end_ns: int
    open: float
    high: float
    low: float
    close: float
    ticks: int = 1


class PairState(msgspec.Struct, kw_only=True):
    """What the detectors of one (symbol, timeframe) need to continue exactly where they stopped.

    The pivot state is the closed-candle window itself: a pivot is found from the last 2N+1 closed
    candles, an FVG from the last 3.
    """

    symbol: str
    timeframe: str
    tf_ns: int
    swing_bars: int  # the N the window was kept for
    last_closed_start: int = -1  # ticks of this bucket or earlier are late
    current: CandleState | None = None  # the open candle (the newest, when several are open)
    closed: list[CandleState] = []  # oldest first
    # Open candles older than ``current``, still within the allowed lateness (oldest first), and
    # the symbol's watermark: its latest event time, whether it is live, and its point.
    opening: list[CandleState] = []
    event_ns: int = 0
    live: bool = False
    point_ns: int = 0
