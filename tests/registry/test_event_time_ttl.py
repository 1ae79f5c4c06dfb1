"""TTLs on event time (issue 14): the wheel goes to the event-time point, the clock while the price
stream is live and, in a replay of history, the newest event time of its prices; a price first
expires the zones whose deadline it reached, so it never touches them. The same recorded stretch
at any pace gives the same zone events, expiry against touch order included; a live stream that
goes quiet still expires zones on the clock. The service runs its real loops on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest

from services.registry.service import RegistryService
from shared.clock import FakeClock, settle
from shared.messages import DetectorEvent, Message, Price, ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched
from tests.registry.rig import close_sockets, registry_service

S = 1_000_000_000
TTL = 60 * S
Key = tuple[str, str, int, object, int]  # (event, zone id, event_ns, price or reason, touches)


@asynccontextmanager
async def service(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[RegistryService, list[Key]]]:
    """The registry on ``clock`` with its expiry loop running; the zone events it publishes."""
    svc = registry_service(
        clock,
        pools={"H1": {"ttl": "2h"}, "grace_period_minutes": 5, "auto_expire_interval": "30s"},
        detectors={"enabled": False},
    )
    await svc.bind()
    events: list[Key] = []

    def publish(batch: list[Message], oldest_ns: int = 0) -> None:
        for e in batch:
            assert isinstance(e, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved)
            extra: object = e.price if isinstance(e, ZoneTouched) else getattr(e, "reason", None)
            events.append((type(e).__name__, e.zone.id, e.event_ns, extra, e.zone.touches))

    monkeypatch.setattr(svc, "publish", publish)
    expiry = asyncio.create_task(svc.expiry_loop())
    await settle()
    try:
        yield svc, events
    finally:
        expiry.cancel()
        await asyncio.gather(expiry, return_exceptions=True)
        await close_sockets(svc)


def prices(svc: RegistryService, ticks: Sequence[tuple[str, int, float]]) -> None:
    """One turn of the price loop (what it does with a batch from the SUB)."""
    batch: list[tuple[str, Message]] = [
        (f"px.{s}", Price(symbol=s, price=p, event_ns=t)) for s, t, p in ticks
    ]
    start = 0
    while start < len(batch):
        start = svc.prices(batch, start)
        svc.observe_stream()


def zone_event(h: int, ttl_ns: int = TTL) -> DetectorEvent:
    return DetectorEvent(
        detector="test", symbol="pm.a", timeframe="H1", kind="custom", top=1.0, bottom=0.9,
        created_ns=h, ttl_ns=ttl_ns, event_ns=h,
    )  # fmt: skip


def stretch(h: int) -> list[tuple[str, int, float]]:
    """pm.a's zone [0.9, 1.0] (TTL ends at h + 60 s) entered twice before its deadline, and at,
    and after it; pm.b's prices move the event time past the deadline in between."""
    return [
        ("pm.a", h + 10 * S, 0.95),  # touch 1
        ("pm.a", h + 20 * S, 1.5),
        ("pm.b", h + 30 * S, 7.0),
        ("pm.a", h + 50 * S, 0.95),  # touch 2
        ("pm.a", h + 55 * S, 1.5),
        ("pm.b", h + 59 * S, 7.1),
        ("pm.b", h + 61 * S, 7.2),  # past the deadline: the zone expires before this price
        ("pm.a", h + 62 * S, 0.95),  # would touch it
        ("pm.a", h + 70 * S, 1.5),
        ("pm.a", h + 80 * S, 0.95),  # would touch it again
    ]


Pace = Callable[[RegistryService, FakeClock, list[tuple[str, int, float]]], Any]


async def at_once(svc: RegistryService, clock: FakeClock, ticks: list[tuple[str, int, float]]) -> None:
    prices(svc, ticks)
    await settle()


async def tick_by_tick(svc: RegistryService, clock: FakeClock, ticks: list[tuple[str, int, float]]) -> None:
    """One price a turn, the clock moving on by 1 s, the expiry loop waking between them."""
    for tick in ticks:
        prices(svc, [tick])
        await clock.advance_and_settle(1.0, 0.25)


async def paused(svc: RegistryService, clock: FakeClock, ticks: list[tuple[str, int, float]]) -> None:
    """An hour of wall clock before each price (a replay that stalls), far past every deadline."""
    for tick in ticks:
        await clock.advance_and_settle(3600.0, 60.0)
        prices(svc, [tick])
        await settle()


async def replay(pace: Pace, monkeypatch: pytest.MonkeyPatch) -> list[Key]:
    clock = FakeClock()
    h = clock.time_ns() - 3 * 3600 * S  # history: three hours ago
    async with service(clock, monkeypatch) as (svc, events):
        prices(svc, [("pm.a", h, 1.5), ("pm.b", h, 7.0)])  # the stretch's first prices, above the zone
        await clock.advance_and_settle(1.0)
        assert svc.detector_events([zone_event(h)], 0) == 1
        await clock.advance_and_settle(1.0)
        await pace(svc, clock, stretch(h))
        assert not svc.registry.timers.live
        await clock.advance_and_settle(7200.0, 60.0)  # the replay over: nothing moves its time
    return events


@pytest.mark.parametrize("pace", [at_once, tick_by_tick, paused], ids=lambda p: p.__name__)
async def test_the_same_stretch_at_any_pace_gives_the_same_events(
    pace: Pace, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = await replay(pace, monkeypatch)
    assert events == await replay(at_once, monkeypatch)
    clock_h = FakeClock().time_ns() - 3 * 3600 * S
    (zid,) = {e[1] for e in events}
    assert events == [
        ("ZoneCreated", zid, clock_h, None, 0),
        ("ZoneTouched", zid, clock_h + 10 * S, 0.95, 1),
        ("ZoneTouched", zid, clock_h + 50 * S, 0.95, 2),
        ("ZoneExpired", zid, clock_h + TTL, "ttl", 2),  # before pm.b's price at h + 61 s
    ]  # and no removal: its grace ends 5 min of event time later, which the stretch never reaches


async def test_a_price_at_the_deadline_finds_the_zone_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    h = clock.time_ns() - 3 * 3600 * S
    async with service(clock, monkeypatch) as (svc, events):
        prices(svc, [("pm.a", h, 1.5)])
        svc.detector_events([zone_event(h)], 0)
        prices(svc, [("pm.a", h + TTL - 1, 0.95), ("pm.a", h + TTL - 1, 1.5), ("pm.a", h + TTL, 0.95)])
        await clock.advance_and_settle(60.0, 1.0)
    assert [(e[0], e[2] - h) for e in events] == [
        ("ZoneCreated", 0),
        ("ZoneTouched", TTL - 1),  # a nanosecond before its end
        ("ZoneExpired", TTL),  # and the price at its end finds it gone
    ]


async def test_a_live_stream_gone_quiet_expires_zones_on_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    now = clock.time_ns()
    async with service(clock, monkeypatch) as (svc, events):
        prices(svc, [("pm.a", now, 1.5)])  # live: stamped now
        assert svc.registry.timers.live
        svc.detector_events([zone_event(now, 5 * S)], 0)
        await settle()
        await clock.advance_and_settle(4.9, 0.01)  # no price comes any more
        assert [e[0] for e in events] == ["ZoneCreated"]
        await clock.advance_and_settle(0.2, 0.01)
        assert [(e[0], e[2] - now, e[3]) for e in events] == [
            ("ZoneCreated", 0, None),
            ("ZoneExpired", 5 * S, "ttl"),
        ]
        assert svc.registry.stats.max_lag_ns <= 10_000_000  # woken at its deadline, within a step
        await clock.advance_and_settle(300.0, 1.0)  # and its grace period on the clock too
        assert [e[0] for e in events][-1] == "ZoneRemoved"


async def test_a_replay_that_stops_keeps_its_zones_until_its_time_moves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Not live: the clock does not expire the zone, however long it waits; the next price does."""
    clock = FakeClock()
    h = clock.time_ns() - 3 * 3600 * S
    async with service(clock, monkeypatch) as (svc, events):
        prices(svc, [("pm.a", h, 1.5)])
        svc.detector_events([zone_event(h)], 0)
        await clock.advance_and_settle(6 * 3600.0, 60.0)
        assert [e[0] for e in events] == ["ZoneCreated"]
        assert svc.registry.next_deadline_ns() == h + TTL
        prices(svc, [("pm.b", h + TTL + S, 2.0)])  # another symbol's price moves the event time
        assert [(e[0], e[2] - h) for e in events] == [("ZoneCreated", 0), ("ZoneExpired", TTL)]
        # Live again (a price stamped now): the point is the clock; the grace period has ended.
        prices(svc, [("pm.b", clock.time_ns(), 2.0)])
        await settle()
        assert svc.registry.timers.live and [e[0] for e in events][-1] == "ZoneRemoved"
