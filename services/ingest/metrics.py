"""Prometheus export of the ingest counters, read only when scraped (the hot path bumps ints)."""

from __future__ import annotations

import itertools
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString as _untyped_go_float

from services.ingest.pacing import TurnPacer
from services.ingest.shard import Shard

if TYPE_CHECKING:
    from services.ingest.pool import ConnectionPool
    from services.ingest.rest import Resyncer
    from services.ingest.router import Router
    from services.ingest.subscriptions import Subscriptions

P = "poolwire_ingest"
go_float = cast(Callable[[float], str], _untyped_go_float)  # a bound as the exposition writes it
PUBLISH_LATENCY_BUCKETS = (5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 5e-3, 0.025)


class LatencyHistogram:
    """A histogram the hot path fills with a bisect and two adds, exported when scraped
    (prometheus_client's takes a lock per observation: ~5 % of the process at 50 k frames/s)."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last: above every bound
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # a value on a bound is in its bucket
        self.total += seconds

    def metric(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative = list(itertools.accumulate(self.counts))
        buckets = [(go_float(b), n) for b, n in zip(self.bounds, cumulative, strict=False)]
        buckets.append(("+Inf", cumulative[-1]))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.total)


class IngestCollector(Collector):
    def __init__(
        self,
        pool: ConnectionPool,
        router: Router,
        subscriptions: Subscriptions,
        shard: Shard | None = None,
        resyncer: Resyncer | None = None,
    ) -> None:
        self.resyncer = resyncer
        self.pool = pool
        self.router = router
        self.subscriptions = subscriptions
        self.shard = shard or Shard()
        self.foreign_static = 0  # assets of the static list that belong to other shards
        self.foreign_discovered = 0  # open assets of other shards at the last discovery poll
        self.forced_ignored = 0  # ForceSubscribe assets left to other shards
        self.discovery_polls = 0
        self.discovery_errors = 0
        self.discovery_cursor_stuck = 0
        self.force_requests = 0
        self.force_refused: dict[str, int] = {}  # ForceSubscribe ids refused, by reason
        self.pull_ignored: dict[str, int] = {}  # messages on PULL that are not commands, by type
        self.snapshot_bad_requests: Callable[[], int] = lambda: 0
        self.burst_flushes: Callable[[], int] = lambda: 0
        self.pacer: TurnPacer | None = None
        self.publish_latency = LatencyHistogram(PUBLISH_LATENCY_BUCKETS)

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            f"{P}_shard_info", "This instance's shard (index of count)", labels=["index", "count"]
        )
        info.add_metric([str(self.shard.index), str(self.shard.count)], 1)
        yield info
        stats = self.pool.connection_report()
        conns = GaugeMetricFamily(f"{P}_connections", "WebSocket connections by state", labels=["state"])
        live = sum(1 for s in stats if s["is_live"])
        draining = sum(1 for s in stats if s["is_draining"])
        conns.add_metric(["live"], live)
        conns.add_metric(["down"], len(stats) - live)
        conns.add_metric(["draining"], draining)
        yield conns
        per = GaugeMetricFamily(
            f"{P}_connection_assets", "Subscriptions held per connection", labels=["connection"]
        )
        pol = GaugeMetricFamily(
            f"{P}_pollution_ratio", "Expired / total subscriptions per connection", labels=["connection"]
        )
        for s in stats:
            per.add_metric([s["connection_id"]], s["assets"])
            pol.add_metric([s["connection_id"]], s["pollution"])
        yield per
        yield pol
        yield GaugeMetricFamily(
            f"{P}_capacity_assets", "Total capacity of live connections", value=self.pool.capacity()
        )
        states = GaugeMetricFamily(f"{P}_assets", "Assets known, by state", labels=["state"])
        for state, n in self.subscriptions.counts().items():
            states.add_metric([state], n)
        yield states

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"{P}_{name}", doc, value=value)

        conn_totals = {
            k: sum(s[k] for s in stats) for k in ("reconnects", "silence_resets", "pings", "pongs", "errors")
        }
        r = self.router.stats
        msgs = CounterMetricFamily(
            f"{P}_messages", "WebSocket events received, by event_type", labels=["type"]
        )
        for kind, n in r.by_type.items():
            msgs.add_metric([kind], n)
        yield msgs
        yield counter("frames", "WebSocket frames routed", r.frames)
        yield counter("decode_errors", "Frames or items that did not decode (skipped)", r.decode_errors)
        yield counter("unknown_events", "Events of an unknown event_type (skipped)", r.unknown_events)
        yield counter("unknown_assets", "Events for assets not followed (skipped)", r.unknown_assets)
        yield counter(
            "bad_values", "Events skipped for a bad value (NaN, inf, negative, bad time)", r.bad_values
        )
        yield counter(
            "internal_errors", "Frames whose routing raised (a bug; counted, skipped)", r.internal_errors
        )
        yield counter(
            "legacy_events", "Events in the older flat price_change schema (skipped)", r.legacy_events
        )
        yield counter("text_frames", "Non-JSON server notices (NO NEW ASSETS ...)", r.text_frames)
        h = self.router.hashes.stats
        yield counter("hash_checks", "Book hashes computed (each variant tried counts)", h.checks)
        yield counter(
            "hash_mismatches", "Changes whose hash the pinned rule does not reproduce", h.mismatches
        )
        yield counter("hash_book_mismatches", "Books not reproduced by their pinned rule", h.book_mismatches)
        yield counter("hash_unverifiable", "Books no known hash rule reproduces", h.unverifiable)
        yield counter(
            "hash_unverified_changes",
            "Changes left unchecked: their asset's rule is unknown",
            h.unverified_changes,
        )
        yield counter("hash_pins", "Books that pinned a hash rule on their asset", h.pins)
        yield counter("resyncs", "Book resyncs requested", h.resyncs)
        yield counter(
            "resyncs_suppressed", "Resyncs not asked: one already this interval", h.resyncs_suppressed
        )
        yield from self._resync_metrics()
        yield self.publish_latency.metric(
            f"{P}_publish_latency_seconds", "From a frame's arrival to its messages queued for publishing"
        )
        yield counter("handoff_duplicates", "Recycling duplicates dropped", r.handoff_duplicates)
        yield counter(
            "not_owner_drops", "Events from a connection that does not own the asset", r.not_owner_drops
        )
        yield counter("published", "Messages published", r.published)
        yield counter("reconnects", "Reconnects (live connections)", conn_totals["reconnects"])
        yield counter(
            "silence_resets",
            "Reconnects after data silence (live connections)",
            conn_totals["silence_resets"],
        )
        yield counter("pings", "PINGs sent (live connections)", conn_totals["pings"])
        yield counter("pongs", "PONGs received (live connections)", conn_totals["pongs"])
        p = self.pool.stats
        yield counter("recycles", "Connections recycled", p.recycles)
        yield counter("recycle_failures", "Recycles abandoned (replacement silent)", p.recycle_failures)
        yield counter("connections_opened", "Connections opened", p.opened)
        yield counter("dynamic_subscribes", "Assets placed on spare capacity", p.dynamic_subscribes)
        yield counter("forced_assets", "Assets requested with force_subscribe", p.forced)
        yield counter(
            "forced_ignored_assets", "ForceSubscribe assets left to other shards", self.forced_ignored
        )
        refused = CounterMetricFamily(
            f"{P}_force_refused", "ForceSubscribe ids refused, by reason", labels=["reason"]
        )
        for reason, n in self.force_refused.items():
            refused.add_metric([reason], n)
        yield refused
        ignored = CounterMetricFamily(
            f"{P}_pull_ignored", "Messages on PULL that are not ingest commands, by type", labels=["type"]
        )
        for kind, n in self.pull_ignored.items():
            ignored.add_metric([kind], n)
        yield ignored
        yield counter(
            "snapshot_bad_requests", "Malformed snapshot requests skipped", self.snapshot_bad_requests()
        )
        yield counter(
            "burst_flushes",
            "Flushes inside a burst (0.5 ms of frames in one loop turn)",
            self.burst_flushes(),
        )
        pacer = self.pacer
        yield counter(
            "loop_naps", "Sleeps of the event loop under load (loop_pace)", pacer.naps if pacer else 0
        )
        yield counter(
            "loop_nap_seconds",
            "Time the event loop slept under load (loop_pace)",
            pacer.napped_s if pacer else 0.0,
        )
        yield GaugeMetricFamily(
            f"{P}_foreign_assets",
            "Assets of other shards (static list + open at the last discovery poll)",
            value=self.foreign_static + self.foreign_discovered,
        )
        yield counter("discovery_polls", "Gamma discovery polls", self.discovery_polls)
        yield counter("discovery_errors", "Gamma discovery polls that failed", self.discovery_errors)
        yield counter(
            "discovery_cursor_stuck", "Gamma polls stopped by a repeating cursor", self.discovery_cursor_stuck
        )

    def _resync_metrics(self) -> Iterable[Metric]:
        resyncer = self.resyncer
        if resyncer is None:
            return
        paths = CounterMetricFamily(
            f"{P}_resync", "Resyncs done, by path (a REST book, or resubscribing)", labels=["path"]
        )
        for path, n in resyncer.paths.items():
            paths.add_metric([path], n)
        yield paths
        yield CounterMetricFamily(
            f"{P}_resync_failed", "Resyncs neither path could do (the socket was down)", value=resyncer.failed
        )
        rest = resyncer.rest
        if rest is None:
            return
        yield CounterMetricFamily(f"{P}_rest_requests", "REST book requests sent", value=rest.stats.requests)
        yield CounterMetricFamily(f"{P}_rest_books", "Good REST books received", value=rest.stats.books)
        failures = CounterMetricFamily(
            f"{P}_rest_failures",
            "REST book fetches that failed (http, timeout, connection, bad_body) or were not sent "
            "(backoff, busy), by reason",
            labels=["reason"],
        )
        for reason, n in rest.stats.failures.items():
            failures.add_metric([reason], n)
        yield failures
