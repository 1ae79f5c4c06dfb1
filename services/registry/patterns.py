"""One (symbol, timeframe)'s pieces: its candle builder and the pattern rules over its closed candles.

* Fair value gap (3 candles c1 c2 c3): bullish when ``c3.low > c1.high`` (zone ``[c1.high,
  c3.low]``), bearish when ``c3.high < c1.low`` (zone ``[c3.high, c1.low]``); the gap must be at
  least ``fvg_min_gap`` of the price. Strength: gap / c2's range, capped at 1. Created at c3's close.
  With ``fvg_rule: body`` (smartmoneyconcepts' rule) c2's body must also point in the gap's
  direction: ``c2.close > c2.open`` for a bullish gap, ``<`` for a bearish one.
* Swing pivots, ``N`` bars each side: a swing high is a candle whose high is strictly above the
  highs of the N candles before and the N after; known only when the N-th later candle closes
  (causal: no look-ahead), so it is created then. It gives buy-side liquidity (``bsl``) over its
  upper wick ``[max(open, close), high]``; a swing low gives sell-side liquidity (``ssl``) over
  ``[low, min(open, close)]``. Strength 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Literal

from services.registry.candles import Bar, BarBuilder
from services.registry.zones import BSL, FVG_BEARISH, FVG_BULLISH, SSL

Candle = Bar  # a candle is candles.py's bar
FvgRule = Literal["gap", "body"]
_HIGH, _LOW = attrgetter("high"), attrgetter("low")


@dataclass(frozen=True, slots=True)
class Detection:
    symbol: str
    timeframe: str
    kind: str
    top: float
    bottom: float
    strength: float
    created_ns: int


class CandleBuilder(BarBuilder):
    """Candles of one (symbol, timeframe): candles.py's builder, noting changes for the store."""

    __slots__ = ("changed",)

    def __init__(self, tf_ns: int) -> None:
        super().__init__(tf_ns)
        self.changed = False  # since the state was last exported

    @property
    def tf_ns(self) -> int:
        return self.size_ns


def window_size(swing_bars: int) -> int:
    """Closed candles the detectors look at: 3 for an FVG, 2N+1 for a pivot."""
    return max(3, 2 * swing_bars + 1)


class PatternDetector:
    """FVGs and swing pivots over the closed candles of one (symbol, timeframe)."""

    __slots__ = ("body_rule", "candles", "fvg_min_gap", "n", "symbol", "timeframe")

    def __init__(
        self,
        symbol: str,
        timeframe: str,
        swing_bars: int = 2,
        fvg_min_gap: float = 0.0,
        fvg_rule: FvgRule = "gap",
    ) -> None:
        self.symbol = symbol
        self.timeframe = timeframe
        self.n = swing_bars
        self.fvg_min_gap = fvg_min_gap
        self.body_rule = fvg_rule == "body"
        # The window, oldest first (a list: an empty deque alone takes ~620 bytes, one per pair).
        self.candles: list[Candle] = []

    def on_candle(self, c: Candle) -> list[Detection]:
        cs = self.candles
        cs.append(c)
        if len(cs) > 2 * self.n + 1 and len(cs) > 3:
            del cs[0]
        out: list[Detection] = []
        if len(cs) >= 3:
            c1, c2, c3 = cs[-3], cs[-2], cs[-1]
            rng = c2.high - c2.low
            body = c2.close - c2.open  # the "body" rule: c2's body points in the gap's direction
            if c3.low > c1.high and (body > 0 or not self.body_rule):
                gap = c3.low - c1.high
                if gap >= self.fvg_min_gap * abs(c3.low):
                    strength = min(1.0, gap / rng) if rng > 0 else 1.0
                    out.append(self._det(FVG_BULLISH, c3.low, c1.high, strength, c3.end_ns))
            elif c3.high < c1.low and (body < 0 or not self.body_rule):
                gap = c1.low - c3.high
                if gap >= self.fvg_min_gap * abs(c1.low):
                    strength = min(1.0, gap / rng) if rng > 0 else 1.0
                    out.append(self._det(FVG_BEARISH, c1.low, c3.high, strength, c3.end_ns))
        n = self.n
        if len(cs) == 2 * n + 1:
            pivot = cs[n]
            others = cs[:n] + cs[n + 1 :]
            if pivot.high > max(map(_HIGH, others)):
                out.append(self._det(BSL, pivot.high, max(pivot.open, pivot.close), 1.0, c.end_ns))
            if pivot.low < min(map(_LOW, others)):
                out.append(self._det(SSL, min(pivot.open, pivot.close), pivot.low, 1.0, c.end_ns))
        return out

    def _det(self, kind: str, top: float, bottom: float, strength: float, created_ns: int) -> Detection:
        return Detection(self.symbol, self.timeframe, kind, top, bottom, strength, created_ns)
