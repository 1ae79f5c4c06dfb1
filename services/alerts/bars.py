"""What jobs know of each ticker: the bar of each bucket size, and zone events during it. Pure."""

from __future__ import annotations

from collections.abc import Iterable

from shared.messages import AlertZoneEvent, TickerInput

MAX_ZONE_EVENTS = 64  # per ticker per bar: a flood of zone events cannot grow a job without bound


class Bars:
    """Per bucket size: symbol -> the open bar (OHLC, previous close) and its zone events."""

    def __init__(self, sizes_ns: Iterable[int]) -> None:
        self.sizes = sorted(set(sizes_ns))
        self._bars: dict[int, dict[str, TickerInput]] = {s: {} for s in self.sizes}

    def price(self, symbol: str, price: float, ns: int) -> None:
        for bars in self._bars.values():
            bar = bars.get(symbol)
            if bar is None:
                bars[symbol] = TickerInput(open=price, high=price, low=price, close=price, updated_ns=ns)
                continue
            if price > bar.high:
                bar.high = price
            if price < bar.low:
                bar.low = price
            bar.close = price
            bar.updated_ns = ns

    def zone(self, symbol: str, event: AlertZoneEvent) -> None:
        for bars in self._bars.values():
            bar = bars.get(symbol)
            if bar is None:
                bar = bars[symbol] = TickerInput(updated_ns=event.event_ns)
            if len(bar.zones) < MAX_ZONE_EVENTS:
                bar.zones.append(event)

    def inputs(self, size_ns: int, tickers: Iterable[str]) -> dict[str, TickerInput]:
        bars = self._bars.get(size_ns, {})
        return {t: bars[t] for t in tickers if t in bars}

    def roll(self, size_ns: int) -> None:
        """The bar closed: the next one opens at the close (jobs already hold the closed ones)."""
        bars = self._bars.get(size_ns)
        if bars is None:
            return
        for symbol, bar in bars.items():
            if bar.close == 0.0 and bar.open == 0.0:  # zone events only, no price yet
                bars[symbol] = TickerInput(updated_ns=bar.updated_ns)
                continue
            c = bar.close
            bars[symbol] = TickerInput(
                open=c, high=c, low=c, close=c, prev_close=c, updated_ns=bar.updated_ns
            )
