"""Bars (candles) on event time, closed by a watermark. Pure and synchronous.

* A bucket of size ``S`` is ``[t - t % S, + S)`` of the input's *event* time (UTC epoch aligned).
* A :class:`Watermark` follows one stream (the inputs that close buckets together: one symbol's
  prices in registry, every input of alerts). Its *point* is how far buckets are closed: a bucket
  ``[s, e)`` is closed once ``e <= point``. The point is the stream's latest event time minus the
  allowed lateness ``L`` (a bucket closes when event time passes its end plus ``L``). When the
  stream is *live*, the wall clock minus ``L`` counts too, so a live stream that goes quiet still
  closes its buckets. A stream is live when its latest event time was within ``L`` of the wall
  clock when it arrived: a replay of history is not live, and only its own event time closes its
  buckets, so it gives the same bars at any speed. The point never goes back, and never passes the
  wall clock: an event time ahead of the clock (skew, a forged time) cannot close buckets early.
* A :class:`BarBuilder` keeps the open bars of one size for one series. An input whose bucket is
  closed is *late*: counted, and never put into another bar. Empty buckets make no bar.

Compiled with the registry's core (shared/compiled.py), whose detectors read and write the bars on
every tick: as native classes, compiled code reaches their fields directly, where a msgspec
Struct's took a generic attribute lookup each (the detectors and the core over a recorded replay:
7.3-8.1 -> 3.7-4.6 us a tick). The other services import them from ``shared.bars``. Run pure,
``Bar`` is pair_state.py's ``CandleState``, a ``gc=False`` Struct: a Python class would be tracked
by the GC.
"""

from __future__ import annotations

from mypy_extensions import mypyc_attr

from services.registry.pair_state import CandleState
from shared.compiled import when_pure


def bucket_start(ns: int, size_ns: int) -> int:
    return ns - ns % size_ns


@mypyc_attr(acyclic=True)
class Bar:
    """A bar of ``[start_ns, end_ns)``. Acyclic: scalars only, so the cyclic GC does not walk the
    bars (registry holds ~18 per symbol: their walk was ~15 % of each full collection)."""

    __slots__ = ("close", "end_ns", "high", "low", "open", "start_ns", "ticks")

    def __init__(
        self, start_ns: int, end_ns: int, open: float, high: float, low: float, close: float, ticks: int = 1
    ) -> None:
        self.start_ns = start_ns
        self.end_ns = end_ns
        self.open = open
        self.high = high
        self.low = low
        self.close = close
        self.ticks = ticks

    def _fields(self) -> tuple[int, int, float, float, float, float, int]:
        return (self.start_ns, self.end_ns, self.open, self.high, self.low, self.close, self.ticks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Bar) and self._fields() == other._fields()

    def __repr__(self) -> str:
        return "Bar" + repr(self._fields())


class Watermark:
    """How far one stream's buckets are closed (see the module's doc)."""

    __slots__ = ("_point", "event_ns", "lateness_ns", "live")

    def __init__(self, lateness_ns: int, event_ns: int = 0, live: bool = False, point_ns: int = 0) -> None:
        if lateness_ns < 0:
            raise ValueError("lateness must be >= 0")
        self.lateness_ns = lateness_ns
        self.event_ns = event_ns  # the latest event time seen (at most the wall clock of its arrival)
        self.live = live
        self._point = point_ns

    def observe(self, event_ns: int, now_ns: int) -> None:
        """An input of the stream with this event time arrived at wall clock ``now_ns``."""
        if event_ns > now_ns:
            event_ns = now_ns
        if event_ns > self.event_ns:
            self.event_ns = event_ns
        self.live = now_ns - self.event_ns <= self.lateness_ns

    def advance(self, event_ns: int, now_ns: int) -> int:
        """:meth:`observe`, then :meth:`point` (one call on a hot path)."""
        t = now_ns if event_ns > now_ns else event_ns
        if t < self.event_ns:
            t = self.event_ns
        else:
            self.event_ns = t
        live = self.live = now_ns - t <= self.lateness_ns
        if live and now_ns > t:
            t = now_ns
        t -= self.lateness_ns
        if t > self._point:
            self._point = t
        return self._point

    def point(self, now_ns: int) -> int:
        """Buckets ending at or before this are closed (it never goes back)."""
        t = self.event_ns
        if self.live and now_ns > t:
            t = now_ns
        p = t - self.lateness_ns
        if p > self._point:
            self._point = p
        return self._point

    @property
    def last_point(self) -> int:
        return self._point

    def close_through(self, point_ns: int) -> None:
        """Close buckets ending at or before ``point_ns`` whatever the stream says (a shell's
        evaluation of a boundary)."""
        if point_ns > self._point:
            self._point = point_ns


class BarBuilder:
    """The open bars of one size for one series (oldest first; more than one only within the
    lateness). :meth:`close_through` before :meth:`add`: an input for a bucket the point has
    passed is late even if that bar was not handed out yet."""

    __slots__ = ("bars", "closed_before", "late", "size_ns")

    def __init__(self, size_ns: int, closed_before: int = 0, bars: list[Bar] | None = None) -> None:
        if size_ns <= 0:
            raise ValueError("bar size must be > 0")
        self.size_ns = size_ns
        self.closed_before = closed_before  # inputs of a bucket starting before this are late
        self.bars: list[Bar] = [] if bars is None else bars
        self.late = 0

    def add(self, event_ns: int, price: float) -> bool:
        """Put a price into its bar; False if that bucket is closed (counted as late)."""
        start = event_ns - event_ns % self.size_ns
        bars = self.bars
        if bars:
            bar = bars[-1]
            if start != bar.start_ns:
                found = self._bar(start, price)
                if found is None:
                    return False
                if found.ticks == 0:
                    found.ticks = 1
                    return True
                bar = found
        else:
            if start < self.closed_before:
                self.late += 1
                return False
            bars.append(Bar(start, start + self.size_ns, price, price, price, price))
            return True
        if price > bar.high:
            bar.high = price
        elif price < bar.low:
            bar.low = price
        bar.close = price
        bar.ticks += 1
        return True

    def _bar(self, start: int, price: float) -> Bar | None:
        """The open bar of ``start`` (a new one has ticks 0), or None if its bucket is closed."""
        if start < self.closed_before:
            self.late += 1
            return None
        bars = self.bars
        i = len(bars)
        while i > 0 and bars[i - 1].start_ns > start:
            i -= 1
        if i > 0 and bars[i - 1].start_ns == start:
            return bars[i - 1]
        bar = Bar(start, start + self.size_ns, price, price, price, price, 0)
        bars.insert(i, bar)
        return bar

    def close_through(self, point_ns: int) -> list[Bar]:
        """Close the bars ending at or before ``point_ns``; returns them, oldest first."""
        boundary = point_ns - point_ns % self.size_ns
        if boundary <= self.closed_before:
            return []
        self.closed_before = boundary
        bars = self.bars
        n = 0
        while n < len(bars) and bars[n].end_ns <= boundary:
            n += 1
        if n == 0:
            return []
        closed = bars[:n]
        del bars[:n]
        return closed

    @property
    def current(self) -> Bar | None:
        return self.bars[-1] if self.bars else None

    # Reads for interpreted callers (alerts): a native bar's field read from Python allocates its
    # int or float each time, so the scans over the bars are done here, once a call.

    def prices_at(self, start_ns: int, before: float) -> tuple[float, float, float, float, float] | None:
        """``(open, high, low, close, previous close)`` of the open bar of the bucket starting at
        ``start_ns``, None if there is none; the previous close is that of the newest open bar
        before it, else ``before``."""
        previous = before
        for bar in self.bars:  # oldest first
            if bar.start_ns < start_ns:
                previous = bar.close
            elif bar.start_ns == start_ns:
                return (bar.open, bar.high, bar.low, bar.close, previous)
        return None

    def close_before(self, start_ns: int, default: float) -> float:
        """The close of the newest open bar that starts before ``start_ns``; ``default`` if none."""
        close = default
        for bar in self.bars:
            if bar.start_ns >= start_ns:
                break
            close = bar.close
        return close

    def rows(self) -> list[tuple[int, float, float, float, float, int]]:
        """The open bars as ``(start_ns, open, high, low, close, ticks)``, oldest first."""
        return [(b.start_ns, b.open, b.high, b.low, b.close, b.ticks) for b in self.bars]


when_pure(globals(), Bar=CandleState)  # the modules importing Bar get the untracked Struct
