"""Order flow per symbol (seed 002): delta, CVD, buy/sell volume, imbalance, trades per second.

Pure and synchronous. One :class:`FlowEngine` per symbol holds fixed-size columnar rings (seed
sizes: tick buffer 1000, delta history 200, CVD history 400; 16 bytes an entry, 25.6 kB a symbol
with all three full), so memory stays flat whatever the trade rate.
:class:`FlowBook` routes trades to engines and answers metrics through :class:`MetricsCache`, a
TTL cache (5 s default) keyed by (symbol, window) and bounded in entries, so strategies grouped by
symbol compute metrics once per symbol per check.

Definitions (aggressor side decides buy or sell):

- delta = buy volume - sell volume over the window (from the tick buffer: at most its last 1000
  trades);
- CVD = running sum of signed volume since the engine started; ``cvd_change`` = CVD now minus the
  CVD sampled at the window's start (from the per-interval CVD history, which reaches further back
  than the tick buffer on busy symbols);
- imbalance = delta / (buy + sell), in [-1, 1] (0 without volume);
- trades/s = trades in the window / window length.
"""

from __future__ import annotations

import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from shared.messages import OrderFlowMetrics

NS = 1_000_000_000
# Upper bounds of the computation-latency histogram, 10 us to 25 ms (a full 1 000-trade buffer
# measures ~100 us); one more count holds what is slower.
COMPUTE_BUCKETS_NS = (
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    25_000_000,
)


class Ring:
    """A fixed-capacity ring of (int64 time, float64 value) in two ``array`` columns, the oldest
    overwritten: 16 bytes an entry, whatever the rate. Both columns are allocated at full size
    with the first entry, so a symbol's memory is flat from its first trade (columns grown entry
    by entry kept RSS climbing for as long as the quiet symbols took to fill them: an hour and
    more at 2 000 symbols)."""

    __slots__ = ("_head", "_n", "capacity", "descents", "times", "values")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a ring holds at least one entry")
        self.capacity = capacity
        self.times = array("q")  # empty until the first entry
        self.values = array("d")
        self._n = 0  # entries held
        self._head = -1  # once full: the oldest entry, overwritten next (-1: not full yet)
        # neighbours (oldest first) whose time goes back: 0 means the times are sorted
        self.descents = 0

    def __len__(self) -> int:
        return self._n

    @property
    def maxlen(self) -> int:
        return self.capacity

    def append(self, t: int, v: float) -> None:
        times = self.times
        i = self._head
        if i >= 0:  # full: overwrite the oldest
            cap = self.capacity
            j = i + 1
            if j == cap:
                j = 0
            if cap > 1:
                if times[j] < times[i]:  # the oldest pair leaves
                    self.descents -= 1
                if t < times[i - 1]:  # the newest pair comes (index -1 wraps to the end)
                    self.descents += 1
            times[i] = t
            self.values[i] = v
            self._head = j
            return
        n = self._n
        if n == 0:
            # a repeat is allocated exactly; array(typecode, bytes) keeps ~6 % growth slack
            times = self.times = array("q", (0,)) * self.capacity
            self.values = array("d", (0.0,)) * self.capacity
        elif t < times[n - 1]:
            self.descents += 1
        times[n] = t
        self.values[n] = v
        self._n = n + 1
        if n + 1 == self.capacity:  # full: wrap from now on
            self._head = 0

    def newest_first(self) -> tuple[array[int], array[float]]:
        """Copies of both columns, newest entry first (C-level slices)."""
        h, n = self._head, self._n
        t, v = self.times, self.values
        if h <= 0:
            return t[n - 1 :: -1] if n else t[:0], v[n - 1 :: -1] if n else v[:0]
        return t[h - 1 :: -1] + t[: h - 1 : -1], v[h - 1 :: -1] + v[: h - 1 : -1]

    def oldest_first(self) -> tuple[array[int], array[float]]:
        """Copies of both columns, oldest entry first."""
        h, n = self._head, self._n
        t, v = self.times, self.values
        if h <= 0:
            return t[:n], v[:n]
        return t[h:] + t[:h], v[h:] + v[:h]

    def __iter__(self) -> Iterator[tuple[int, float]]:
        """(time, value), oldest first."""
        return zip(*self.oldest_first(), strict=True)

    @property
    def oldest_value(self) -> float:
        return self.values[max(self._head, 0)]

    @property
    def nbytes(self) -> int:
        return (len(self.times) + len(self.values)) * 8


class FlowEngine:
    """One symbol's trades and histories, in fixed-size columnar rings (bytes: :attr:`nbytes`)."""

    __slots__ = (
        "_cur_delta",
        "_cur_slot",
        "buy_volume",
        "cvd",
        "cvd_history",
        "delta_history",
        "interval_ns",
        "last_ns",
        "sell_volume",
        "symbol",
        "ticks",
        "trades",
    )

    def __init__(
        self,
        symbol: str,
        *,
        tick_buffer: int = 1000,
        delta_history: int = 200,
        cvd_history: int = 400,
        interval_ns: int = NS,
    ) -> None:
        self.symbol = symbol
        self.ticks = Ring(tick_buffer)  # (event time, signed size): + buy, - sell; arrival order
        self.delta_history = Ring(delta_history)  # (slot start, delta in it)
        self.cvd_history = Ring(cvd_history)  # (slot end, CVD then)
        self.interval_ns = interval_ns
        self.cvd = 0.0
        self.buy_volume = 0.0  # totals since start
        self.sell_volume = 0.0
        self.trades = 0
        self.last_ns = 0
        self._cur_slot = -1
        self._cur_delta = 0.0

    @property
    def nbytes(self) -> int:
        """The rings' bytes (at most 16 per entry of tick buffer, delta and CVD history)."""
        return self.ticks.nbytes + self.delta_history.nbytes + self.cvd_history.nbytes

    def add(self, ns: int, size: float, buy: bool) -> None:
        signed = size if buy else -size
        self.ticks.append(ns, signed)
        if buy:
            self.buy_volume += size
        else:
            self.sell_volume += size
        self.trades += 1
        if ns > self.last_ns:
            self.last_ns = ns
        slot = ns - ns % self.interval_ns
        if slot != self._cur_slot:
            if self._cur_slot >= 0:
                self.delta_history.append(self._cur_slot, self._cur_delta)
                self.cvd_history.append(self._cur_slot + self.interval_ns, self.cvd)
            self._cur_slot = slot
            self._cur_delta = 0.0
        self._cur_delta += signed
        self.cvd += signed

    def cvd_at(self, ns: int) -> float:
        """CVD at time ``ns``, to the history's resolution (one interval).

        Before the first trade it is 0.0; older than the retained history, the oldest sample.
        """
        if self._cur_slot < 0:
            return 0.0
        if ns >= self._cur_slot + self.interval_ns:
            return self.cvd  # no trade since
        if ns >= self._cur_slot:
            return self.cvd - self._cur_delta  # the CVD when the latest interval began
        history = self.cvd_history
        ends, cvds = history.newest_first()
        for end, cvd in zip(ends, cvds, strict=True):
            if end <= ns:
                return cvd
        if len(history) == history.capacity:
            return history.oldest_value  # history was trimmed: the best we still know
        return 0.0

    def metrics(self, window_s: float, now_ns: int) -> OrderFlowMetrics:
        """The trades of ``[now - window, now]``: newest first (in arrival order) until the first
        one older than the window, those after ``now`` left out."""
        start = now_ns - int(window_s * NS)
        ticks = self.ticks
        if ticks.descents == 0 and self.last_ns <= now_ns:
            # Times sorted, none after now (the usual case): the window is a suffix, found by
            # bisection; its sizes summed in the same order as the loop below (the same floats).
            times, sizes = ticks.oldest_first()
            window = sizes[bisect_left(times, start) :][::-1]
            n = len(window)
            buy = sell = 0.0
            for signed in window:
                if signed > 0:
                    buy += signed
                else:
                    sell -= signed
        else:
            buy = sell = 0.0
            n = 0
            times, sizes = ticks.newest_first()
            for ns, signed in zip(times, sizes, strict=True):
                if ns < start:
                    break
                if ns > now_ns:
                    continue
                n += 1
                if signed > 0:
                    buy += signed
                else:
                    sell -= signed
        total = buy + sell
        delta = buy - sell
        return OrderFlowMetrics(
            symbol=self.symbol,
            window_s=window_s,
            trades=n,
            buy_volume=buy,
            sell_volume=sell,
            delta=delta,
            cvd=self.cvd,
            cvd_change=self.cvd - self.cvd_at(start),
            imbalance=delta / total if total > 0 else 0.0,
            trades_per_s=n / window_s if window_s > 0 else 0.0,
            computed_ns=now_ns,
        )


@dataclass(slots=True)
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    computations: int = 0
    compute_ns_total: int = 0
    last_compute_ns: int = 0
    # computations per COMPUTE_BUCKETS_NS bucket (not cumulative), the last one above every bound
    compute_counts: list[int] = field(default_factory=lambda: [0] * (len(COMPUTE_BUCKETS_NS) + 1))

    def observe_compute(self, took_ns: int) -> None:
        self.computations += 1
        self.compute_ns_total += took_ns
        self.last_compute_ns = took_ns
        self.compute_counts[bisect_left(COMPUTE_BUCKETS_NS, took_ns)] += 1

    @property
    def hit_rate(self) -> float:
        asked = self.hits + self.misses
        return self.hits / asked if asked else 0.0


class MetricsCache:
    """(symbol, window) -> metrics, fresh for ``ttl_ns``, at most ``max_entries`` (oldest evicted)."""

    def __init__(self, ttl_ns: int = 5 * NS, max_entries: int = 4096) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.ttl_ns = ttl_ns
        self.max_entries = max_entries
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[str, float], tuple[int, OrderFlowMetrics]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(
        self, symbol: str, window_s: float, now_ns: int, compute: Callable[[], OrderFlowMetrics]
    ) -> OrderFlowMetrics:
        key = (symbol, window_s)
        entry = self._entries.get(key)
        stats = self.stats
        if entry is not None and now_ns < entry[0]:
            stats.hits += 1
            return entry[1]
        stats.misses += 1
        t0 = time.perf_counter_ns()
        value = compute()
        stats.observe_compute(time.perf_counter_ns() - t0)
        entries = self._entries
        if entry is not None:
            del entries[key]
        entries[key] = (now_ns + self.ttl_ns, value)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)
            stats.evictions += 1
        return value


class FlowBook:
    """Every symbol's engine, plus the metrics cache."""

    def __init__(
        self,
        *,
        ttl_ns: int = 5 * NS,
        max_entries: int = 4096,
        tick_buffer: int = 1000,
        delta_history: int = 200,
        cvd_history: int = 400,
    ) -> None:
        self.engines: dict[str, FlowEngine] = {}
        self.cache = MetricsCache(ttl_ns, max_entries)
        self._sizes = (tick_buffer, delta_history, cvd_history)

    def engine(self, symbol: str) -> FlowEngine:
        eng = self.engines.get(symbol)
        if eng is None:
            tb, dh, ch = self._sizes
            eng = self.engines[symbol] = FlowEngine(symbol, tick_buffer=tb, delta_history=dh, cvd_history=ch)
        return eng

    def add(self, symbol: str, ns: int, size: float, buy: bool) -> None:
        eng = self.engines.get(symbol)
        if eng is None:
            eng = self.engine(symbol)
        eng.add(ns, size, buy)

    def metrics(self, symbol: str, window_s: float, now_ns: int) -> OrderFlowMetrics | None:
        """Cached metrics of a symbol (None for a symbol never traded)."""
        eng = self.engines.get(symbol)
        if eng is None:
            return None
        return self.cache.get(symbol, window_s, now_ns, lambda: eng.metrics(window_s, now_ns))

    def metrics_for(
        self, wanted: dict[str, set[float]], now_ns: int
    ) -> dict[tuple[str, float], OrderFlowMetrics]:
        """Batch: symbol -> windows wanted by all its strategies; each computed (or cached) once."""
        out: dict[tuple[str, float], OrderFlowMetrics] = {}
        for symbol, windows in wanted.items():
            for w in windows:
                m = self.metrics(symbol, w, now_ns)
                if m is not None:
                    out[(symbol, w)] = m
        return out


def swap_flow(amount0: str, amount1: str) -> tuple[float, bool] | None:
    """A pool swap as order flow: (size in token0 units, taker bought token0?), None if unreadable.

    Amounts are the pool's signed deltas: the pool paying out token0 (amount0 < 0) means the taker
    bought token0; the pool receiving it means the taker sold.
    """
    try:
        a0 = int(amount0)
        int(amount1)
    except ValueError:
        return None
    if a0 == 0:
        return None
    return float(abs(a0)), a0 < 0
