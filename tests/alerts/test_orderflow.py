"""Order-flow math on hand-computed trades; the metrics cache with the fake clock."""

from __future__ import annotations

import random
from collections import deque
from functools import partial
from itertools import pairwise
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts
from services.alerts.metrics import AlertsCollector
from services.alerts.orderflow import (
    COMPUTE_BUCKETS_NS,
    CacheStats,
    FlowBook,
    FlowEngine,
    MetricsCache,
    swap_flow,
)
from services.alerts.store_sqlite import SqliteStore
from shared.clock import FakeClock
from shared.messages import OrderFlowMetrics

S = 1_000_000_000
T0 = 1_700_000_000 * S


def test_hand_computed_window() -> None:
    eng = FlowEngine("pm.1")
    #          t (s) size  buy?
    trades = [(0.0, 10.0, True), (0.5, 4.0, False), (1.2, 6.0, True),
              (2.0, 3.0, False), (3.5, 8.0, False), (4.0, 5.0, True)]  # fmt: skip
    for t, size, buy in trades:
        eng.add(T0 + int(t * S), size, buy)
    now = T0 + 4 * S
    # whole history: buys 10+6+5 = 21, sells 4+3+8 = 15
    m = eng.metrics(10.0, now)
    assert (m.trades, m.buy_volume, m.sell_volume, m.delta) == (6, 21.0, 15.0, 6.0)
    assert m.cvd == 6.0 and m.cvd_change == 6.0
    assert m.imbalance == pytest.approx(6 / 36)
    assert m.trades_per_s == pytest.approx(0.6)
    # last 2 s (t >= 2.0): sells 3 + 8, buy 5 -> delta -6
    m = eng.metrics(2.0, now)
    assert (m.trades, m.buy_volume, m.sell_volume, m.delta) == (3, 5.0, 11.0, -6.0)
    assert m.imbalance == pytest.approx(-6 / 16)
    assert m.trades_per_s == pytest.approx(1.5)
    # CVD at t=2 s (start of the slot [2,3)): 10 - 4 + 6 = 12; now 6 -> change -6
    assert m.cvd_change == -6.0
    # per-second delta history of the closed slots [0,1) [1,2) [2,3) [3,4)... ([3,4) closed by t=4.0)
    assert list(eng.delta_history) == [(T0, 6.0), (T0 + S, 6.0), (T0 + 2 * S, -3.0), (T0 + 3 * S, -8.0)]
    assert [c for _, c in eng.cvd_history] == [6.0, 12.0, 9.0, 1.0]


def test_no_trades_in_window_and_empty_engine() -> None:
    eng = FlowEngine("x")
    m = eng.metrics(5.0, T0)
    assert (m.trades, m.delta, m.imbalance, m.cvd_change) == (0, 0.0, 0.0, 0.0)
    eng.add(T0, 2.0, True)
    m = eng.metrics(5.0, T0 + 60 * S)
    assert (m.trades, m.cvd, m.cvd_change) == (0, 2.0, 0.0)


def test_rings_are_bounded_and_exact() -> None:
    eng = FlowEngine("x", tick_buffer=1000, delta_history=200, cvd_history=400)
    assert eng.nbytes == 0  # a symbol that never trades costs no ring
    eng.add(T0, 1.0, True)
    eng.add(T0 + S, 1.0, False)  # the first second's delta and CVD go into their histories
    full = (1000 + 200 + 400) * 16
    assert eng.nbytes == full  # allocated whole with the first entries: flat from here on
    for i in range(2, 5000):
        eng.add(T0 + i * S, 1.0, i % 2 == 0)
    assert len(eng.ticks) == 1000
    assert len(eng.delta_history) == 200
    assert len(eng.cvd_history) == 400
    assert eng.nbytes == (1000 + 200 + 400) * 16  # no growth slack left once full
    assert [t for t, _ in eng.ticks] == [T0 + i * S for i in range(4000, 5000)]  # oldest first
    assert eng.trades == 5000 and eng.buy_volume == 2500 and eng.cvd == 0.0


class DequeEngine:
    """The engine as it was (tuples in deques): the reference the rings must equal exactly."""

    def __init__(self, tick_buffer: int, delta_history: int, cvd_history: int) -> None:
        self.ticks: deque[tuple[int, float]] = deque(maxlen=tick_buffer)
        self.cvd_history: deque[tuple[int, float]] = deque(maxlen=cvd_history)
        self.delta_history: deque[tuple[int, float]] = deque(maxlen=delta_history)
        self.cvd = 0.0
        self.slot = -1
        self.slot_delta = 0.0

    def add(self, ns: int, size: float, buy: bool) -> None:
        signed = size if buy else -size
        self.ticks.append((ns, signed))
        slot = ns - ns % S
        if slot != self.slot:
            if self.slot >= 0:
                self.delta_history.append((self.slot, self.slot_delta))
                self.cvd_history.append((self.slot + S, self.cvd))
            self.slot, self.slot_delta = slot, 0.0
        self.slot_delta += signed
        self.cvd += signed

    def cvd_at(self, ns: int) -> float:
        if self.slot < 0:
            return 0.0
        if ns >= self.slot + S:
            return self.cvd
        if ns >= self.slot:
            return self.cvd - self.slot_delta
        for end, cvd in reversed(self.cvd_history):
            if end <= ns:
                return cvd
        if len(self.cvd_history) == self.cvd_history.maxlen:
            return self.cvd_history[0][1]
        return 0.0

    def figures(self, window_s: float, now_ns: int) -> tuple[int, float, float, float]:
        start = now_ns - int(window_s * S)
        buy = sell = 0.0
        n = 0
        for ns, signed in reversed(self.ticks):
            if ns < start:
                break
            if ns > now_ns:
                continue
            n += 1
            if signed > 0:
                buy += signed
            else:
                sell -= signed
        return n, buy, sell, self.cvd - self.cvd_at(start)


@pytest.mark.parametrize("late_share", [0.0, 0.02, 0.2])
@pytest.mark.parametrize("seed", range(5))
def test_rings_give_the_deques_figures(seed: int, late_share: float) -> None:
    """Random trades (in order, or some out of order; bursts, quiet seconds, zero sizes) through
    small rings that wrap many times: every window's figures equal the deque engine's, bit for
    bit, on the sorted path (bisection) and the general one."""
    rng = random.Random(seed)
    sizes = (rng.randint(1, 50), rng.randint(1, 20), rng.randint(1, 30))
    eng = FlowEngine("x", tick_buffer=sizes[0], delta_history=sizes[1], cvd_history=sizes[2])
    ref = DequeEngine(*sizes)
    ns = T0
    for i in range(3000):
        ns += rng.choice((0, 1, S // 7, S, 5 * S))
        at = ns - rng.randrange(3 * S) if rng.random() < late_share else ns
        size, buy = rng.choice((0.0, rng.random() * 100, float(rng.randint(1, 9)))), rng.random() < 0.5
        eng.add(at, size, buy)
        ref.add(at, size, buy)
        if i % 37 == 0:
            for window in (0.5, 1.0, 3.0, 10.0, 60.0):
                now = ns + rng.choice((0, S // 2, 2 * S))
                m = eng.metrics(window, now)
                assert (m.trades, m.buy_volume, m.sell_volume, m.cvd_change) == ref.figures(window, now)
                assert m.cvd == ref.cvd
            # the ring's count of times going back (0: the bisection path) is kept exactly
            order = [t for t, _ in ref.ticks]
            assert eng.ticks.descents == sum(b < a for a, b in pairwise(order))
    assert list(eng.ticks) == list(ref.ticks)
    assert list(eng.delta_history) == list(ref.delta_history)
    assert list(eng.cvd_history) == list(ref.cvd_history)


async def test_cache_hits_then_expires_with_the_clock() -> None:
    clock = FakeClock()
    book = FlowBook(ttl_ns=5 * S)
    book.add("pm.1", clock.time_ns(), 3.0, True)
    first = book.metrics("pm.1", 60.0, clock.time_ns())
    assert first is not None and first.buy_volume == 3.0
    book.add("pm.1", clock.time_ns(), 1.0, False)
    await clock.advance_and_settle(4.9)
    again = book.metrics("pm.1", 60.0, clock.time_ns())
    assert again is first  # cached: the sell is not seen yet
    assert (book.cache.stats.hits, book.cache.stats.misses) == (1, 1)
    await clock.advance_and_settle(0.1)
    fresh = book.metrics("pm.1", 60.0, clock.time_ns())
    assert fresh is not first and fresh is not None and fresh.sell_volume == 1.0
    assert (book.cache.stats.hits, book.cache.stats.misses) == (1, 2)
    assert book.cache.stats.hit_rate == pytest.approx(1 / 3)
    # another window is another key
    book.metrics("pm.1", 10.0, clock.time_ns())
    assert book.cache.stats.misses == 3
    assert book.metrics("never", 10.0, clock.time_ns()) is None


def test_cache_is_bounded_oldest_out() -> None:
    cache = MetricsCache(ttl_ns=5 * S, max_entries=3)
    calls: list[str] = []

    def compute(sym: str) -> OrderFlowMetrics:
        calls.append(sym)
        return OrderFlowMetrics(symbol=sym, window_s=1.0)

    for sym in "abcd":
        cache.get(sym, 1.0, T0, partial(compute, sym))
    assert len(cache) == 3 and cache.stats.evictions == 1
    cache.get("a", 1.0, T0, lambda: compute("a"))  # evicted: computed again
    cache.get("d", 1.0, T0, lambda: compute("d"))  # still there
    assert calls == ["a", "b", "c", "d", "a"]


def test_metrics_for_groups_by_symbol() -> None:
    book = FlowBook()
    book.add("a", T0, 1.0, True)
    book.add("b", T0, 2.0, False)
    got = book.metrics_for({"a": {60.0, 10.0}, "b": {60.0}, "zzz": {60.0}}, T0)
    assert sorted(got) == [("a", 10.0), ("a", 60.0), ("b", 60.0)]
    assert book.cache.stats.computations == 3


def test_swap_flow() -> None:
    assert swap_flow("-1000", "2000") == (1000.0, True)  # pool paid out token0: taker bought
    assert swap_flow("500", "-7") == (500.0, False)
    assert swap_flow("0", "1") is None
    assert swap_flow("nope", "1") is None


def test_compute_latency_histogram_through_the_collector(tmp_path: Path) -> None:
    core = Alerts(AlertsConfig(), SqliteStore(str(tmp_path / "a.sqlite3")))
    registry = CollectorRegistry()
    registry.register(AlertsCollector(core, None))

    def sample(suffix: str, le: str | None = None) -> float | None:
        labels = {} if le is None else {"le": le}
        return registry.get_sample_value(f"poolwire_alerts_flow_compute_seconds{suffix}", labels)

    try:
        for i in range(1000):
            core.flow.add("pm.a", T0 + i * S // 100, 1.0, i % 3 == 0)
        core.flow.metrics_for({"pm.a": {5.0, 60.0}}, T0 + 10 * S)
        core.flow.metrics_for({"pm.a": {5.0, 60.0}}, T0 + 10 * S)  # cached: not computed again
        stats = core.flow.cache.stats
        assert sample("_count") == sample("_bucket", "+Inf") == stats.computations == 2
        assert sample("_sum") == pytest.approx(stats.compute_ns_total / 1e9) and stats.compute_ns_total > 0

        core.flow.cache.stats = stats = CacheStats()
        for ns in (10_000, 10_001, 999_999, 30_000_000):  # on a bound, just above, ~1 ms, above all
            stats.observe_compute(ns)
        les = [str(b / 1e9) for b in COMPUTE_BUCKETS_NS] + ["+Inf"]
        assert les[:3] == ["1e-05", "2.5e-05", "5e-05"] and les[-2] == "0.025"
        buckets = {le: sample("_bucket", le) for le in les}
        assert buckets == {
            "1e-05": 1,
            "2.5e-05": 2,
            "5e-05": 2,
            "0.0001": 2,
            "0.00025": 2,
            "0.0005": 2,
            "0.001": 3,
            "0.0025": 3,
            "0.005": 3,
            "0.025": 3,
            "+Inf": 4,
        }
        assert sample("_count") == 4
        assert sample("_sum") == pytest.approx((10_000 + 10_001 + 999_999 + 30_000_000) / 1e9)
    finally:
        core.store.close()
