"""The registry's loops survive an exception from handling one input (a bug): counted with reason
``internal``, logged with its traceback (rate-limited), and the next input is handled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
from prometheus_client import CollectorRegistry

from services.registry.config import RegistryConfig
from services.registry.service import RegistryService
from shared.bus import Publisher, Pusher
from shared.clock import RealClock
from shared.config import CommonConfig
from shared.messages import DetectorEvent, Price
from shared.metrics import StatsCollector
from shared.runner import ServiceContext
from tests.helpers import tcp_endpoint


@asynccontextmanager
async def service() -> AsyncIterator[RegistryService]:
    config = msgspec.convert(
        {
            "pub": tcp_endpoint(),
            "pull": tcp_endpoint(),
            "snapshot": tcp_endpoint(),
            "prices": [tcp_endpoint()],
            "store": "",
            "pools": {"H1": {"ttl": "2h"}},
        },
        RegistryConfig,
    )
    ctx = ServiceContext(
        name="registry",
        common=CommonConfig(),
        config=config,
        clock=RealClock(),
        metrics=CollectorRegistry(),
        bus_stats=StatsCollector(),
    )
    svc = RegistryService(ctx)
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
        svc.puller.close()
        svc.sub.close()
        await svc.pub.close()
        await svc.snapshots.close()


async def until(check: Any, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


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

        monkeypatch.setattr(svc.registry, "create", fragile)
        pusher = Pusher(svc.ctx.config.pull, sender="test")
        try:
            with caplog.at_level(logging.WARNING, "poolwire.registry"):
                for symbol in ["pm.boom"] * 30 + ["pm.ok"]:
                    await pusher.send(event(symbol))
                await until(lambda: any(z.symbol == "pm.ok" for z in svc.registry.active()))
        finally:
            pusher.close()
        assert svc.bad_events["internal"] == 30
        tracebacks = [r.getMessage() for r in caplog.records if "raised; skipped" in r.getMessage()]
        assert 1 <= len(tracebacks) <= 10  # rate-limited: a burst, not 30
        assert "RuntimeError: a bug" in tracebacks[0] and "Traceback" in tracebacks[0]


async def test_an_exception_in_one_price_is_counted_and_the_next_is_handled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with service() as svc:
        on_price = svc.registry.on_price

        def fragile(symbol: str, *args: Any) -> None:
            if symbol == "pm.boom":
                raise RuntimeError("a bug")
            on_price(symbol, *args)

        monkeypatch.setattr(svc.registry, "on_price", fragile)
        async with Publisher(svc.ctx.config.prices[0], service="ingest") as pub:
            await pub.wait_for_subscriber("px.", timeout=10)
            pub.publish("px.pm.boom", Price(symbol="pm.boom", price=1.0))
            pub.publish("px.pm.ok", Price(symbol="pm.ok", price=1.0))
            pub.publish("px.pm.late", Price(symbol="pm.late", price=1.0, event_ns=2**64 - 1))
            await until(lambda: svc.registry.last_price("pm.late") == 1.0)
        assert svc.prices_refused == {"internal": 1, "bad_time": 1}
        assert svc.registry.last_price("pm.ok") == 1.0
