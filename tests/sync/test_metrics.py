"""Startup and lag figures through the Prometheus collector; live-add batch sizes from the config."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.sync.buffer import Block
from services.sync.config import SyncConfig
from services.sync.coordinator import StartupCoordinator
from services.sync.metrics import SyncCollector
from services.sync.pool import Pool
from services.sync.scraper import ScrapeProgress, ScrapeResult, pool_key
from services.sync.service import SyncService
from services.sync.source import BlockSource
from shared.clock import RealClock
from shared.config import CommonConfig, ConfigError, convert
from shared.exex import PoolUpdate, encode_payload
from shared.messages import PoolSpec
from shared.metrics import StatsCollector
from shared.runner import ServiceContext
from tests.ports import tcp_endpoint
from tests.sync.test_config import SIMULATED

V2 = PoolSpec(protocol="v2", address="0x" + "11" * 20)
V3 = PoolSpec(protocol="v3", address="0x" + "22" * 20)
NEW_V2 = PoolSpec(protocol="v2", address="0x" + "33" * 20)
NEW_V3 = PoolSpec(protocol="v3", address="0x" + "44" * 20)
SCRAPE_BLOCK = 10
T0 = int(time.time()) - 1000  # block times well in the past: the lag is ~1000 s + 12 s a block


def bhash(n: int) -> bytes:
    return n.to_bytes(32, "big")


def sync_event(n: int, key: bytes, log: int = 0) -> PoolUpdate:
    return PoolUpdate(
        seq=0, block=n, tx=0, log=log, pool=key, protocol="v2", kind="Sync", reserve0=n, reserve1=2 * n
    )


class Source(BlockSource):
    """Blocks handed in by the test (raws filled as the ExEx client and the follower do)."""

    def _on_block(self, block: Block) -> None:
        block.raws = [encode_payload(u) for u in block.updates]
        super()._on_block(block)


class FakeScraper:
    """Pools at SCRAPE_BLOCK; while the first scrape runs, blocks 9..12 arrive on the source."""

    def __init__(self, source: BlockSource) -> None:
        self.source = source
        self.calls: list[tuple[str, int]] = []  # (protocols, batch size)
        self.progress = ScrapeProgress()
        self.block = SCRAPE_BLOCK

    async def scrape(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        self.calls.append(("/".join(sorted({s.protocol for s in specs})), batch_size))
        if len(self.calls) == 1:
            for n in range(SCRAPE_BLOCK - 1, SCRAPE_BLOCK + 3):
                events = [sync_event(n, pool_key(V2), i) for i in range(3)]
                self.source._on_block(Block(n, bhash(n), bhash(n - 1), False, events, [], T0 + 12 * n))
        result = ScrapeResult(self.block, bhash(self.block), timestamp=T0 + 12 * self.block)
        for spec in specs:
            spacing = 0 if spec.protocol == "v2" else 10
            result.pools.append(
                Pool(pool_key(spec), spec.protocol, snapshot_block=self.block, tick_spacing=spacing)
            )
        return result


def samples(collector: SyncCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value for fam in collector.collect() for s in fam.samples
    }


def value(collector: SyncCollector, name: str, **labels: str) -> float:
    return samples(collector)[(name, tuple(sorted(labels.items())))]


async def test_startup_figures_and_lag_are_exported_and_live_adds_use_their_batch_sizes() -> None:
    source = Source(capacity=1000)
    scraper = FakeScraper(source)
    coord = StartupCoordinator(
        source, scraper, v2_batch=500, v3_v4_batch=50, add_v2_batch=7, add_v3_v4_batch=3
    )
    collector = SyncCollector(lambda: coord)
    assert math.isnan(value(collector, "poolwire_sync_lag_seconds"))  # exported before any block
    await coord.cold_start([V2, V3])
    assert scraper.calls == [("v2", 500), ("v3", 50)]
    assert value(collector, "poolwire_sync_startup_events_buffered") == 12  # 4 blocks of 3
    assert value(collector, "poolwire_sync_startup_blocks_replayed_total") == 4
    assert value(collector, "poolwire_sync_startup_events_replayed_total") == 12
    assert coord.processor.head == (SCRAPE_BLOCK + 2, bhash(SCRAPE_BLOCK + 2))
    lag = value(collector, "poolwire_sync_lag_seconds")
    assert time.time() - (T0 + 12 * (SCRAPE_BLOCK + 2)) - 5 < lag <= time.time() - (T0 + 12 * 12)
    assert value(collector, "poolwire_sync_incremental_adds_total") == 0
    assert value(collector, "poolwire_sync_buffered_events") == 0

    scraper.block = SCRAPE_BLOCK + 2  # live: scraped at our head
    added = await coord.add_pools([NEW_V2, NEW_V3])
    assert len(added) == 2
    assert scraper.calls[2:] == [("v2", 7), ("v3", 3)]  # the live batch sizes
    assert value(collector, "poolwire_sync_incremental_adds_total") == 1
    assert value(collector, "poolwire_sync_pools_added_live_total") == 2
    assert value(collector, "poolwire_sync_held_events") == 0
    # a revert brings the lag back to the parent's block time
    coord.processor.revert_block(SCRAPE_BLOCK + 2, bhash(SCRAPE_BLOCK + 2))
    assert coord.processor.head_timestamp == T0 + 12 * (SCRAPE_BLOCK + 1)


def test_live_add_batch_sizes_are_validated_config() -> None:
    cfg = convert({**SIMULATED}, SyncConfig, "sync")
    assert (cfg.v2_add_batch_size, cfg.v3_v4_add_batch_size) == (100, 10)  # the seed's incremental()
    assert (cfg.v2_scrape_batch_size, cfg.v3_v4_scrape_batch_size) == (500, 50)
    assert cfg.pin_by_hash is False
    for key in ("v2_add_batch_size", "v3_v4_add_batch_size"):
        with pytest.raises(ConfigError, match=key):
            convert({**SIMULATED, key: 0}, SyncConfig, "sync")
    with pytest.raises(ConfigError):
        convert({**SIMULATED, "pin_by_hash": "maybe"}, SyncConfig, "sync")


@asynccontextmanager
async def service(**cfg: object) -> AsyncIterator[SyncService]:
    config = msgspec.convert(
        {"pub": tcp_endpoint(), "pull": tcp_endpoint(), "snapshot": tcp_endpoint(), **cfg}, SyncConfig
    )
    ctx = ServiceContext(
        name="sync",
        common=CommonConfig(),
        config=config,
        clock=RealClock(),
        metrics=CollectorRegistry(),
        bus_stats=StatsCollector(),
    )
    svc = SyncService(ctx)
    try:
        yield svc
    finally:
        svc.pull.close()
        await svc.snap.close()
        await svc.pub.close()
        if svc.rpc is not None:
            await svc.rpc.close()


async def test_service_wires_the_config_and_exports_lag_before_the_first_block() -> None:
    async with service(
        rpc_urls=["http://127.0.0.1:9"], v2_add_batch_size=9, v3_v4_add_batch_size=4, pin_by_hash=True
    ) as svc:
        assert (svc.coord.add_v2_batch, svc.coord.add_v3_v4_batch) == (9, 4)
        assert svc.rpc_scraper is not None and svc.rpc_scraper.pin_by_hash
        text = generate_latest(svc.ctx.metrics).decode()
        assert "poolwire_sync_lag_seconds NaN" in text
        assert "poolwire_sync_lag_blocks NaN" in text
        assert "poolwire_sync_scrape_pools_done 0.0" in text
        assert "poolwire_sync_scrape_pools_total 0.0" in text
