"""Prometheus export of StartupMetrics, EventProcessorStats and the ExEx client's counters."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from services.sync.coordinator import StartupCoordinator
from services.sync.follower import LogFollower
from services.sync.journal import EventProcessor
from services.sync.scraper import ScrapeProgress

P = "poolwire_sync"


def lag_metrics(proc: EventProcessor, follower: LogFollower | None, now: float) -> Iterable[Metric]:
    """Always exported (NaN until known), so that dashboards find the families from the start."""
    stamp = proc.head_timestamp if proc.head is not None else 0
    yield GaugeMetricFamily(
        f"{P}_lag_seconds",
        "Now minus the block time of the last applied block (NaN before the first block)",
        value=now - stamp if stamp else math.nan,
    )
    if follower is not None:
        tip = follower.tip
        yield GaugeMetricFamily(
            f"{P}_lag_blocks",
            "The node's latest block minus the last applied block (JSON-RPC source)",
            value=max(0, tip.number - proc.head[0]) if tip is not None and proc.head else math.nan,
        )


class SyncCollector(Collector):
    def __init__(self, coordinator: Callable[[], StartupCoordinator], service: Any = None) -> None:
        self._coordinator = coordinator
        self._service = service  # SyncService: JSON-RPC, follower, scraper and checkpoint figures

    def _now(self) -> float:
        svc = self._service
        return svc.clock.time_ns() / 1e9 if svc is not None else time.time()

    def _rpc(self) -> Iterable[Metric]:
        svc = self._service
        if svc is None:
            return
        if svc.rpc is not None:
            rpc = CounterMetricFamily(f"{P}_rpc_events", "JSON-RPC client events", labels=["event"])
            for name in (
                "requests",
                "calls",
                "retries",
                "timeouts",
                "transport_errors",
                "garbage",
                "rpc_errors",
                "failures",
            ):
                rpc.add_metric([name], getattr(svc.rpc.stats, name))
            yield rpc
        if svc.follower is not None:
            fol = CounterMetricFamily(f"{P}_follower_events", "Log follower events", labels=["event"])
            fs = svc.follower.fstats
            for name in (
                "blocks",
                "logs",
                "reorgs",
                "blocks_reverted",
                "rpc_failures",
                "bad_logs",
                "chain_breaks",
                "range_splits",
            ):
                fol.add_metric([name], getattr(fs, name))
            yield fol
            yield GaugeMetricFamily(
                f"{P}_deepest_reorg_blocks", "Deepest reorg followed", value=fs.deepest_reorg
            )
        if svc.rpc_scraper is not None:
            ss = svc.rpc_scraper.stats
            sc = CounterMetricFamily(f"{P}_scrape_events", "JSON-RPC scraper", labels=["event"])
            for name in (
                "pools_done",
                "pools_failed",
                "pools_retried",
                "calls",
                "call_retries",
                "round_trips",
                "ticks",
            ):
                sc.add_metric([name], getattr(ss, name))
            yield sc
        yield CounterMetricFamily(
            f"{P}_checkpoints_written", "Checkpoints written", value=svc.checkpoints.written
        )
        yield CounterMetricFamily(
            f"{P}_checkpoint_failures",
            "Checkpoints not written (disk full, unwritable directory, state that did not encode)",
            value=svc.checkpoints.failures,
        )
        wl = svc.whitelist
        refused = CounterMetricFamily(
            f"{P}_whitelist_refused", "WhitelistAdd pools refused, by reason", labels=["reason"]
        )
        for reason, count in wl.refused.items():
            refused.add_metric([reason], count)
        yield refused
        yield CounterMetricFamily(
            f"{P}_whitelist_accepted", "WhitelistAdd pools that passed the checks", value=wl.accepted
        )
        yield CounterMetricFamily(
            f"{P}_whitelist_missing_dropped",
            "Whitelisted pools not on chain beyond sync.whitelist_max_missing: forgotten",
            value=wl.missing_dropped,
        )
        yield GaugeMetricFamily(
            f"{P}_whitelist_missing",
            "Whitelisted pools not on chain, kept and retried",
            value=len(svc.whitelisted_missing()),
        )
        ignored = CounterMetricFamily(
            f"{P}_pull_ignored", "Messages on PULL that are not a WhitelistAdd, by type", labels=["type"]
        )
        for name, count in sorted(wl.ignored.items()):
            ignored.add_metric([name], count)
        yield ignored
        yield CounterMetricFamily(
            f"{P}_swaps_unpublished",
            "Swap events with impossible amounts or price: no dex.swap published",
            value=svc.announce.swaps_unpublished,
        )
        yield CounterMetricFamily(
            f"{P}_block_errors",
            "Blocks whose processing failed unexpectedly (each resyncs)",
            value=svc.block_errors,
        )
        yield CounterMetricFamily(
            f"{P}_snapshot_bad_requests", "Malformed snapshot requests skipped", value=svc.snap.bad_requests
        )
        failures = CounterMetricFamily(
            f"{P}_startup_failures",
            "Cold starts and checkpoint resumes that failed (the node down, bad replies) and were retried",
            labels=["phase"],
        )
        for phase, count in svc.retry.failures.items():
            failures.add_metric([phase], count)
        yield failures
        yield CounterMetricFamily(
            f"{P}_pools_retried", "Scrapes of failed pools tried again while live", value=svc.pools_retried
        )
        if svc.coord.live:
            yield GaugeMetricFamily(
                f"{P}_pools_missing",
                "Configured pools not installed (scrape failed)",
                value=len(svc.missing_pools()),
            )

    def collect(self) -> Iterable[Metric]:
        coord = self._coordinator()
        s = coord.processor.stats
        events = CounterMetricFamily(
            f"{P}_events_processed", "Pool events applied", labels=["protocol", "kind"]
        )
        for proto, kind, value in (
            ("v2", "Sync", s.v2_syncs_processed),
            ("v2", "Swap", s.v2_swaps_processed),
            ("v2", "Mint", s.v2_mints_processed),
            ("v2", "Burn", s.v2_burns_processed),
            ("v3", "Swap", s.v3_swaps_processed),
            ("v3", "Mint", s.v3_mints_processed),
            ("v3", "Burn", s.v3_burns_processed),
            ("v3", "Initialize", s.v3_initializes_processed),
            ("v4", "Swap", s.v4_swaps_processed),
            ("v4", "ModifyLiquidity", s.v4_modify_liquidity_processed),
            ("v4", "Initialize", s.v4_initializes_processed),
        ):
            events.add_metric([proto, kind], value)
        yield events
        skipped = CounterMetricFamily(f"{P}_events_skipped", "Pool events skipped", labels=["reason"])
        for reason, value in (
            ("pool_not_found", s.pool_not_found),
            ("invalid", s.invalid_events),
            ("overflow", s.overflows),
            ("before_snapshot_or_stale", s.stale_skipped),
        ):
            skipped.add_metric([reason], value)
        yield skipped
        blocks = CounterMetricFamily(f"{P}_blocks", "Blocks applied or unwound", labels=["status"])
        blocks.add_metric(["committed"], s.blocks_committed)
        blocks.add_metric(["reverted"], s.reverts_processed)
        yield blocks
        yield CounterMetricFamily(f"{P}_reorgs", "Parent-hash mismatches that unwound state", value=s.reorgs)
        yield GaugeMetricFamily(f"{P}_pools", "Pools followed", value=len(coord.processor.pools))
        head = coord.processor.head
        yield GaugeMetricFamily(f"{P}_head_block", "Last applied block", value=head[0] if head else 0)
        c = coord.client.stats
        exex = CounterMetricFamily(f"{P}_exex_events", "ExEx socket client events", labels=["event"])
        for name in (
            "connects",
            "connect_failures",
            "disconnects",
            "corrupt_frames",
            "sequence_gaps",
            "buffer_overflows",
            "resyncs_requested",
            "blocks_received",
            "reverts_received",
        ):
            exex.add_metric([name], getattr(c, name))
        exex.add_metric(["mismatched_blocks"], coord.client.assembler.stats.mismatched_blocks)
        yield exex
        yield GaugeMetricFamily(
            f"{P}_buffered_events", "Events in the ExEx buffer", value=len(coord.client.buffer)
        )
        yield GaugeMetricFamily(
            f"{P}_held_events",
            "Events held for pools being added while live",
            value=coord.processor.held_events,
        )
        m = coord.metrics
        dur = GaugeMetricFamily(
            f"{P}_startup_duration_seconds", "Last cold start, by phase", labels=["phase"]
        )
        for phase, ms in (
            ("v2_scrape", m.v2_scraping_duration_ms),
            ("v3_v4_scrape", m.v3_v4_scraping_duration_ms),
            ("replay", m.replay_duration_ms),
            ("total", m.total_startup_duration_ms),
        ):
            dur.add_metric([phase], ms / 1000)
        yield dur
        scraped = CounterMetricFamily(f"{P}_startup_pools_scraped", "Pools scraped", labels=["protocol"])
        scraped.add_metric(["v2"], m.v2_pools_scraped)
        scraped.add_metric(["v3_v4"], m.v3_v4_pools_scraped)
        yield scraped
        for name, doc, value in (
            ("startup_pools_failed", "Pools skipped after failed scrapes", m.pools_failed),
            ("startup_events_replayed", "Buffered or held events replayed", m.events_replayed),
            ("startup_rescrapes", "Scrapes repeated (buffer did not cover them)", m.rescrapes),
            ("cold_starts", "Cold starts (and full resyncs)", m.cold_starts),
            ("pools_added_live", "Pools added while live", m.pools_added_live),
        ):
            yield CounterMetricFamily(f"{P}_{name}", doc, value=value)
        yield CounterMetricFamily(
            f"{P}_startup_blocks_replayed", "Buffered blocks replayed at cold starts", value=m.blocks_replayed
        )
        yield CounterMetricFamily(
            f"{P}_incremental_adds", "Live pool additions (WhitelistAdd, retries)", value=m.incremental_adds
        )
        yield GaugeMetricFamily(
            f"{P}_startup_events_buffered",
            "Events buffered during the last cold start's scrape",
            value=m.events_buffered,
        )
        yield GaugeMetricFamily(f"{P}_startup_reference_block", "Reference block", value=m.reference_block)
        progress = getattr(coord.scraper, "progress", None)
        if isinstance(progress, ScrapeProgress):
            yield GaugeMetricFamily(
                f"{P}_scrape_pools_done",
                "Pools scraped so far by the current (or last) scrape",
                value=progress.done,
            )
            yield GaugeMetricFamily(
                f"{P}_scrape_pools_total", "Pools in the current (or last) scrape", value=progress.total
            )
        follower = self._service.follower if self._service is not None else None
        yield from lag_metrics(coord.processor, follower, self._now())
        yield from self._rpc()
