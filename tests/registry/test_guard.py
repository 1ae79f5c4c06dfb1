"""The registry's loops survive an exception from handling one input (a bug): counted with reason
``internal``, logged with its traceback (rate-limited), and the next input is handled. The expiry
pass is guarded per zone: one zone whose expiry raises is counted, the others expire."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from services.registry.metrics import RegistryCollector
from services.registry.registry import Registry
from services.registry.service import RegistryService
from services.registry.zones import Rules, TimeframeRules
from shared.bus import Publisher, Pusher, Subscriber
from shared.messages import DetectorEvent, Price, ZoneCreated, ZoneExpired
from tests.registry.rig import close_sockets, registry_service

S = 1_000_000_000
T0 = 1_700_000_000 * S


@asynccontextmanager
async def service() -> AsyncIterator[RegistryService]:
    svc = registry_service()
    await svc.bind()
    svc.pub.start()
    tasks = [asyncio.create_task(svc.detector_loop()), asyncio.create_task(svc.price_loop())]
    try:
        yield svc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for task in tasks:  # the loops ended by cancellation, not by an exception
            assert task.cancelled()
        await close_sockets(svc)


class OneMethodReplaced:
    """The service's registry with one method replaced: the compiled core's methods cannot be
    patched on the object itself (shared/compiled.py), so the service is given this in its place."""

    def __init__(self, registry: Registry, name: str, method: Callable[..., Any]) -> None:
        self._registry = registry
        self._name = name
        self._method = method

    def __getattr__(self, name: str) -> Any:
        return self._method if name == self._name else getattr(self._registry, name)


def event(symbol: str) -> DetectorEvent:
    return DetectorEvent(detector="t", symbol=symbol, timeframe="H1", kind="custom", top=0.9, bottom=0.5)


async def test_an_exception_in_one_detector_event_is_counted_and_the_next_is_handled(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service() as svc:
        create = svc.registry.create

        def fragile(symbol: str, *args: Any, **kwargs: Any) -> Any:
            if symbol == "pm.boom":
                raise RuntimeError("a bug")
            return create(symbol, *args, **kwargs)

        monkeypatch.setattr(svc, "registry", OneMethodReplaced(svc.registry, "create", fragile))
        pusher = Pusher(svc.ctx.config.pull, sender="test")
        try:
            with caplog.at_level(logging.WARNING, "poolwire.registry"):
                async with Subscriber([svc.ctx.config.pub], ("zone.created.",)) as sub:
                    await svc.pub.wait_for_subscriber("zone.created.", timeout=10)
                    for symbol in ["pm.boom"] * 30 + ["pm.ok"]:
                        await pusher.send(event(symbol))
                    async with asyncio.timeout(10):
                        topic, created = (await sub.recv_batch())[0]
        finally:
            pusher.close()
        assert isinstance(created, ZoneCreated) and created.zone.symbol == "pm.ok", topic
        assert svc.bad_events["internal"] == 30
        tracebacks = [r.getMessage() for r in caplog.records if "raised; skipped" in r.getMessage()]
        assert 1 <= len(tracebacks) <= 10  # rate-limited: a burst, not 30
        assert "RuntimeError: a bug" in tracebacks[0] and "Traceback" in tracebacks[0]


async def test_an_exception_in_one_price_is_counted_and_the_next_is_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with service() as svc:
        on_price = svc.registry.on_price

        late_seen = asyncio.Event()

        def fragile(symbol: str, *args: Any) -> None:
            if symbol == "pm.boom":
                raise RuntimeError("a bug")
            on_price(symbol, *args)
            if symbol == "pm.late":
                late_seen.set()

        monkeypatch.setattr(svc, "registry", OneMethodReplaced(svc.registry, "on_price", fragile))
        async with Publisher(svc.ctx.config.prices[0], service="ingest") as pub:
            await pub.wait_for_subscriber("px.", timeout=10)
            pub.publish("px.pm.boom", Price(symbol="pm.boom", price=1.0))
            pub.publish("px.pm.ok", Price(symbol="pm.ok", price=1.0))
            pub.publish("px.pm.late", Price(symbol="pm.late", price=1.0, event_ns=2**64 - 1))
            await asyncio.wait_for(late_seen.wait(), 10)
        assert svc.prices_refused == {"internal": 1, "bad_time": 1}
        assert svc.registry.last_price("pm.ok") == 1.0


def test_one_zone_whose_expiry_raises_is_counted_and_the_others_expire() -> None:
    reg = Registry(Rules(timeframes={"H1": TimeframeRules(ttl_ns=3600 * S)}, grace_ns=0), T0)
    zones = [reg.create(f"pm.{i}", "H1", "custom", 2.0, 1.0, 1.0, T0, T0) for i in range(5)]
    bad = zones[2]
    assert bad is not None
    reg.drain()
    reg._entries[
        bad.id
    ].timeframe = "H9"  # an entry the registry's tables do not know: its expiry raises KeyError
    told: list[tuple[str, Exception]] = []
    reg.on_expiry_error = lambda zid, exc: told.append((zid, exc))
    assert reg.advance(T0 + 3600 * S) == 5
    expired = [e.zone.symbol for e in reg.drain() if isinstance(e, ZoneExpired)]
    assert sorted(expired) == ["pm.0", "pm.1", "pm.3", "pm.4"]  # same deadline: by zone id
    assert reg.stats.expiry_errors == 1
    assert [(zid, type(exc)) for zid, exc in told] == [(bad.id, KeyError)]
    # The service's metrics export the count.
    collector = RegistryCollector(reg, None, None)
    values = {m.name: m.samples[0].value for m in collector.collect() if m.name.endswith("expiry_errors")}
    assert values == {"poolwire_registry_expiry_errors": 1}


async def test_the_expiry_loop_survives_a_failing_pass_and_logs_it(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with service() as svc:
        passes = 0
        second = asyncio.Event()

        def failing(now_ns: int, limit: int | None = None) -> int:
            nonlocal passes
            passes += 1
            if passes >= 2:
                second.set()
            raise RuntimeError("a wheel bug")

        monkeypatch.setattr(svc, "registry", OneMethodReplaced(svc.registry, "advance", failing))
        with caplog.at_level(logging.WARNING, "poolwire.registry"):
            task = asyncio.create_task(svc.expiry_loop())
            try:
                async with asyncio.timeout(10):
                    while not second.is_set():  # each pass plans its next; a wake starts it now
                        svc._wake.set()
                        await asyncio.sleep(0)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        assert task.cancelled()  # ended by cancellation, not by the exception
        assert svc.bad_events["internal"] >= 2
        assert any("RuntimeError: a wheel bug" in r.getMessage() for r in caplog.records)
