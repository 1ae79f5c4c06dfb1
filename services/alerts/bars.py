"""What jobs know of each ticker: the bar of each bucket size, and zone events during it. Pure.

Bars are shared.bars' (services/registry/candles.py), on the inputs' *event* time: a price or zone
event joins the bar of the bucket its event time falls in, even when it arrives after that
bucket's boundary, as long as the bucket was not evaluated yet (the service evaluates a boundary
once its watermark passes it: the allowed lateness after it, see core.py). An input for a bucket
already evaluated is *late*: counted per bucket size, never put into the next bar.

The open bars are the state a kill -9 would lose: :meth:`Bars.dirty_rows` gives the series changed
since the last call as rows (key -> bytes) for the store, :meth:`Bars.restore` takes them back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import msgspec

from shared.bars import Bar, BarBuilder
from shared.messages import AlertZoneEvent, TickerInput

ROW_PREFIX = "bars:"  # one row per ticker: its series of every bucket size
OLD_ROW_PREFIX = "bar:"  # one row per (bucket size, ticker), as written before: read, then replaced


class SeriesRow(msgspec.Struct, array_like=True):
    """One (bucket size, ticker) as stored: its open bars, their zone events, the last close."""

    size_ns: int
    symbol: str
    closed_before: int
    bars: list[tuple[int, float, float, float, float, int]]  # start, open, high, low, close, ticks
    zones: dict[int, list[AlertZoneEvent]]  # bucket start -> its zone events
    last_close: float
    updated_ns: int


class TickerRow(msgspec.Struct, array_like=True):
    """One ticker as stored: a row each, not one per bucket size (a flush's cost is its rows)."""

    symbol: str
    series: list[SeriesRow]


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(TickerRow)
_OLD_DEC = msgspec.msgpack.Decoder(SeriesRow)


class Series:
    """One ticker's bars of one bucket size."""

    __slots__ = ("builder", "last_close", "updated_ns", "zones")

    def __init__(self, size_ns: int, closed_before: int) -> None:
        self.builder = BarBuilder(size_ns, closed_before)
        self.zones: dict[int, list[AlertZoneEvent]] = {}
        self.last_close = 0.0  # the close of the last closed bar (0.0: none yet)
        self.updated_ns = 0

    def bar(self, start_ns: int) -> TickerInput:
        """The job's input for the bucket starting at ``start_ns`` (before it is closed). Its
        previous close is the bar before it, open or closed: a replay evaluates several boundaries
        in one call, before the bars between them are rolled, and must see what live saw."""
        zones = list(self.zones.get(start_ns, ()))
        found = self.builder.prices_at(start_ns, self.last_close)
        if found is not None:
            o, h, lo, c, prev = found
            return TickerInput(
                open=o, high=h, low=lo, close=c, prev_close=prev, updated_ns=self.updated_ns, zones=zones
            )
        c = self.builder.close_before(start_ns, self.last_close)
        if c == 0.0:  # zone events only, no price yet
            return TickerInput(updated_ns=self.updated_ns, zones=zones)
        return TickerInput(
            open=c, high=c, low=c, close=c, prev_close=c, updated_ns=self.updated_ns, zones=zones
        )

    def close_through(self, boundary_ns: int) -> None:
        closed = self.builder.close_through(boundary_ns)
        if closed:
            self.last_close = closed[-1].close
        if self.zones:
            for start in [s for s in self.zones if s < boundary_ns]:
                del self.zones[start]


class Bars:
    """Per bucket size: ticker -> its open bars and their zone events."""

    def __init__(self, sizes_ns: Iterable[int], max_zone_events: int = 64) -> None:
        self.sizes = sorted(set(sizes_ns))
        # per ticker per bar: a flood of zone events cannot grow the state or a job without bound
        self.max_zone_events = max_zone_events
        self.zones_dropped = 0  # zone events over that bound (counted once per event)
        self._series: dict[int, dict[str, Series]] = {s: {} for s in self.sizes}
        self.closed_before: dict[int, int] = dict.fromkeys(self.sizes, 0)  # per size: evaluated up to
        self.late: dict[int, int] = dict.fromkeys(self.sizes, 0)  # inputs for an evaluated bucket
        self._dirty: set[str] = set()  # tickers whose series changed since they were last written
        self._urgent: set[str] = set()  # of those, the tickers a zone event went into
        self.stale_keys: list[str] = []  # rows of the older layout restore() read: to delete
        # what restore() took back: per size the boundary evaluated before (as the rows knew it),
        # and the latest input's event time
        self.restored_through: dict[int, int] = {}
        self.restored_latest_ns = 0

    def _get(self, size: int, symbol: str) -> Series:
        by_symbol = self._series[size]
        series = by_symbol.get(symbol)
        if series is None:
            series = by_symbol[symbol] = Series(size, self.closed_before[size])
        return series

    def price(self, symbol: str, price: float, event_ns: int) -> None:
        for size in self.sizes:
            series = self._get(size, symbol)
            if series.builder.add(event_ns, price):
                if event_ns > series.updated_ns:
                    series.updated_ns = event_ns
                self._dirty.add(symbol)
            else:
                self.late[size] += 1

    def zone(self, symbol: str, event: AlertZoneEvent) -> bool:
        """Put a zone event into its open bars; True when any bar kept it (then :meth:`urgent_rows`
        has its series)."""
        ns = event.event_ns
        dropped = kept = False
        for size in self.sizes:
            start = ns - ns % size
            if start < self.closed_before[size]:
                self.late[size] += 1
                continue
            series = self._get(size, symbol)
            if ns > series.updated_ns:
                series.updated_ns = ns
            events = series.zones.setdefault(start, [])
            if len(events) < self.max_zone_events:
                events.append(event)  # the same object in every size's bar
                self._dirty.add(symbol)
                self._urgent.add(symbol)
                kept = True
            else:
                dropped = True
        self.zones_dropped += dropped
        return kept

    def inputs(
        self,
        size_ns: int,
        tickers: Iterable[str],
        boundary_ns: int,
        made: dict[tuple[int, int, str], TickerInput] | None = None,
    ) -> dict[str, TickerInput]:
        """The bars of the bucket ending at ``boundary_ns`` of these tickers (those with any input).
        ``made``: the inputs already made while the bars have not changed (one evaluation's jobs),
        taken from it and added to it, so that the jobs of a bucket share each ticker's input."""
        by_symbol = self._series.get(size_ns, {})
        start = boundary_ns - size_ns
        made = {} if made is None else made
        out: dict[str, TickerInput] = {}
        for t in tickers:
            bar = made.get((size_ns, boundary_ns, t))
            if bar is None:
                series = by_symbol.get(t)
                if series is None:
                    continue
                bar = made[(size_ns, boundary_ns, t)] = series.bar(start)
            out[t] = bar
        return out

    def roll(self, size_ns: int, boundary_ns: int) -> None:
        """The buckets ending at or before ``boundary_ns`` are evaluated (jobs hold their bars):
        closed; inputs for them from now on are late."""
        if boundary_ns <= self.closed_before.get(size_ns, boundary_ns):
            return
        self.closed_before[size_ns] = boundary_ns
        for series in self._series[size_ns].values():
            series.close_through(boundary_ns)

    # -- persistence ---------------------------------------------------------------------------

    def dirty_rows(self) -> dict[str, bytes]:
        """The tickers changed since the last call, as store rows (key -> body)."""
        dirty, self._dirty = self._dirty, set()
        self._urgent = set()
        return self._rows(dirty)

    def urgent_rows(self) -> tuple[dict[str, bytes], set[str]]:
        """The rows of the tickers a zone event went into since the last call (the others wait
        for :meth:`dirty_rows`), and those tickers."""
        urgent, self._urgent = self._urgent, set()
        self._dirty -= urgent
        return self._rows(urgent), urgent

    def _rows(self, symbols: Iterable[str]) -> dict[str, bytes]:
        rows: dict[str, bytes] = {}
        for symbol in symbols:
            series: list[SeriesRow] = []
            for size, by_symbol in self._series.items():
                s = by_symbol.get(symbol)
                if s is not None:
                    closed = s.builder.closed_before
                    series.append(
                        SeriesRow(size, symbol, closed, s.builder.rows(), s.zones, s.last_close, s.updated_ns)
                    )
            if series:
                rows[f"{ROW_PREFIX}{symbol}"] = _ENC.encode(TickerRow(symbol, series))
        return rows

    def restore(self, rows: Mapping[str, bytes]) -> int:
        """Take back stored series (of sizes still configured); returns how many; bad rows skipped.
        Rows of the older layout (one per size) are read first, their tickers written again in
        this one and their keys left in :attr:`stale_keys` for the caller to delete."""
        found: list[SeriesRow] = []
        for key, body in rows.items():
            if key.startswith(OLD_ROW_PREFIX):  # ("bars:" is not "bar:")
                self.stale_keys.append(key)
                try:
                    found.append(_OLD_DEC.decode(body))
                except (msgspec.DecodeError, ValueError):
                    continue
                self._dirty.add(found[-1].symbol)
        for key, body in rows.items():
            if key.startswith(ROW_PREFIX):
                try:
                    found += _DEC.decode(body).series
                except (msgspec.DecodeError, ValueError):
                    continue
        n = 0
        for row in found:
            if row.size_ns not in self._series:
                continue
            s = self._get(row.size_ns, row.symbol)
            s.builder.closed_before = max(row.closed_before, self.closed_before[row.size_ns])
            s.builder.bars = [Bar(st, st + row.size_ns, o, h, lo, c, t) for st, o, h, lo, c, t in row.bars]
            s.zones = {int(k): v for k, v in row.zones.items()}
            s.last_close = row.last_close
            s.updated_ns = row.updated_ns
            through = self.restored_through.get(row.size_ns, 0)
            self.restored_through[row.size_ns] = max(through, row.closed_before)
            self.restored_latest_ns = max(self.restored_latest_ns, row.updated_ns)
            n += 1
        return n
