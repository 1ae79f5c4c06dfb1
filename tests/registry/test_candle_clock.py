"""The candles of a live symbol gone quiet close on the clock, at their end plus the lateness, and
the candle loop walks the symbols only then: it looks each second (``Detectors.next_due_ns``) and
passes over 2 000 symbols cost 1-5 ms of the loop each, every second, with hours-long candles.
The service runs its real candle loop on a FakeClock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from services.registry.detectors import Detectors
from services.registry.service import RegistryService
from shared.clock import FakeClock, settle
from shared.messages import Price
from tests.registry.rig import close_sockets, registry_service

S = 1_000_000_000
M = 60 * S


@asynccontextmanager
async def service(clock: FakeClock) -> AsyncIterator[RegistryService]:
    """The registry on ``clock`` with detectors on M1 and M5 (lateness 2 s, the default) and its
    candle loop."""
    svc = registry_service(
        clock, pools={"M1": {"ttl": "2h"}, "M5": {"ttl": "2h"}}, detectors={"timeframes": ["M1", "M5"]}
    )
    await svc.bind()
    loop = asyncio.create_task(svc.candle_loop())
    await settle()
    try:
        yield svc
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
        await close_sockets(svc)


def passes(svc: RegistryService) -> float:
    value = svc.ctx.metrics.get_sample_value(
        "poolwire_registry_processing_seconds_count", {"stage": "candles"}
    )
    return value or 0.0


def tick(svc: RegistryService, symbol: str, event_ns: int, price: float) -> None:
    svc.prices([(f"px.{symbol}", Price(symbol=symbol, price=price, event_ns=event_ns))], 0)


async def test_a_quiet_live_symbols_candles_close_at_their_end_plus_the_lateness_in_one_pass_each() -> None:
    clock = FakeClock()
    clock.set_ns(clock.time_ns() - clock.time_ns() % (5 * M) + 5 * M + 10 * S)  # after a boundary of both
    async with service(clock) as svc:
        assert svc.detectors is not None
        for i, symbol in enumerate(("pm.a", "pm.b", "pm.c")):
            tick(svc, symbol, clock.time_ns(), 1.0 + i)  # stamped now: live
        candles = svc.detectors.stats.candles
        await clock.advance_and_settle(60 - 10 + 2 - 0.1, 0.1)  # just before M1's end + 2 s
        assert candles == {"M1": 0, "M5": 0} and passes(svc) == 0  # ~52 looks, no walk
        await clock.advance_and_settle(0.2, 0.1)
        assert candles == {"M1": 3, "M5": 0} and passes(svc) == 1
        await clock.advance_and_settle(4 * 60 - 0.2, 0.1)  # up to just before M5's end + 2 s
        # a pass at each M1 end (empty buckets close, no candle), none in between
        assert candles == {"M1": 3, "M5": 0} and passes(svc) == 4
        await clock.advance_and_settle(0.2, 0.1)
        assert candles == {"M1": 3, "M5": 3} and passes(svc) == 5  # M1's and M5's ends: one pass


def test_next_due_is_each_timeframes_own_next_end_and_a_replayed_symbol_is_never_due() -> None:
    det = Detectors({"M2": 2 * M, "M3": 3 * M}, lateness_ns=2 * S)
    t0 = 1_700_000_000 * S - (1_700_000_000 * S) % (6 * M)
    assert det.next_due_ns() is None
    det.on_price("pm.old", t0 - 86400 * S, 1.0, t0)  # a day old: a replay, not live
    assert det.next_due_ns() is None
    det.on_price("pm.a", t0 + 5 * S, 1.0, t0 + 5 * S)  # live
    assert det.next_due_ns() == t0 + 2 * M + 2 * S
    det.on_time(t0 + 2 * M + 2 * S)
    assert det.next_due_ns() == t0 + 3 * M + 2 * S  # M3's end, not M2's next one (t0 + 4 min)
    det.on_time(t0 + 3 * M + 2 * S)
    assert det.next_due_ns() == t0 + 4 * M + 2 * S
    # a bucket the point passed outside the tick path (the shell's close of a boundary): due now
    det._marks["pm.old"].close_through(t0)
    due = det.next_due_ns()
    assert due is not None and due <= t0


@pytest.mark.parametrize("quiet_s", [0.5, 30.0])
async def test_a_symbol_seen_between_looks_is_due_from_its_own_buckets(quiet_s: float) -> None:
    """A symbol that turns live while the loop sleeps is looked at within a second."""
    clock = FakeClock()
    clock.set_ns(clock.time_ns() - clock.time_ns() % (5 * M) + 5 * M + 10 * S)
    async with service(clock) as svc:
        assert svc.detectors is not None
        await clock.advance_and_settle(quiet_s, 0.1)
        tick(svc, "pm.late", clock.time_ns(), 2.0)
        await clock.advance_and_settle(60 - 10 - quiet_s + 2.2, 0.1)
        assert svc.detectors.stats.candles == {"M1": 1, "M5": 0} and passes(svc) == 1
