"""The registry service in-process for tests: built with fresh endpoints on a given clock, and its
sockets closed after."""

from __future__ import annotations

from typing import Any

import msgspec
from prometheus_client import CollectorRegistry

from services.registry.config import RegistryConfig
from services.registry.service import RegistryService
from shared.clock import Clock, RealClock
from shared.config import CommonConfig
from shared.metrics import StatsCollector
from shared.runner import ServiceContext
from tests.ports import tcp_endpoint


def registry_service(clock: Clock | None = None, **config: Any) -> RegistryService:
    """A service, not started: fresh endpoints, zones in memory, H1 zones of 2 h, and ``config``'s
    keys of the ``registry:`` section over those."""
    base: dict[str, Any] = {
        "pub": tcp_endpoint(),
        "pull": tcp_endpoint(),
        "snapshot": tcp_endpoint(),
        "prices": [tcp_endpoint()],
        "store": "",
        "pools": {"H1": {"ttl": "2h"}},
    }
    ctx = ServiceContext(
        name="registry",
        common=CommonConfig(),
        config=msgspec.convert({**base, **config}, RegistryConfig),
        clock=clock or RealClock(),
        metrics=CollectorRegistry(),
        bus_stats=StatsCollector(),
    )
    return RegistryService(ctx)


async def close_sockets(svc: RegistryService) -> None:
    svc.sub.close()
    svc.puller.close()
    await svc.pub.close()
    await svc.snapshots.close()
