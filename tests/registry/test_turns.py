"""Timers on time: the wheel lag is a histogram, and no loop holds the event loop for a whole burst
(prices, detector events and expiry passes are handled a bounded piece per loop turn)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import CollectorRegistry, Histogram

import services.registry.clocked as clocked_module
import services.registry.intake as intake_module
from services.registry.metrics import RegistryCollector
from services.registry.registry import Registry
from services.registry.service import RegistryService
from services.registry.stats import LAG_BOUNDS_NS
from services.registry.zones import FVG_BULLISH, Rules, TimeframeRules
from shared.messages import DetectorEvent, Message, Price, ZoneCreated, ZoneExpired, ZoneRemoved
from tests.registry.rig import close_sockets, registry_service

S = 1_000_000_000
MS = 1_000_000
T0 = 1_700_000_000 * S


def rules(grace_ns: int = 60 * S) -> Rules:
    return Rules(timeframes={"H1": TimeframeRules(ttl_ns=3600 * S)}, grace_ns=grace_ns)


def lag_samples(reg: Registry) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in RegistryCollector(reg, None, None).collect():
        if family.name.startswith("poolwire_registry_wheel_lag"):
            for sample in family.samples:
                out[sample.name + sample.labels.get("le", "")] = sample.value
    return out


def test_each_timer_lateness_lands_in_its_histogram_bucket() -> None:
    reg = Registry(rules(), T0)
    for i in range(10):  # deadlines 1 ms apart: handled at the last one, 9, 8, ... 0 ms late
        reg.create("pm.a", "H1", FVG_BULLISH, 2.0 + i, 1.0 + i, 1.0, T0 + i * MS, T0)
    assert reg.advance(T0 + 3600 * S + 9 * MS) == 10
    m = lag_samples(reg)
    assert m["poolwire_registry_wheel_lag_seconds_count"] == 10
    assert m["poolwire_registry_wheel_lag_seconds_sum"] == pytest.approx(sum(range(10)) / 1000)
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.0005"] == 1  # the one on time
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.001"] == 2
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.005"] == 6
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.01"] == 10
    assert m["poolwire_registry_wheel_lag_seconds_bucket+Inf"] == 10
    assert m["poolwire_registry_wheel_lag_max_seconds"] == pytest.approx(0.009)
    # The grace ends are timers too, counted from each zone's deadline (its end): 40-49 ms late.
    reg.advance(T0 + 3660 * S + 49 * MS)
    m = lag_samples(reg)
    assert m["poolwire_registry_wheel_lag_seconds_count"] == 20
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.03"] == 10
    assert m["poolwire_registry_wheel_lag_seconds_bucket0.05"] == 20
    assert m["poolwire_registry_wheel_lag_max_seconds"] == pytest.approx(0.049)
    assert len(LAG_BOUNDS_NS) + 1 == len(reg.stats.lag_counts)


def events_of(reg: Registry) -> list[tuple[str, str, str]]:
    return [(type(e).__name__, e.zone.id, e.zone.state) for e in reg.drain()]  # type: ignore[attr-defined]


def test_an_expiry_pass_in_pieces_gives_the_events_of_one_pass() -> None:
    whole, pieces = Registry(rules(), T0), Registry(rules(), T0)
    for reg in (whole, pieces):
        for i in range(1000):
            reg.create(f"pm.{i % 7}", "H1", FVG_BULLISH, 2.0 + i, 1.0 + i, 1.0, T0 + i, T0)
        reg.drain()
    later = T0 + 3600 * S + S
    whole.advance(later)
    calls = 0
    while True:
        calls += 1
        pieces.advance(later, 128)
        if not pieces.due_backlog:
            break
    assert calls == 8
    assert events_of(pieces) == events_of(whole)
    assert len(pieces) == len(whole) == 1000  # all in grace


def test_a_zone_evicted_while_waiting_in_the_backlog_keeps_its_grace_period() -> None:
    reg = Registry(
        Rules(timeframes={"H1": TimeframeRules(ttl_ns=3600 * S)}, grace_ns=60 * S, max_per_tf=3), T0
    )
    zones = [
        reg.create("pm.a", "H1", FVG_BULLISH, 2.0 + i, 1.0 + i, s, T0, T0)
        for i, s in enumerate((0.5, 0.2, 0.3))
    ]
    reg.drain()
    due = T0 + 3600 * S
    assert reg.advance(due, 1) == 1  # the first to fall due
    assert reg.due_backlog == 2
    reg.create("pm.a", "H1", FVG_BULLISH, 9.0, 8.0, 1.0, due, due)
    reg.create("pm.a", "H1", FVG_BULLISH, 11.0, 10.0, 1.0, due, due)  # evicts the weakest: a waiting one
    evicted = [e for e in reg.drain() if isinstance(e, ZoneExpired) and e.reason == "evicted"]
    assert [e.zone.id for e in evicted] == [zones[1].id]  # type: ignore[union-attr]
    assert reg.advance(due, 10) == 1  # the other; the evicted one's TTL timer is stale
    assert reg.due_backlog == 0
    assert [(type(e).__name__, e.zone.id) for e in reg.drain()] == [("ZoneExpired", zones[2].id)]  # type: ignore[attr-defined, union-attr]
    assert reg.advance(due + 60 * S - 1) == 0  # every grace period counts from due: not removed early
    assert reg.advance(due + 60 * S) == 3
    assert {type(e).__name__ for e in reg.drain()} == {"ZoneRemoved"} and len(reg) == 2


def test_a_price_at_the_deadline_finds_the_waiting_zones_expired() -> None:
    """The backlog of an expiry pass in pieces is handled before a price whose event time reached
    its deadlines: that price cannot touch them (event-time order)."""
    reg = Registry(rules(), T0)
    for i in range(3):
        reg.create("pm.a", "H1", FVG_BULLISH, 2.0 + i, 1.0 + i, 1.0, T0, T0)
    reg.on_price("pm.a", 10.0, T0)
    reg.drain()
    due = T0 + 3600 * S
    assert reg.advance(due, 1) == 1
    assert reg.due_backlog == 2
    reg.on_price("pm.a", 0.5, due)
    assert reg.due_backlog == 0
    assert [type(e).__name__ for e in reg.drain()] == ["ZoneExpired"] * 3  # the pass's, the two: no touch
    assert reg.stats.by_tf["H1"].expired_ttl == 3 and reg.stats.by_tf["H1"].expired_filled == 0


@asynccontextmanager
async def service() -> AsyncIterator[RegistryService]:
    svc = registry_service()
    await svc.bind()
    svc.pub.start()
    try:
        yield svc
    finally:
        await close_sockets(svc)


async def other_task_turns_during(loop_task: asyncio.Task[None], done: asyncio.Event) -> int:
    """How many times another task ran before ``done``."""
    turns = 0
    async with asyncio.timeout(30):
        while not done.is_set():
            await asyncio.sleep(0)
            turns += 1
    loop_task.cancel()
    await asyncio.gather(loop_task, return_exceptions=True)
    return turns


async def test_a_burst_of_prices_is_handled_over_many_loop_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    """recv_batch returns without yielding while prices are queued: the loop yields itself."""
    monkeypatch.setattr(intake_module, "TURN_BUDGET_S", 0.0)  # one piece (64 prices) per turn
    async with service() as svc:
        burst: list[tuple[str, Message]] = [
            ("px.pm.a", Price(symbol="pm.a", price=1.0 + (k % 50) / 10, event_ns=0)) for k in range(6400)
        ]
        now = svc.clock.time_ns()  # the prices are stamped 0: their event time is the clock's
        svc.registry.create("pm.a", "H1", "custom", 3.05, 3.0, 1.0, now, now)
        svc.registry.drain()
        handed = False
        done = asyncio.Event()

        async def recv_batch(timeout: float | None = None) -> list[tuple[str, Message]]:
            nonlocal handed
            if not handed:
                handed = True
                return burst
            done.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        monkeypatch.setattr(svc.sub, "recv_batch", recv_batch)
        published: list[int] = []
        monkeypatch.setattr(svc.pub, "publish", lambda topic, msg: published.append(1))
        turns = await other_task_turns_during(asyncio.create_task(svc.price_loop()), done)
        assert turns >= 99  # 100 pieces, a turn after each
        assert svc.registry.stats.prices == 6400  # every price handled, none twice
        reference = Registry(svc.registry.rules, T0)
        reference.create("pm.a", "H1", "custom", 3.05, 3.0, 1.0, T0, T0)
        for _, price in burst:
            reference.on_price("pm.a", price.price, T0)  # type: ignore[attr-defined]
        assert svc.registry.stats.by_tf["H1"].touched == reference.stats.by_tf["H1"].touched == 255
        assert len(published) == 255


async def test_a_burst_of_detector_events_is_handled_over_many_loop_turns(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(intake_module, "TURN_BUDGET_S", 0.0)
    async with service() as svc:
        burst: list[Message] = [
            DetectorEvent(
                detector="d", symbol="pm.a", timeframe="H1", kind="custom", top=2.0 + k, bottom=1.0 + k
            )
            for k in range(640)
        ]
        handed = False
        done = asyncio.Event()

        async def recv_batch(timeout: float | None = None) -> list[Message]:
            nonlocal handed
            if not handed:
                handed = True
                return burst
            done.set()
            await asyncio.Event().wait()
            raise AssertionError("unreachable")

        monkeypatch.setattr(svc.puller, "recv_batch", recv_batch)
        created: list[Message] = []
        monkeypatch.setattr(svc.pub, "publish", lambda topic, msg: created.append(msg))
        turns = await other_task_turns_during(asyncio.create_task(svc.detector_loop()), done)
        assert turns >= 9
        assert len(created) == 640 and all(isinstance(m, ZoneCreated) for m in created)


async def test_a_big_expiry_pass_is_published_over_many_loop_turns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(clocked_module, "EXPIRY_TURN_S", 0.0)  # one step (100 zones) per turn
    async with service() as svc:
        clock_now = svc.clock.time_ns()
        for k in range(2000):  # all past their TTL already
            svc.registry.create(
                "pm.a", "H1", "custom", 2.0 + k, 1.0 + k, 1.0, clock_now - 3 * 3600 * S, clock_now
            )
        svc.registry.drain()
        sent: list[Message] = []
        monkeypatch.setattr(svc.pub, "publish", lambda topic, msg: sent.append(msg))
        task = asyncio.create_task(svc.expiry_loop())
        turns = 0
        async with asyncio.timeout(30):
            while sum(isinstance(m, ZoneExpired) for m in sent) < 2000:
                await asyncio.sleep(0)
                turns += 1
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert turns >= 20  # 2 000 zones, 100 a turn
        assert not any(isinstance(m, ZoneRemoved) for m in sent)  # their grace has not run out


async def test_a_turn_ends_soon_after_the_next_planned_timer() -> None:
    async with service() as svc:
        now = T0
        svc._planned_wake_ns = now + 60 * S  # nothing due for a minute: the longest turn
        assert svc.turn_budget(now) == intake_module.TURN_MAX_S
        svc._planned_wake_ns = now + 3 * MS  # a timer in 3 ms: the turn ends at most 2 ms after it
        assert svc.turn_budget(now) == pytest.approx(0.003 + intake_module.TURN_BUDGET_S)
        svc._planned_wake_ns = now - 1 * MS  # already due: the shortest turn
        assert svc.turn_budget(now) == intake_module.TURN_BUDGET_S


async def test_the_probe_counts_a_loop_held_on_the_cpu_and_a_slow_piece_by_stage() -> None:
    from services.registry.turns import Turns

    turns = Turns(Histogram("t_processing_seconds", "", ["stage"], registry=CollectorRegistry()))
    probe = asyncio.create_task(turns.probe())
    await asyncio.sleep(0.02)  # the probe sleeps
    t0 = turns.start()
    c0 = time.thread_time()
    while time.thread_time() - c0 < 0.06:  # the loop held, on the CPU, for 60 ms
        pass
    turns.done("candles", t0, "%d symbols", 10)
    async with asyncio.timeout(10):
        while not turns.stalls[2]:
            await asyncio.sleep(0.001)
    probe.cancel()
    await asyncio.gather(probe, return_exceptions=True)
    assert turns.stalls[2] >= 1 and turns.busy[2] >= 1  # 50 ms and over, its own CPU
    assert turns.slow["candles"] == 1 and turns.slow["prices"] == 0
    samples = {
        (s.name, s.labels.get("over") or s.labels.get("stage")): s.value
        for family in turns.collect()
        for s in family.samples
    }
    assert samples[("poolwire_registry_slow_turns_total", "candles")] == 1
    assert samples[("poolwire_registry_loop_busy_total", "50ms")] >= 1


def test_gc_collections_over_5_ms_are_counted_by_generation(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.registry import turns as turns_module

    turns = turns_module.Turns(Histogram("t_processing_seconds", "", ["stage"], registry=CollectorRegistry()))
    now = [100.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    for gen, took in ((0, 0.001), (2, 0.030), (1, 0.006)):
        turns.on_gc("start", {"generation": gen})
        now[0] += took
        turns.on_gc("stop", {"generation": gen})
    assert turns.gc_slow == [0, 1, 1]


def test_the_expiry_loops_late_wakes_are_counted_by_bound() -> None:
    from services.registry.turns import Turns

    turns = Turns(Histogram("t_processing_seconds", "", ["stage"], registry=CollectorRegistry()))
    for late_ms in (0.5, 7.0, 60.0):
        turns.woke(late_ms)
    turns.by_expiry_loop += 3
    samples = {(s.name, s.labels.get("over")): s.value for family in turns.collect() for s in family.samples}
    assert [samples[("poolwire_registry_expiry_wake_delays_total", f"{b}ms")] for b in (5, 20, 50, 100)] == [
        2,
        1,
        1,
        0,
    ]
    assert samples[("poolwire_registry_timers_by_expiry_loop_total", None)] == 3


async def test_the_expiry_loops_sleep_ends_on_its_timer_or_on_a_wake() -> None:
    async with service() as svc:
        assert await svc._sleep_or_wake(0.001) is False  # the timer rang
        svc._wake.clear()
        asyncio.get_running_loop().call_soon(svc._wake.set)
        assert await svc._sleep_or_wake(60.0) is True  # woken long before its minute
        assert await svc._sleep_or_wake(60.0) is True  # still set: at once
