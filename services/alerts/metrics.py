"""Prometheus view of the alerts service: the cores' plain counters, read at scrape time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from services.alerts.orderflow import COMPUTE_BUCKETS_NS, CacheStats
from services.alerts.strategies import REFUSAL_REASONS
from services.alerts.supervisor import WorkerPool

if TYPE_CHECKING:
    from services.alerts.core import Alerts

NS = 1_000_000_000
UNIVERSE_BUCKETS = (10.0, 100.0, 1000.0, float("inf"))
RESULT_REFUSALS = ("unknown_job", "strategy_mismatch", "alert_strategy", "not_a_result")
LOOP_TASKS = ("inputs", "ticker", "results", "cleanup", "summary")
JOB_STATUSES = ("submitted", "sent", "done", "retried", "failed", "timeouts", "errors", "late", "recovered")


def flow_compute_histogram(name: str, cs: CacheStats) -> Metric:
    """Order-flow computation latency: the cache's per-bucket counts, made cumulative."""
    buckets = []
    cumulative = 0
    for bound_ns, n in zip((*COMPUTE_BUCKETS_NS, None), cs.compute_counts, strict=True):
        cumulative += n
        buckets.append(("+Inf" if bound_ns is None else str(bound_ns / NS), cumulative))
    h = HistogramMetricFamily(name, "Order-flow metrics computations (cache misses), seconds each")
    h.add_metric([], buckets, cs.compute_ns_total / NS)
    return h


class AlertsCollector(Collector):
    """Reads the cores' plain counters at scrape time."""

    def __init__(self, alerts: Alerts, pool: WorkerPool | None) -> None:
        self.a = alerts
        self.pool = pool

    def collect(self) -> Iterable[Metric]:
        a = self.a
        st = a.throttle.stats
        ds = a.dispatcher.stats
        p = "poolwire_alerts"

        def counter(name: str, doc: str, value: float) -> Metric:
            c = CounterMetricFamily(f"{p}_{name}", doc)
            c.add_metric([], value)
            return c

        def by_label(
            name: str, doc: str, label: str, keys: Iterable[str], counts: Mapping[str, int]
        ) -> Metric:
            c = CounterMetricFamily(f"{p}_{name}", doc, labels=[label])
            for key in keys:  # every key, at 0 before its first count
                c.add_metric([key], counts[key])
            return c

        yield counter("strategy_runs", "Strategy jobs dispatched (their universe moved)", st.runs)
        es = a.events.stats
        yield counter(
            "event_evaluations", "Messages checked against event-triggered strategies", es.evaluations
        )
        yield counter("event_signals", "Event-triggered strategies that fired (before frequency)", es.signals)
        skipped = CounterMetricFamily(
            f"{p}_strategy_skips", "Strategy evaluations skipped", labels=["reason"]
        )
        skipped.add_metric(["no_update"], st.skipped_no_update)
        skipped.add_metric(["bucket_duplicate"], st.skipped_duplicate)
        yield skipped
        yield counter(
            "ticker_updates", "Ticker updates noted (prices, trades, swaps, zones)", st.ticker_updates
        )
        yield counter("large_intersections", "Large-universe intersections", st.large_intersections)
        yield counter("universe_discoveries", "Universes replaced by a result's used_symbols", st.discoveries)
        yield counter("cleanups", "Ticker-update cleanup runs", st.cleanups)
        yield counter("cleaned_ticker_updates", "Ticker updates removed by cleanups", st.cleaned)
        tracked = GaugeMetricFamily(f"{p}_tracked_tickers", "Tickers with a recorded update")
        tracked.add_metric([], a.store.ticker_count())
        yield tracked
        sizes = sorted(a.universe_sizes.values())
        buckets = []
        for le in UNIVERSE_BUCKETS:
            buckets.append(("+Inf" if le == float("inf") else str(le), sum(1 for n in sizes if n <= le)))
        h = HistogramMetricFamily(f"{p}_universe_size_tickers", "Strategy universe sizes")
        h.add_metric([], buckets, float(sum(sizes)))
        yield h
        jobs = CounterMetricFamily(f"{p}_jobs", "Strategy jobs by outcome", labels=["status"])
        for name in JOB_STATUSES:
            jobs.add_metric([name], getattr(ds, name))
        yield jobs
        pending = GaugeMetricFamily(
            f"{p}_jobs_pending", "Jobs persisted and not finished (on Redis: of every instance)"
        )
        pending.add_metric([], a.store.pending_jobs())
        yield pending
        wf = CounterMetricFamily(f"{p}_worker_failures", "Worker failures", labels=["kind"])
        wf.add_metric(["job_timeout"], ds.timeouts)
        wf.add_metric(["job_error"], ds.errors)
        wf.add_metric(["process_exit"], self.pool.exits if self.pool else 0)
        yield wf
        inflight = GaugeMetricFamily(f"{p}_jobs_in_flight", "Jobs pushed and not answered")
        inflight.add_metric([], len(a.dispatcher.in_flight))
        yield inflight
        queued = GaugeMetricFamily(f"{p}_jobs_queued", "Jobs waiting for room in flight")
        queued.add_metric([], len(a.dispatcher.queue))
        yield queued
        al = CounterMetricFamily(f"{p}_alerts", "Alerts from results", labels=["outcome"])
        al.add_metric(["published"], a.sink.stats.published)
        al.add_metric(["suppressed"], a.sink.stats.suppressed)
        yield al
        cs = a.flow.cache.stats
        yield counter("flow_cache_hits", "Order-flow metrics cache hits", cs.hits)
        yield counter("flow_cache_misses", "Order-flow metrics cache misses", cs.misses)
        ratio = GaugeMetricFamily(f"{p}_flow_cache_hit_ratio", "Order-flow cache hits / lookups")
        ratio.add_metric([], cs.hit_rate)
        yield ratio
        yield flow_compute_histogram(f"{p}_flow_compute_seconds", cs)
        engines = GaugeMetricFamily(f"{p}_flow_symbols", "Symbols with an order-flow engine")
        engines.add_metric([], len(a.flow.engines))
        yield engines
        yield counter(
            "skipped_messages", "Input messages skipped (unreadable or unexpected)", a.skipped_messages
        )
        late = CounterMetricFamily(
            f"{p}_late_inputs",
            "Prices and zone events for a bucket already evaluated (later than the allowed lateness): "
            "kept out of every bar",
            labels=["bucket"],
        )
        for size, n in a.bars.late.items():
            late.add_metric([f"{size / 1e9:g}s"], n)
        yield late
        yield counter(
            "zone_events_dropped",
            "Zone events over alerts.max_zone_events for their ticker's open bar: kept out of it",
            a.bars.zones_dropped,
        )
        yield by_label(
            "results_refused",
            "Messages on the results socket refused: a result for no job in flight here (unknown_job), "
            "of another strategy than its job's (strategy_mismatch), an alert of another strategy in a "
            "result (alert_strategy), not a result (not_a_result)",
            "reason",
            RESULT_REFUSALS,
            a.dispatcher.refused,
        )
        yield by_label(
            "worker_refusals",
            "Jobs the workers refused to run, as their results report",
            "reason",
            REFUSAL_REASONS,
            a.worker_refusals,
        )
        yield by_label(
            "loop_errors",
            "Errors the service's loops survived (store outages), retried",
            "task",
            LOOP_TASKS,
            a.loop_errors,
        )
        yield counter(
            "store_write_failures",
            "Store writes that failed, kept and retried (SQLite)",
            a.store.write_failures,
        )
        kept = GaugeMetricFamily(f"{p}_store_pending_writes", "Statements of failed writes not written yet")
        kept.add_metric([], a.store.pending_writes())
        yield kept
        held = GaugeMetricFamily(f"{p}_results_deferred", "Results kept while the store fails")
        held.add_metric([], len(a.deferred))
        yield held
        if self.pool is not None:
            alive = GaugeMetricFamily(f"{p}_workers_alive", "Worker processes running")
            alive.add_metric([], self.pool.alive)
            yield alive
