"""detectors.max_symbols through the service: the candles of the symbol ticked least recently are
dropped from memory and from the store."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry

from services.registry.config import RegistryConfig
from services.registry.service import RegistryService
from shared.clock import RealClock
from shared.config import CommonConfig
from shared.messages import Message, Price
from shared.metrics import StatsCollector
from shared.runner import ServiceContext
from tests.ports import tcp_endpoint


def stored_symbols(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {row[0] for row in db.execute("SELECT symbol FROM detector_state")}


async def test_an_evicted_symbols_stored_candles_are_deleted(tmp_path: Path) -> None:
    config = msgspec.convert(
        {
            "pub": tcp_endpoint(),
            "pull": tcp_endpoint(),
            "snapshot": tcp_endpoint(),
            "prices": [tcp_endpoint()],
            "pools": {"M1": {"ttl": "1h"}, "M5": {"ttl": "1h"}},
            "detectors": {"max_symbols": 2},
        },
        RegistryConfig,
    )
    ctx = ServiceContext(
        name="registry",
        common=CommonConfig(data_dir=str(tmp_path)),
        config=config,
        clock=RealClock(),
        metrics=CollectorRegistry(),
        bus_stats=StatsCollector(),
    )
    svc = RegistryService(ctx)
    await svc.bind()
    store, outbox, detectors = svc.store, svc.outbox, svc.detectors
    assert store is not None and outbox is not None and detectors is not None
    try:

        def tick(*symbols: str) -> None:
            batch: list[tuple[str, Message]] = [(f"px.{s}", Price(symbol=s, price=1.0)) for s in symbols]
            assert svc.prices(batch, 0) == len(batch)
            svc.flush_store(detector_symbols=None)
            outbox.settle_now()

        tick("pm.a", "pm.b")
        assert stored_symbols(store.path) == {"pm.a", "pm.b"}
        tick("pm.c")  # a is the least recently ticked
        assert stored_symbols(store.path) == {"pm.b", "pm.c"}
        assert detectors.stats.evicted_symbols == 1
        tick("pm.a")  # back, with fresh candles; b goes
        assert stored_symbols(store.path) == {"pm.a", "pm.c"}
    finally:
        outbox.close()
        store.close()
        svc.sub.close()
        svc.puller.close()
        await svc.pub.close()
        await svc.snapshots.close()
