"""Order flow per symbol (seed 002): delta, CVD, buy/sell volume, imbalance, trades per second.

Pure and synchronous. One :class:`FlowEngine` per symbol holds bounded deques (seed sizes: tick
buffer 1000, delta history 200, CVD history 400), so memory stays flat whatever the trade rate.
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
from bisect import bisect_left
from collections import OrderedDict, deque
from collections.abc import Callable
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


class FlowEngine:
    """One symbol's trades and histories."""

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
        self.ticks: deque[tuple[int, float, float]] = deque(maxlen=tick_buffer)  # (ns, price, signed size)
        self.delta_history: deque[tuple[int, float]] = deque(maxlen=delta_history)  # (slot start, delta)
        self.cvd_history: deque[tuple[int, float]] = deque(maxlen=cvd_history)  # (slot end, CVD then)
        self.interval_ns = interval_ns
        self.cvd = 0.0
        self.buy_volume = 0.0  # totals since start
        self.sell_volume = 0.0
        self.trades = 0
        self.last_ns = 0
        self._cur_slot = -1
        self._cur_delta = 0.0

    def add(self, ns: int, price: float, size: float, buy: bool) -> None:
        signed = size if buy else -size
        self.ticks.append((ns, price, signed))
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
                self.delta_history.append((self._cur_slot, self._cur_delta))
                self.cvd_history.append((self._cur_slot + self.interval_ns, self.cvd))
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
        for end, cvd in reversed(history):
            if end <= ns:
                return cvd
        if history and len(history) == history.maxlen:
            return history[0][1]  # history was trimmed: the best we still know
        return 0.0

    def metrics(self, window_s: float, now_ns: int) -> OrderFlowMetrics:
        start = now_ns - int(window_s * NS)
        buy = sell = 0.0
        n = 0
        for ns, _price, signed in reversed(self.ticks):
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

    def add(self, symbol: str, ns: int, price: float, size: float, buy: bool) -> None:
        eng = self.engines.get(symbol)
        if eng is None:
            eng = self.engine(symbol)
        eng.add(ns, price, size, buy)

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
