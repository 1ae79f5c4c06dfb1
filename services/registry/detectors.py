"""Zone detectors over the price stream: candles per timeframe, fair value gaps, swing pivots.

* Candles: a tick at ``t`` belongs to the bucket ``[t // tf * tf, + tf)`` (UTC epoch aligned, so
  D1 candles run 00:00-24:00 UTC). A candle closes when a tick of a later bucket arrives, or when
  :meth:`Detectors.on_time` sees its bucket has ended. A *late* tick (its bucket already closed) is
  dropped and counted: a closed candle is never amended. Empty buckets make no candle; detectors
  see the candles that exist, in order.
* Fair value gap (3 candles c1 c2 c3): bullish when ``c3.low > c1.high`` (zone ``[c1.high,
  c3.low]``), bearish when ``c3.high < c1.low`` (zone ``[c3.high, c1.low]``); the gap must be at
  least ``fvg_min_gap`` of the price. Strength: gap / c2's range, capped at 1. Created at c3's close.
* Swing pivots, ``N`` bars each side: a swing high is a candle whose high is strictly above the
  highs of the N candles before and the N after; known only when the N-th later candle closes
  (causal: no look-ahead), so it is created then. It gives buy-side liquidity (``bsl``) over its
  upper wick ``[max(open, close), high]``; a swing low gives sell-side liquidity (``ssl``) over
  ``[low, min(open, close)]``. Strength 1.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from services.registry.zones import BSL, FVG_BEARISH, FVG_BULLISH, SSL


@dataclass(slots=True)
class Candle:
    start_ns: int
    end_ns: int
    open: float
    high: float
    low: float
    close: float
    ticks: int = 1


@dataclass(frozen=True, slots=True)
class Detection:
    symbol: str
    timeframe: str
    kind: str
    top: float
    bottom: float
    strength: float
    created_ns: int


class CandleBuilder:
    """Candles of one (symbol, timeframe)."""

    __slots__ = ("current", "last_closed_start", "late", "tf_ns")

    def __init__(self, tf_ns: int) -> None:
        self.tf_ns = tf_ns
        self.current: Candle | None = None
        self.last_closed_start = -1
        self.late = 0

    def on_tick(self, ts_ns: int, price: float) -> Candle | None:
        """Add a tick; returns the candle it closed, if any."""
        start = ts_ns - ts_ns % self.tf_ns
        cur = self.current
        if cur is not None:
            if start == cur.start_ns:
                if price > cur.high:
                    cur.high = price
                elif price < cur.low:
                    cur.low = price
                cur.close = price
                cur.ticks += 1
                return None
            if start < cur.start_ns:
                self.late += 1
                return None
            self.last_closed_start = cur.start_ns
        elif start <= self.last_closed_start:
            self.late += 1
            return None
        self.current = Candle(start, start + self.tf_ns, price, price, price, price)
        return cur

    def on_time(self, now_ns: int) -> Candle | None:
        """Close the open candle if its bucket has ended; returns it."""
        cur = self.current
        if cur is not None and now_ns >= cur.end_ns:
            self.current = None
            self.last_closed_start = cur.start_ns
            return cur
        return None


class PatternDetector:
    """FVGs and swing pivots over the closed candles of one (symbol, timeframe)."""

    __slots__ = ("candles", "fvg_min_gap", "n", "symbol", "timeframe")

    def __init__(self, symbol: str, timeframe: str, swing_bars: int = 2, fvg_min_gap: float = 0.0) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.n = swing_bars
        self.fvg_min_gap = fvg_min_gap
        self.candles: deque[Candle] = deque(maxlen=max(3, 2 * swing_bars + 1))

    def on_candle(self, c: Candle) -> list[Detection]:
        self.candles.append(c)
        out: list[Detection] = []
        cs = self.candles
        if len(cs) >= 3:
            c1, c2, c3 = cs[-3], cs[-2], cs[-1]
            rng = c2.high - c2.low
            if c3.low > c1.high:
                gap = c3.low - c1.high
                if gap >= self.fvg_min_gap * abs(c3.low):
                    strength = min(1.0, gap / rng) if rng > 0 else 1.0
                    out.append(self._det(FVG_BULLISH, c3.low, c1.high, strength, c3.end_ns))
            elif c3.high < c1.low:
                gap = c1.low - c3.high
                if gap >= self.fvg_min_gap * abs(c1.low):
                    strength = min(1.0, gap / rng) if rng > 0 else 1.0
                    out.append(self._det(FVG_BEARISH, c1.low, c3.high, strength, c3.end_ns))
        n = self.n
        if len(cs) == 2 * n + 1:
            pivot = cs[n]
            others = [cs[i] for i in range(2 * n + 1) if i != n]
            if all(pivot.high > o.high for o in others):
                out.append(self._det(BSL, pivot.high, max(pivot.open, pivot.close), 1.0, c.end_ns))
            if all(pivot.low < o.low for o in others):
                out.append(self._det(SSL, min(pivot.open, pivot.close), pivot.low, 1.0, c.end_ns))
        return out

    def _det(self, kind: str, top: float, bottom: float, strength: float, created_ns: int) -> Detection:
        return Detection(self.symbol, self.timeframe, kind, top, bottom, strength, created_ns)


@dataclass(slots=True)
class DetectorStats:
    candles: dict[str, int] = field(default_factory=dict)  # per timeframe
    detections: dict[str, int] = field(default_factory=dict)  # per kind
    late_ticks: int = 0


class Detectors:
    """Every (symbol, timeframe) pair's candle builder and pattern detector."""

    def __init__(self, timeframes: dict[str, int], swing_bars: int = 2, fvg_min_gap: float = 0.0) -> None:
        self.timeframes = timeframes  # name -> length in ns
        self.swing_bars = swing_bars
        self.fvg_min_gap = fvg_min_gap
        self.stats = DetectorStats(candles=dict.fromkeys(timeframes, 0))
        self._pairs: dict[str, list[tuple[CandleBuilder, PatternDetector]]] = {}

    def _for(self, symbol: str) -> list[tuple[CandleBuilder, PatternDetector]]:
        pairs = self._pairs.get(symbol)
        if pairs is None:
            pairs = self._pairs[symbol] = [
                (CandleBuilder(ns), PatternDetector(symbol, tf, self.swing_bars, self.fvg_min_gap))
                for tf, ns in self.timeframes.items()
            ]
        return pairs

    def on_price(self, symbol: str, ts_ns: int, price: float) -> list[Detection]:
        out: list[Detection] = []
        for builder, detector in self._for(symbol):
            late = builder.late
            closed = builder.on_tick(ts_ns, price)
            if builder.late != late:
                self.stats.late_ticks += 1
            if closed is not None:
                out.extend(self._closed(detector, closed))
        return out

    def on_time(self, now_ns: int) -> list[Detection]:
        out: list[Detection] = []
        for pairs in self._pairs.values():
            for builder, detector in pairs:
                closed = builder.on_time(now_ns)
                if closed is not None:
                    out.extend(self._closed(detector, closed))
        return out

    def _closed(self, detector: PatternDetector, candle: Candle) -> list[Detection]:
        stats = self.stats
        stats.candles[detector.timeframe] = stats.candles.get(detector.timeframe, 0) + 1
        found = detector.on_candle(candle)
        for d in found:
            stats.detections[d.kind] = stats.detections.get(d.kind, 0) + 1
        return found
