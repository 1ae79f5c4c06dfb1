"""The alerts service: the thin async shell around the throttle, order flow, dispatcher and sink.

SUB ``px.`` ``md.trade.`` ``dex.swap.`` ``zone.`` -> ticker updates, bars, order flow, zone events;
at each bucket boundary the throttle says which strategies run; their jobs are PUSHed to the
workers (ventilator) and results PULLed back (sink); alerts that pass frequency control are
PUBlished on ``alert.<strategy>.<symbol>``.

Jobs are persisted with their bucket's claim and forgotten with their result's alert states, so a
job whose result was not handled when the service died (kill -9, or a clean stop with jobs in
flight) is dispatched again at the next start, before any new bucket.
"""

from __future__ import annotations

import asyncio
import gc
import logging

from prometheus_client import Histogram

from services.alerts.config import AlertsConfig
from services.alerts.core import NS, Alerts, input_prefixes, open_store, workers_origin
from services.alerts.metrics import AlertsCollector
from services.alerts.supervisor import WorkerPool
from shared.backoff import sleep_or_wake
from shared.bus import Publisher, Puller, Pusher, Subscriber
from shared.constants import alert_topic
from shared.lifecycle import run_loops
from shared.messages import AlertFired, JobResult
from shared.runner import ServiceContext

__all__ = ["Alerts", "main", "workers_origin"]

log = logging.getLogger("poolwire.alerts")


async def main(ctx: ServiceContext[AlertsConfig]) -> None:
    cfg = ctx.config
    clock = ctx.clock
    store = open_store(cfg, ctx.common.data_dir)
    alerts = Alerts(cfg, store)
    alerts.start()
    gc.freeze()  # the loaded state is long-lived: keep it out of every later collection
    pub = await Publisher(
        cfg.pub,
        service="alerts",
        clock=clock,
        heartbeat_interval=ctx.common.heartbeat_interval,
        hold=ctx.common.rejoin_wait,
        wire_version=ctx.common.wire_version,
        bind_later=True,
    ).bound(clock)
    prefixes = input_prefixes(cfg.strategies)
    log.info("inputs: %s (what the strategies read)", ", ".join(prefixes) or "none")
    sub = Subscriber(cfg.sub, prefixes, clock=clock)
    pusher = await Pusher(
        cfg.jobs, bind=True, sender=pub.publisher_id, hwm=cfg.max_in_flight, linger_ms=0, bind_later=True
    ).bound(clock)
    puller = await Puller(
        cfg.results, bind=True, max_message_size=ctx.common.max_message_size, bind_later=True
    ).bound(clock)
    ctx.bus_stats.add("pub", pub.stats)
    ctx.bus_stats.add("sub", sub.stats)
    ctx.bus_stats.add("jobs", pusher.stats)
    ctx.bus_stats.add("results", puller.stats)
    pool: WorkerPool | None = None
    if cfg.spawn_workers and cfg.workers > 0:
        pool = WorkerPool(
            cfg.workers,
            [
                "--jobs",
                cfg.jobs,
                "--results",
                cfg.results,
                "--timeout",
                str(max(cfg.job_timeout * 0.8, 0.05)),
            ],
            clock,
        )
        pool.start()
    ctx.metrics.register(AlertsCollector(alerts, pool))
    job_latency = Histogram(
        "poolwire_alerts_job_latency_seconds",
        "From a job's first push to its result",
        buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30),
        registry=ctx.metrics,
    )
    eval_latency = Histogram(
        "poolwire_alerts_bucket_evaluation_seconds",
        "Evaluating a bucket boundary (claims, intersections, jobs)",
        buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1),
        registry=ctx.metrics,
    )
    pub.start()
    wake = asyncio.Event()

    def push_ready() -> None:
        alerts.dispatcher.send_ready(clock.time_ns(), pusher.try_send)

    def publish(fired: list[AlertFired]) -> None:
        for alert in fired:
            pub.publish(alert_topic(alert.strategy, alert.symbol), alert)
        if fired:
            pub.flush()

    def observe_evaluations() -> None:
        for seconds in alerts.evaluation_seconds:
            eval_latency.observe(seconds)
        alerts.evaluation_seconds.clear()

    def loop_error(task: str, exc: Exception) -> None:
        """An error the loop survives (a store outage): counted, logged rate-limited, retried."""
        alerts.loop_errors[task] += 1
        alerts.ratelog(f"{task} error", "alerts %s: %s: %s (retried)", task, type(exc).__name__, exc)

    async def inputs() -> None:
        while True:
            batch = await sub.recv_batch()
            now = clock.time_ns()
            for _topic, msg in batch:
                try:
                    fired = alerts.on_message(msg, now)
                except Exception as exc:
                    alerts.skipped_messages += 1
                    loop_error("inputs", exc)
                    continue
                publish(fired)  # event-triggered: out now, not when the loop next turns
            if alerts.dispatcher.queue:  # the batch's event time closed a boundary: its jobs out now
                push_ready()
            observe_evaluations()
            if alerts.urgent:  # zone events: in the store before the next input, not a flush later
                try:
                    alerts.flush_urgent()
                except Exception as exc:
                    loop_error("inputs", exc)

    def tick(now: int) -> None:
        alerts.recover(now)  # at start: the jobs a previous run left, ahead of any new bucket
        publish(alerts.retry_deferred(now))
        alerts.boundary(alerts.close_point(now))
        alerts.flush(now)
        for status, job in alerts.expire(now):
            log.warning("job %s (%s) attempt %d timed out: %s", job.job_id, job.strategy, job.attempt, status)

    async def ticker() -> None:
        while True:
            try:
                tick(clock.time_ns())
            except Exception as exc:
                loop_error("ticker", exc)
            push_ready()
            observe_evaluations()
            alerts.ratelog.flush()
            wake.clear()
            delay = (alerts.next_wakeup(clock.time_ns()) - clock.time_ns()) / NS
            await sleep_or_wake(clock, max(delay, 0.0), wake)

    async def results() -> None:
        while True:
            batch = await puller.recv_batch()
            fired: list[AlertFired] = []
            with store.transaction():  # one commit for the batch's states and finished jobs ...
                for msg in batch:
                    if not isinstance(msg, JobResult):
                        alerts.dispatcher.refused["not_a_result"] += 1
                        alerts.ratelog(
                            "not a result", "refused a %s on the results socket", type(msg).__name__
                        )
                        continue
                    try:
                        status, out, latency = alerts.on_result(msg, clock.time_ns())
                    except Exception as exc:  # a store failure not caught in the core: the job times out
                        loop_error("results", exc)
                        continue
                    if status == "done":
                        job_latency.observe(latency / NS)
                    fired += out
                    if status == "retry":
                        wake.set()
            publish(fired)  # ... then its alerts, out at once: the window before the socket kept short
            push_ready()

    async def cleanup() -> None:
        await clock.sleep(cfg.cleanup_first)
        while True:
            try:
                removed = alerts.throttle.cleanup(clock.time_ns(), int(cfg.retention * NS))
                log.info(
                    "cleanup: removed %d ticker update(s) older than %.0f d; %d tracked",
                    removed,
                    cfg.retention / 86400,
                    store.ticker_count(),
                )
            except Exception as exc:
                loop_error("cleanup", exc)
            await clock.sleep(cfg.cleanup_every)

    async def summary() -> None:
        while True:
            await clock.sleep(cfg.summary_every)
            try:
                alerts.universe_sizes = store.universe_sizes()
                log.info("summary: %s", alerts.summary())
            except Exception as exc:
                loop_error("summary", exc)

    log.info(
        "alerts: %d strategies (%d event-triggered), store %s; jobs on %s, results on %s",
        len(cfg.strategies),
        len(alerts.events.strategies),
        store.name,
        cfg.jobs,
        cfg.results,
    )
    log.info("alerts: %s", workers_origin(cfg))
    loops = {
        "inputs": inputs(),
        "ticker": ticker(),
        "results": results(),
        "cleanup": cleanup(),
        "summary": summary(),
    }
    try:
        await run_loops(ctx.stopping, loops)
    finally:
        try:
            alerts.flush(clock.time_ns())
        except Exception as exc:
            log.error("alerts: the last ticker updates and open bars could not be written: %r", exc)
        unfinished = len(alerts.dispatcher.in_flight) + len(alerts.dispatcher.queue)
        if unfinished:
            log.info(
                "alerts: %d job(s) without a result stay pending in the %s store, to be dispatched again",
                unfinished,
                store.name,
            )
        if pool is not None:
            await pool.stop()
        await pub.close()
        sub.close()
        pusher.close(0)
        puller.close()
        store.close()
        log.info("alerts: stopped; %s", alerts.summary())
