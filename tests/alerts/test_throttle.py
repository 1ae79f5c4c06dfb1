"""The throttle core over both stores (SQLite and a real Redis): same behaviour on each."""

from __future__ import annotations

from typing import Any

from services.alerts.throttle import StrategySpec, Throttle
from shared.clock import FakeClock

S = 1_000_000_000
M = 60 * S


def specs(*items: tuple[str, int, Any]) -> list[StrategySpec]:
    return [StrategySpec.from_universe(i, b, u) for i, b, u in items]


def boundary(clock: FakeClock, size: int = M) -> int:
    now = clock.time_ns()
    return now - now % size + size


def test_runs_only_when_a_universe_ticker_moved(store_factory: Any) -> None:
    clock = FakeClock()
    t = Throttle(store_factory(), specs(("a", M, ["pm.1", "pm.2"]), ("b", M, ["pm.3"])))
    t.start()
    clock.set_ns(boundary(clock) + 5 * S)
    t.note_update("pm.1", clock.time_ns())
    t.note_update("pm.9", clock.time_ns())
    clock.set_ns(boundary(clock))
    due = t.run_due(clock.time_ns())
    assert [(d.strategy, sorted(d.tickers)) for d in due] == [("a", ["pm.1"])]
    assert t.stats.runs == 1 and t.stats.skipped_no_update == 1
    # next bucket: nothing moved -> both skipped; then pm.3 moves -> only b runs
    clock.set_ns(boundary(clock))
    assert t.run_due(clock.time_ns()) == []
    assert t.stats.skipped_no_update == 3
    clock.advance(10)
    t.note_update("pm.3", clock.time_ns())
    clock.set_ns(boundary(clock))
    due = t.run_due(clock.time_ns())
    assert [(d.strategy, sorted(d.tickers)) for d in due] == [("b", ["pm.3"])]


def test_same_bucket_twice_is_a_duplicate_even_after_restart(store_factory: Any) -> None:
    clock = FakeClock()
    strategies = specs(("a", M, ["pm.1"]))
    t = Throttle(store_factory(), strategies)
    t.start()
    clock.set_ns(boundary(clock) + S)
    t.note_update("pm.1", clock.time_ns())
    clock.set_ns(boundary(clock) + S)
    assert len(t.run_due(clock.time_ns())) == 1
    # the same instance does not evaluate the group twice in one bucket ...
    assert t.run_due(clock.time_ns() + S) == []
    # ... and a restarted one (same store) sees the claim: a bucket duplicate
    t2 = Throttle(store_factory(), strategies)
    t2.start()
    t2.note_update("pm.1", clock.time_ns())
    assert t2.run_due(clock.time_ns()) == []
    assert t2.stats.skipped_duplicate == 1 and t2.stats.runs == 0
    # the next bucket runs, and sees the update made after the last run
    clock.set_ns(boundary(clock))
    assert [sorted(d.tickers) for d in t2.run_due(clock.time_ns())] == [["pm.1"]]


def test_buckets_are_independent(store_factory: Any) -> None:
    clock = FakeClock(start_ns=1_700_000_000 * S - 1_700_000_000 * S % (5 * M))  # on a 5m boundary
    t = Throttle(store_factory(), specs(("m1", M, ["x"]), ("m5", 5 * M, ["x"])))
    t.start()
    ran: list[str] = []
    for minute in range(1, 11):
        t.note_update("x", clock.time_ns() + S)
        clock.set_ns(clock.time_ns() + M)
        assert clock.time_ns() % M == 0, minute
        ran += [d.strategy for d in t.run_due(clock.time_ns())]
    assert ran.count("m1") == 10
    # m5: the boundary current when first asked (the start, caught up late), then minutes 5 and 10
    assert ran.count("m5") == 3


def test_glob_and_discovered_universes(store_factory: Any) -> None:
    clock = FakeClock()
    store = store_factory()
    t = Throttle(store, specs(("g", M, ["dex.*"]), ("d", M, "discover")))
    t.start()
    clock.set_ns(boundary(clock) + S)
    for sym in ("dex.a", "pm.1", "pm.2"):
        t.note_update(sym, clock.time_ns())
    clock.set_ns(boundary(clock))
    due = {d.strategy: sorted(d.tickers) for d in t.run_due(clock.time_ns())}
    assert due == {"g": ["dex.a"], "d": ["dex.a", "pm.1", "pm.2"]}  # discover: everything at first
    assert store.get_universe("g") == {"dex.a"}
    # the worker reports it used only pm.1: that is now d's universe
    assert t.discover("d", ["pm.1"]) is True
    assert t.discover("d", ["pm.1"]) is False  # unchanged: not a new discovery
    assert t.stats.discoveries == 1
    clock.advance(1)
    t.note_update("pm.2", clock.time_ns())
    t.note_update("dex.b", clock.time_ns())
    clock.set_ns(boundary(clock))
    due = {d.strategy: sorted(d.tickers) for d in t.run_due(clock.time_ns())}
    assert due == {"g": ["dex.b"]}
    # a restart keeps the discovered universe
    t2 = Throttle(store_factory(), specs(("g", M, ["dex.*"]), ("d", M, "discover")))
    t2.start()
    assert t2.store.get_universe("d") == {"pm.1"}
    assert t2.store.get_universe("g") == {"dex.a", "dex.b"}


def test_cleanup_removes_only_entries_older_than_retention(store_factory: Any) -> None:
    clock = FakeClock()
    store = store_factory()
    t = Throttle(store, [])
    day = 86_400 * S
    now = clock.time_ns()
    t.note_update("old", now - 91 * day)
    t.note_update("edge", now - 90 * day + S)
    t.note_update("new", now - S)
    t.flush()
    assert store.ticker_count() == 3
    assert t.cleanup(now, 90 * day) == 1
    assert sorted(store.tickers()) == ["edge", "new"]
    assert t.stats.cleanups == 1 and t.stats.cleaned == 1


def test_large_universes_intersect_the_same(store_factory: Any) -> None:
    clock = FakeClock()
    store = store_factory(large_universe=50)
    big = [f"pm.{i}" for i in range(200)]
    t = Throttle(store, specs(("big", M, big), ("small", M, big[:5])))
    t.start()
    clock.set_ns(boundary(clock) + S)
    for sym in [*big[::7], "other.1"]:
        t.note_update(sym, clock.time_ns())
    clock.set_ns(boundary(clock))
    due = {d.strategy: set(d.tickers) for d in t.run_due(clock.time_ns())}
    assert due == {"big": set(big[::7]), "small": {"pm.0"}}
    assert t.stats.large_intersections == 1
    dist = t.distribution()
    assert dist.counts == {"small": 1, "medium": 0, "large": 1, "xlarge": 0}
    assert dist.average == 102.5


def test_older_update_never_replaces_newer(store_factory: Any) -> None:
    store = store_factory()
    store.record_updates({"a": 2_000_000_000})
    store.record_updates({"a": 1_000_000_000})
    assert store.last_update("a") == 2_000_000_000


def test_boundaries_passed_over_are_evaluated_in_order(store_factory: Any) -> None:
    """A replay's event time can pass several boundaries at once: each one that can hold an update
    is evaluated, in order, as a live run would; the empty stretch after them is not claimed."""
    clock = FakeClock()
    t = Throttle(store_factory(), specs(("s", M, ["pm.a", "pm.b"])))
    t.start()
    b0 = boundary(clock)
    assert t.run_due(b0) == []
    t.note_update("pm.a", b0 + S)
    t.note_update("pm.b", b0 + M + S)
    due = t.run_due(b0 + 10 * M)
    assert [(d.bucket_ns, d.since_ns, sorted(d.tickers)) for d in due] == [
        (b0 + M, b0, ["pm.a", "pm.b"]),
        (b0 + 2 * M, b0 + M, ["pm.b"]),
    ]
    assert t.stats.evaluations == 4  # b0, b0 + M, b0 + 2M, b0 + 10M: not the 7 empty ones between
