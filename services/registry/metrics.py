"""Prometheus view of the registry: read from the core's plain counters when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.registry.detectors import Detectors
from services.registry.registry import Registry
from services.registry.stats import LAG_BOUNDS_NS
from services.registry.store import ZoneStore
from services.registry.validate import EVENT_REASONS, PRICE_REASONS

P = "poolwire_registry"


def service_histograms(metrics: CollectorRegistry) -> tuple[Histogram, Histogram]:
    """The service's own timings: processing per stage, and a price's publish to its events out."""
    processing = Histogram(
        f"{P}_processing_seconds",
        "Time to process one batch of input (prices, detector events, an expiry pass)",
        ["stage"],
        registry=metrics,
        buckets=(1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0),
    )
    event_latency = Histogram(
        f"{P}_price_to_event_seconds",
        "From a price's publish time to the zone events it caused leaving (same host clocks)",
        registry=metrics,
        buckets=(1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.05, 0.1, 0.5, 1.0),
    )
    return processing, event_latency


class RegistryCollector(Collector):
    def __init__(
        self,
        registry: Registry,
        detectors: Detectors | None,
        store: ZoneStore | None,
        extra: Callable[[], dict[str, int]] | None = None,
        *,
        prices_refused: Callable[[], dict[str, int]] | None = None,
        snapshot_bad_requests: Callable[[], int] | None = None,
    ) -> None:
        """``extra``: the service's refusals of detector events by reason, added to the core's;
        ``prices_refused``: prices the detectors could not take, by reason."""
        self.registry = registry
        self.detectors = detectors
        self.store = store
        self.extra = extra
        self.prices_refused = prices_refused
        self.snapshot_bad_requests = snapshot_bad_requests

    def collect(self) -> Iterable[Metric]:
        reg = self.registry
        st = reg.stats
        by_tf = dict(st.by_tf)
        created = CounterMetricFamily(f"{P}_zones_created", "Zones created", labels=["timeframe"])
        touched = CounterMetricFamily(
            f"{P}_zones_touched", "Zone touches (price entered)", labels=["timeframe"]
        )
        expired = CounterMetricFamily(
            f"{P}_zones_expired", "Zones that left the active set", labels=["timeframe", "reason"]
        )
        removed = CounterMetricFamily(f"{P}_zones_removed", "Zones removed after grace", labels=["timeframe"])
        for tf, s in by_tf.items():
            created.add_metric([tf], s.created)
            touched.add_metric([tf], s.touched)
            expired.add_metric([tf, "ttl"], s.expired_ttl)
            expired.add_metric([tf, "filled"], s.expired_filled)
            expired.add_metric([tf, "evicted"], s.expired_evicted)
            removed.add_metric([tf], s.removed)
        yield from (created, touched, expired, removed)

        zones = GaugeMetricFamily(
            f"{P}_zones",
            "Zones held now, by state: active, touched, grace (expired, kept for the grace period)",
            labels=["timeframe", "state"],
        )
        held = GaugeMetricFamily(f"{P}_zones_held", "Zones held now, every state", labels=["timeframe"])
        # Counted by the core as zones change: a scrape (on the HTTP server's thread) never walks
        # the zone dicts the event loop is changing.
        for tf, s in by_tf.items():
            zones.add_metric([tf, "active"], s.active - s.touched_now)
            zones.add_metric([tf, "touched"], s.touched_now)
            zones.add_metric([tf, "grace"], s.grace)
            held.add_metric([tf], s.active + s.grace)
        yield zones
        yield held
        yield GaugeMetricFamily(f"{P}_size", "len(registry): every zone held, grace included", value=len(reg))

        rejected = CounterMetricFamily(
            f"{P}_detector_events_rejected",
            "Detector events (and detections) refused, by reason; weak ones are not created",
            labels=["reason"],
        )
        reasons = dict.fromkeys(EVENT_REASONS, 0)
        # dict() copies in one C call; iterating the live dicts fails when the loop adds a reason.
        for by_reason in (dict(st.rejected), dict(self.extra()) if self.extra is not None else {}):
            for reason, n in by_reason.items():
                reasons[reason] = reasons.get(reason, 0) + n
        for reason, n in reasons.items():
            rejected.add_metric([reason], n)
        yield rejected
        if self.prices_refused is not None:
            refused = CounterMetricFamily(
                f"{P}_prices_refused",
                "Prices skipped before the detectors and zones saw them, by reason",
                labels=["reason"],
            )
            for reason, n in {**dict.fromkeys(PRICE_REASONS, 0), **dict(self.prices_refused())}.items():
                refused.add_metric([reason], n)
            yield refused
        if self.snapshot_bad_requests is not None:
            yield CounterMetricFamily(
                f"{P}_snapshot_bad_requests",
                "Malformed snapshot requests skipped (garbage, wrong frame count, wrong type)",
                value=self.snapshot_bad_requests(),
            )
        yield CounterMetricFamily(
            f"{P}_duplicates", "Repeated detections of a known zone", value=st.duplicates
        )
        yield CounterMetricFamily(
            f"{P}_expiry_errors",
            "Zones whose expiry or removal raised (a bug): skipped, the other zones expired",
            value=st.expiry_errors,
        )
        yield CounterMetricFamily(f"{P}_prices", "Price updates applied", value=st.prices)
        yield CounterMetricFamily(f"{P}_bad_prices", "Non-finite prices skipped", value=st.bad_prices)
        counts = list(st.lag_counts)  # one C call: the loop may bump it meanwhile
        buckets: list[tuple[str, float]] = []
        cumulative = 0
        for bound, n in zip(LAG_BOUNDS_NS, counts, strict=False):
            cumulative += n
            buckets.append((repr(bound / 1e9), cumulative))
        buckets.append(("+Inf", cumulative + counts[-1]))
        yield HistogramMetricFamily(
            f"{P}_wheel_lag_seconds",
            "How late each timer (a zone's TTL or grace end) was handled after its deadline",
            buckets=buckets,
            sum_value=st.lag_sum_ns / 1e9,
        )
        yield GaugeMetricFamily(
            f"{P}_wheel_lag_max_seconds", "The largest wheel lag seen", value=st.max_lag_ns / 1e9
        )
        if self.detectors is not None:
            ds = self.detectors.stats
            candles = CounterMetricFamily(f"{P}_candles", "Candles closed", labels=["timeframe"])
            for tf, n in dict(ds.candles).items():
                candles.add_metric([tf], n)
            yield candles
            det = CounterMetricFamily(f"{P}_detections", "Zones detected from prices", labels=["kind"])
            for kind, n in dict(ds.detections).items():
                det.add_metric([kind], n)
            yield det
            yield CounterMetricFamily(
                f"{P}_late_ticks", "Ticks for a closed candle, dropped", value=ds.late_ticks
            )
            yield GaugeMetricFamily(
                f"{P}_detector_symbols", "Symbols whose candles are kept", value=self.detectors.symbols
            )
            yield CounterMetricFamily(
                f"{P}_detector_symbols_evicted",
                "Symbols whose candles were dropped for detectors.max_symbols (least recently ticked)",
                value=ds.evicted_symbols,
            )
        if self.store is not None:
            yield CounterMetricFamily(
                f"{P}_store_rows_written", "Rows written to the store", value=self.store.writes
            )
            yield GaugeMetricFamily(f"{P}_store_pending", "Changes not yet written", value=self.store.pending)
            yield CounterMetricFamily(
                f"{P}_store_write_failures",
                "Store writes that failed (disk full, locked): their changes are kept and retried",
                value=self.store.failures,
            )
            yield GaugeMetricFamily(
                f"{P}_store_failing", "1 while the last store write failed", value=int(self.store.failing)
            )
            corrupt = CounterMetricFamily(
                f"{P}_store_corrupt_rows", "Stored rows that did not decode, skipped", labels=["table"]
            )
            corrupt.add_metric(["zones"], self.store.corrupt)
            corrupt.add_metric(["detector_state"], self.store.corrupt_states)
            yield corrupt
