"""Zone detectors over the price stream: every (symbol, timeframe)'s candles and patterns
(patterns.py: the FVG and pivot rules), one watermark per symbol, and their state across restarts.

* Candles (candles.py, on event time): a tick of event time ``t`` belongs to the bucket
  ``[t // tf * tf, + tf)`` (UTC epoch aligned, so D1 candles run 00:00-24:00 UTC). A candle closes
  when the symbol's event time passes its end plus the allowed lateness, or, for a live symbol that
  goes quiet, when the wall clock does (:meth:`Detectors.on_time`). A replayed history is not live:
  only its own event time closes candles, so it gives the same candles at any speed. A *late* tick
  (its bucket already closed) is dropped and counted: a closed candle is never amended, and the
  tick never joins a later one. Empty buckets make no candle; detectors see the candles that
  exist, in order.
* State: :meth:`Detectors.state` / :meth:`Detectors.changed` export, per (symbol, timeframe), what
  the detectors need to continue exactly after a restart (:class:`PairState`: the open candles, the
  last closed bucket, the symbol's watermark, the closed-candle window FVG and pivots look at); :meth:`Detectors.restore`
  imports it. A pair changes only when a tick lands in its open candle or a candle closes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import chain, islice

from services.registry.candles import Bar, Watermark
from services.registry.pair_state import CandleState, PairState
from services.registry.patterns import Candle, CandleBuilder, Detection, FvgRule, PatternDetector, window_size

_NEVER = -(1 << 63)  # a fast path's ``hi`` that no event time is below: the cache is stale
_INF = float("inf")
_NO_DUE = (1 << 63) - 1  # no bucket the clock closes


@dataclass(frozen=True, slots=True)
class DroppedState:
    symbol: str
    timeframe: str
    reason: str


@dataclass(slots=True)
class RestoreReport:
    restored: int = 0
    resized: int = 0  # restored with a window kept for another swing_bars
    dropped: list[DroppedState] = field(default_factory=list)


@dataclass(slots=True)
class DetectorStats:
    candles: dict[str, int] = field(default_factory=dict)  # per timeframe
    detections: dict[str, int] = field(default_factory=dict)  # per kind
    late_ticks: int = 0
    evicted_symbols: int = 0  # dropped for max_symbols, least recently ticked first


_Pair = tuple[CandleBuilder, PatternDetector]


class _Open:
    """A symbol's fast path: the newest candle of every timeframe, while a tick in ``[lo, hi)``
    falls into each of them and its point closes none (below ``next_close``): most ticks only
    gather into ``high``/``low``/``close``/``ticks``, which :meth:`Detectors._untouch` hands to
    those candles (max, min, last and a sum: equal to updating each candle per tick)."""

    __slots__ = ("bars", "close", "hi", "high", "lo", "low", "mark", "next_close", "ticks")

    def __init__(self, mark: Watermark) -> None:
        self.mark, self.bars, self.lo, self.hi, self.next_close = mark, list[Bar](), 0, _NEVER, 0
        self.high, self.low, self.close, self.ticks = -_INF, _INF, 0.0, 0


class Detectors:
    """Every (symbol, timeframe) pair's candle builder and pattern detector; one watermark per
    symbol (its prices are one stream: every timeframe's candles close on the same event time)."""

    def __init__(
        self,
        timeframes: dict[str, int],
        swing_bars: int = 2,
        fvg_min_gap: float = 0.0,
        *,
        lateness_ns: int = 0,
        fvg_rule: FvgRule = "gap",
        max_symbols: int = 0,
    ) -> None:
        """``max_symbols`` (0: no limit): a new symbol past it drops the state of the symbol ticked
        least recently (its open candles and windows; :meth:`take_evicted` names it for the store)."""
        self.timeframes = timeframes  # name -> length in ns
        self.max_symbols = max_symbols
        self._evicted: list[str] = []
        self.swing_bars = swing_bars
        self.fvg_min_gap = fvg_min_gap
        self.fvg_rule: FvgRule = fvg_rule
        self.lateness_ns = lateness_ns
        self.stats = DetectorStats(candles=dict.fromkeys(timeframes, 0))
        self._pairs: dict[str, list[_Pair]] = {}  # least recently ticked first
        self._marks: dict[str, Watermark] = {}
        self._changed: dict[str, None] = {}  # symbols with a builder whose state changed, oldest first
        self._closed: dict[str, None] = {}  # ... of which a candle closed (their windows moved)
        self._open: dict[str, _Open] = {}

    def _for(self, symbol: str) -> list[_Pair]:
        pairs = self._pairs.get(symbol)
        if pairs is None:
            if self.max_symbols and len(self._pairs) >= self.max_symbols:
                self._evict(next(iter(self._pairs)))
            pairs = self._pairs[symbol] = [
                (
                    CandleBuilder(ns),
                    PatternDetector(symbol, tf, self.swing_bars, self.fvg_min_gap, self.fvg_rule),
                )
                for tf, ns in self.timeframes.items()
            ]
            self._marks[symbol] = Watermark(self.lateness_ns)
        return pairs

    def _evict(self, symbol: str) -> None:
        del self._pairs[symbol]
        self._open.pop(symbol, None)
        del self._marks[symbol]
        self._changed.pop(symbol, None)
        self._closed.pop(symbol, None)
        self._evicted.append(symbol)
        self.stats.evicted_symbols += 1

    def take_evicted(self) -> list[str]:
        """The symbols evicted since the last call (their stored states are stale)."""
        out, self._evicted = self._evicted, []
        return out

    @property
    def symbols(self) -> int:
        return len(self._pairs)

    def symbol_list(self) -> list[str]:
        return list(self._pairs)

    def on_price(self, symbol: str, ts_ns: int, price: float, now_ns: int | None = None) -> list[Detection]:
        """A price of event time ``ts_ns`` arriving at wall clock ``now_ns`` (default: ``ts_ns``).
        Candles its event time closes close first; then it joins its own candle, or, if that one
        is closed, it is counted as late (per timeframe)."""
        self._changed[symbol] = None
        now = ts_ns if now_ns is None else now_ns
        fast = self._open.get(symbol)
        if fast is not None:
            point = fast.mark.advance(ts_ns, now)
            pairs = self._pairs[symbol] = self._pairs.pop(symbol)  # the most recently ticked last
            if point < fast.next_close and fast.lo <= ts_ns < fast.hi:
                if price > fast.high:
                    fast.high = price
                if price < fast.low:
                    fast.low = price
                fast.close = price
                fast.ticks += 1
                return []
            if fast.ticks:  # the gathered ticks go first: they came before this one
                self._untouch(symbol)
        else:  # a new symbol, or one without a fast path yet
            old = self._pairs.pop(symbol, None)
            pairs = self._pairs[symbol] = old if old is not None else self._for(symbol)
            point = self._marks[symbol].advance(ts_ns, now)
        out: list[Detection] = []
        for builder, detector in pairs:
            if point >= builder.closed_before + builder.size_ns:
                for candle in builder.close_through(point):
                    builder.changed = True
                    self._closed[symbol] = None
                    out.extend(self._on_close(detector, candle))
            if builder.add(ts_ns, price):
                builder.changed = True
            else:
                self.stats.late_ticks += 1
        self._refresh(symbol, pairs, fast)
        return out

    def _refresh(self, symbol: str, pairs: list[_Pair], fast: _Open | None) -> None:
        """Rebuild ``symbol``'s fast path after its candles moved (the builders take its marks)."""
        if fast is None:
            fast = self._open[symbol] = _Open(self._marks[symbol])
        bars = []
        lo, hi, next_close = 0, -_NEVER, -_NEVER
        for builder, _ in pairs:
            if not builder.bars:
                fast.hi = _NEVER
                return
            bar = builder.bars[-1]
            bars.append(bar)
            if bar.start_ns > lo:
                lo = bar.start_ns
            if bar.end_ns < hi:
                hi = bar.end_ns
            if builder.closed_before + builder.size_ns < next_close:
                next_close = builder.closed_before + builder.size_ns
        fast.bars, fast.lo, fast.hi, fast.next_close = bars, lo, hi, next_close

    def _untouch(self, symbol: str, stale: bool = False) -> None:
        """Hand the fast path's gathered ticks to the candles (the builders' flags set); ``stale``:
        ``symbol``'s candles moved outside the tick path, which is off until its next slow tick."""
        fast = self._open.get(symbol)
        if fast is not None:
            if fast.ticks:
                high, low, close, ticks = fast.high, fast.low, fast.close, fast.ticks
                for bar in fast.bars:
                    if high > bar.high:
                        bar.high = high
                    if low < bar.low:
                        bar.low = low
                    bar.close = close
                    bar.ticks += ticks
                fast.high, fast.low, fast.ticks = -_INF, _INF, 0
                for builder, _ in self._pairs[symbol]:
                    builder.changed = True
            if stale:
                fast.hi = _NEVER

    def on_time(self, now_ns: int, symbols: Iterable[str] | None = None) -> list[Detection]:
        """Close the candles of live symbols that went quiet (see candles.py): of ``symbols``
        (default: all; a caller going through them in pieces passes a copy of :meth:`symbol_list`)."""
        out: list[Detection] = []
        for symbol in list(self._pairs) if symbols is None else symbols:
            pairs = self._pairs.get(symbol)
            if pairs is None:  # evicted meanwhile
                continue
            point = self._marks[symbol].point(now_ns)
            for builder, detector in pairs:
                if point < builder.closed_before + builder.size_ns:
                    continue
                self._untouch(symbol, stale=True)
                for candle in builder.close_through(point):
                    builder.changed = True
                    self._changed[symbol] = None
                    self._closed[symbol] = None
                    out.extend(self._on_close(detector, candle))
        return out

    def next_due_ns(self) -> int | None:
        """The wall-clock time from which :meth:`on_time` has a candle to close (at or before now:
        one is due already); None if the clock closes none (no live symbol). A live symbol's
        bucket closes at its end plus the lateness; one whose point passed its end (a bucket the
        shell closed through) is due now. One look at every open bucket, in C: the candle loop
        asks each second, and walks the symbols only when one is due (with the default hours and
        days, once an hour; the walk each second cost 1-5 ms of the loop for 2 000 symbols)."""
        due = _NO_DUE
        marks = self._marks
        for symbol, pairs in self._pairs.items():
            mark = marks[symbol]
            point = mark.last_point
            live = mark.live
            for builder, _ in pairs:
                end = builder.closed_before + builder.size_ns
                if point >= end:
                    return end
                if live and end + mark.lateness_ns < due:
                    due = end + mark.lateness_ns
        return None if due == _NO_DUE else due

    def _on_close(self, detector: PatternDetector, candle: Candle) -> list[Detection]:
        stats = self.stats
        stats.candles[detector.timeframe] = stats.candles.get(detector.timeframe, 0) + 1
        found = detector.on_candle(candle)
        for d in found:
            stats.detections[d.kind] = stats.detections.get(d.kind, 0) + 1
        return found

    # -- state across restarts -----------------------------------------------------------------
    def state(self) -> list[PairState]:
        """Every pair's state (a copy: later ticks do not change it)."""
        for symbol in self._open:
            self._untouch(symbol)
        return [self._state(pair) for pairs in self._pairs.values() for pair in pairs]

    def changed(self, limit: int | None = None) -> list[PairState]:
        """The state of the pairs changed since the last call: of at most ``limit`` symbols.

        Symbols where a candle closed come first (a detection depends on their windows), then the
        others in the order they changed: what a limit leaves out is the next call's.
        """
        closed, changed = self._closed, self._changed
        # taken before the loop below changes the dicts; the first ``limit`` only (not all 2 000)
        order = list(islice(chain(closed, (s for s in changed if s not in closed)), limit))
        out = []
        for symbol in order:
            del changed[symbol]
            closed.pop(symbol, None)
            self._untouch(symbol)
            for pair in self._pairs[symbol]:
                if pair[0].changed:
                    pair[0].changed = False
                    out.append(self._state(pair))
        return out

    @property
    def pending(self) -> int:
        """Symbols whose changed state was not exported yet."""
        return len(self._changed)

    def _state(self, pair: _Pair) -> PairState:
        builder, detector = pair
        mark = self._marks[detector.symbol]
        bars = builder.bars
        closed_before = builder.closed_before
        return PairState(
            symbol=detector.symbol,
            timeframe=detector.timeframe,
            tf_ns=builder.size_ns,
            swing_bars=detector.n,
            last_closed_start=closed_before - builder.size_ns if closed_before > 0 else -1,
            current=_stored(bars[-1]) if bars else None,
            opening=[_stored(c) for c in bars[:-1]],
            closed=[_stored(c) for c in detector.candles],
            event_ns=mark.event_ns,
            live=mark.live,
            point_ns=mark.last_point,
        )

    def restore(self, states: Iterable[PairState]) -> RestoreReport:
        """Continue from stored states. States that do not fit this config are dropped (reported).

        A state kept for another ``swing_bars`` keeps its candles: the window is cut to (or grows
        towards) the new size, so detections continue as soon as enough candles have closed.
        """
        report = RestoreReport()
        for st in states:
            reason = self._unfit(st)
            if reason is not None:
                report.dropped.append(DroppedState(st.symbol, st.timeframe, reason))
                continue
            builder, detector = next(p for p in self._for(st.symbol) if p[1].timeframe == st.timeframe)
            self._untouch(st.symbol, stale=True)
            builder.bars = [_restored(c) for c in st.opening]
            if st.current is not None:
                builder.bars.append(_restored(st.current))
            builder.closed_before = st.last_closed_start + st.tf_ns if st.last_closed_start >= 0 else 0
            mark = self._marks[st.symbol]
            if st.event_ns >= mark.event_ns:
                # A state stored before watermarks (event_ns 0) was closed by the wall clock: live.
                mark.event_ns, mark.live = st.event_ns, st.live or st.event_ns == 0
            mark.close_through(st.point_ns)
            detector.candles[:] = [_restored(c) for c in st.closed][-window_size(self.swing_bars) :]
            report.restored += 1
            report.resized += st.swing_bars != self.swing_bars
        return report

    def _unfit(self, st: PairState) -> str | None:
        tf_ns = self.timeframes.get(st.timeframe)
        if tf_ns is None:
            return "timeframe not configured for detectors"
        if tf_ns != st.tf_ns:
            return f"timeframe length changed ({st.tf_ns} ns stored, {tf_ns} ns now)"
        if not st.symbol:
            return "empty symbol"
        last = st.last_closed_start
        starts = [c.start_ns for c in st.closed]
        if starts != sorted(set(starts)) or (starts and starts[-1] > last):
            return "closed candles out of order"
        opened = [*st.opening, *([] if st.current is None else [st.current])]
        starts = [c.start_ns for c in opened]
        if starts != sorted(set(starts)) or any(
            c.start_ns % tf_ns or c.end_ns != c.start_ns + tf_ns or c.start_ns <= last for c in opened
        ):
            return "open candle inconsistent"
        return None


def _stored(c: Bar) -> CandleState:
    """A candle as stored (its fields read natively here, not through Python attribute lookups)."""
    return CandleState(c.start_ns, c.end_ns, c.open, c.high, c.low, c.close, c.ticks)


def _restored(c: CandleState) -> Bar:
    return Bar(c.start_ns, c.end_ns, c.open, c.high, c.low, c.close, c.ticks)
