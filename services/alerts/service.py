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
import os
import time
import uuid
from typing import Any

import msgspec
from prometheus_client import Histogram

from services.alerts.bars import Bars
from services.alerts.config import AlertsConfig, StrategyConfig
from services.alerts.dispatch import Dispatcher, Status
from services.alerts.events import EventEvaluator, EventStrategy
from services.alerts.frequency import Policy
from services.alerts.metrics import AlertsCollector
from services.alerts.orderflow import FlowBook, swap_flow
from services.alerts.sink import AlertSink
from services.alerts.store import ThrottleStore
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from services.alerts.strategies import Signal
from services.alerts.supervisor import WorkerPool
from services.alerts.throttle import Due, StrategySpec, Throttle, size_class
from shared.bus import Publisher, Puller, Pusher, Subscriber
from shared.constants import alert_topic
from shared.messages import (
    AlertFired,
    AlertZoneEvent,
    JobResult,
    Message,
    Price,
    StrategyJob,
    Swap,
    TickerInput,
    Trade,
    ZoneCreated,
    ZoneExpired,
    ZoneRemoved,
    ZoneTouched,
)
from shared.runner import ServiceContext

log = logging.getLogger("poolwire.alerts")

NS = 1_000_000_000
PREFIXES = ("px.", "md.trade.", "dex.swap.", "zone.")


def open_store(cfg: AlertsConfig, data_dir: str) -> ThrottleStore:
    if cfg.store == "redis":
        return RedisStore(
            cfg.redis_url,
            prefix=cfg.redis_prefix,
            large_universe=cfg.large_universe,
            lease_ns=int(cfg.job_lease * NS),
        )
    path = cfg.sqlite_path or os.path.join(data_dir, "alerts.sqlite3")
    return SqliteStore(path, large_universe=cfg.large_universe)


def spec_of(s: StrategyConfig) -> StrategySpec:
    return StrategySpec.from_universe(s.id, int(s.bucket * NS), s.universe)


def event_strategy_of(s: StrategyConfig) -> EventStrategy:
    return EventStrategy(s.id, s.kind, spec_of(s), s.params)


def policy_of(s: StrategyConfig) -> Policy:
    bar = s.bar if s.bar > 0 else s.bucket
    return Policy(s.frequency, int(bar * NS), int(s.repeat_interval * NS))


def workers_origin(cfg: AlertsConfig) -> str:
    """Where the workers come from, for the start-up log."""
    if cfg.workers == 0:
        return f"expecting external workers on {cfg.jobs} (alerts.workers 0: any number, none spawned)"
    if not cfg.spawn_workers:
        return (
            f"expecting {cfg.workers} external workers on {cfg.jobs} "
            "(alerts.spawn_workers false: `python -m services.alerts.worker` runs them)"
        )
    return f"spawned {cfg.workers} workers on {cfg.jobs}, restarted when they exit"


class Alerts:
    """Everything but the sockets' loops: testable with a fake clock and no processes."""

    def __init__(self, cfg: AlertsConfig, store: ThrottleStore) -> None:
        self.cfg = cfg
        self.store = store
        self.strategies = {s.id: s for s in cfg.strategies}
        bucketed = [s for s in cfg.strategies if s.trigger == "bucket"]
        self.throttle = Throttle(store, [spec_of(s) for s in bucketed])
        self.bars = Bars(int(s.bucket * NS) for s in bucketed)
        self.events = EventEvaluator(event_strategy_of(s) for s in cfg.strategies if s.trigger == "event")
        self._eval_ns = 0  # event evaluations' ids: strictly increasing
        self.flow = FlowBook(
            ttl_ns=int(cfg.flow_cache_ttl * NS),
            max_entries=cfg.flow_cache_size,
            tick_buffer=cfg.flow_tick_buffer,
            delta_history=cfg.flow_delta_history,
            cvd_history=cfg.flow_cvd_history,
        )
        self.dispatcher = Dispatcher(int(cfg.job_timeout * NS), max_in_flight=cfg.max_in_flight)
        self.sink = AlertSink(store, {s.id: policy_of(s) for s in cfg.strategies})
        self.run_id = uuid.uuid4().hex[:12]
        self._job_n = 0
        # Pending jobs left by a previous run (or a dead instance on Redis) are adopted at the first
        # recover(), then looked for again (renewing this instance's lease) this often.
        self._adopt_every_ns = max(int(cfg.job_lease * NS) // 5, 1)
        self._next_adopt_ns = 0
        self.skipped_messages = 0
        self.universe_sizes: dict[str, int] = {}
        self._rolled: dict[int, int] = {}  # bucket size -> boundary its bars were last rolled at

    def start(self) -> None:
        self.throttle.start()
        self.universe_sizes = self.store.universe_sizes()

    # -- inputs --------------------------------------------------------------------------------

    def on_message(self, msg: Message, now_ns: int) -> list[AlertFired]:
        """Note one input; returns the alerts its event-triggered strategies fired (to publish now)."""
        if isinstance(msg, Price):
            fired = self.events.on_price(msg.symbol, msg.price) if self.events else None
            self.throttle.note_update(msg.symbol, now_ns)
            self.bars.price(msg.symbol, msg.price, now_ns)
            if fired:
                return self._fire(fired, msg.event_ns or now_ns, now_ns)
        elif isinstance(msg, Trade):
            symbol = f"pm.{msg.asset}"
            self.throttle.note_update(symbol, now_ns)
            self.flow.add(symbol, msg.event_ns or now_ns, msg.price, msg.size, msg.side == "buy")
        elif isinstance(msg, Swap):
            symbol = f"dex.{msg.pool}"
            flow = swap_flow(msg.amount0, msg.amount1)
            if flow is None:
                self.skipped_messages += 1
                return []
            self.throttle.note_update(symbol, now_ns)
            self.flow.add(symbol, msg.event_ns or now_ns, msg.price, flow[0], flow[1])
        elif isinstance(msg, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved):
            z = msg.zone
            event = type(msg).__name__.removeprefix("Zone").lower()
            price = msg.price if isinstance(msg, ZoneTouched) else 0.0
            self.throttle.note_update(z.symbol, now_ns)
            zone_event = AlertZoneEvent(
                event=event,
                zone_id=z.id,
                timeframe=z.timeframe,
                kind=z.kind,
                top=z.top,
                bottom=z.bottom,
                price=price,
                event_ns=msg.event_ns or now_ns,
            )
            self.bars.zone(z.symbol, zone_event)
            if self.events:
                fired = self.events.on_zone(z.symbol, zone_event)
                if fired:
                    return self._fire(fired, zone_event.event_ns, now_ns)
        else:
            self.skipped_messages += 1
        return []

    def _fire(self, fired: list[tuple[str, Signal]], event_ns: int, now_ns: int) -> list[AlertFired]:
        """Frequency control for what one message fired (its own evaluation); states persisted."""
        self._eval_ns = max(now_ns, self._eval_ns + 1)
        out: list[AlertFired] = []
        for strategy, sig in fired:
            alert = AlertFired(
                strategy=strategy,
                symbol=sig.symbol,
                message=sig.message,
                value=float(sig.value),
                event_ns=event_ns,
            )
            out += self.sink.accept_evaluation(strategy, self._eval_ns, [], [alert], now_ns)
        return out

    # -- boundaries ----------------------------------------------------------------------------

    def recover(self, now_ns: int) -> int:
        """Queue the pending jobs that no live instance is handling; returns how many.

        The first call (at start, before any boundary) takes every job a previous run left, so
        they go out ahead of new buckets; later calls (at most every ``job_lease / 5``) renew
        this instance's lease on Redis and take the jobs of instances whose lease ran out.
        """
        if now_ns < self._next_adopt_ns:
            return 0
        self._next_adopt_ns = now_ns + self._adopt_every_ns
        n = 0
        for job in self.store.adopt_jobs(now_ns):
            if job.strategy not in self.throttle.strategies:
                log.warning(
                    "pending job %s of strategy %s dropped: no such bucketed strategy now",
                    job.job_id,
                    job.strategy,
                )
                self.store.finish_job(job.job_id, {})
                continue
            self.dispatcher.submit(job, recovered=True)
            n += 1
        if n:
            log.info("recovered %d pending job(s) whose results were never handled: dispatched again", n)
        return n

    def boundary(self, now_ns: int) -> list[Due]:
        """Evaluate due buckets (their jobs persisted with the claims), queue the jobs, roll the bars."""
        due = self.throttle.run_due(now_ns, lambda ds: self._jobs(ds, now_ns))
        for d in due:
            if d.job is not None:
                self.dispatcher.submit(d.job)
        self._roll(now_ns)
        return due

    def _jobs(self, due: list[Due], now_ns: int) -> list[StrategyJob]:
        """One job per due strategy: its changed tickers and their inputs (closed bars, flow)."""
        wanted: dict[str, set[float]] = {}
        for d in due:
            s = self.strategies[d.strategy]
            if s.kind in ("order_flow", "python"):
                for t in d.tickers:
                    wanted.setdefault(t, set()).add(float(s.flow_window))
        flows = self.flow.metrics_for(wanted, now_ns) if wanted else {}
        jobs: list[StrategyJob] = []
        for d in due:
            s = self.strategies[d.strategy]
            size = int(s.bucket * NS)
            inputs = self.bars.inputs(size, d.tickers)
            if flows and s.kind in ("order_flow", "python"):
                w = float(s.flow_window)
                for t in d.tickers:
                    m = flows.get((t, w))
                    if m is not None:
                        bar = inputs.get(t)
                        # A copy: the bar is every job's of this bucket, the window this strategy's.
                        inputs[t] = (
                            TickerInput(flow=m) if bar is None else msgspec.structs.replace(bar, flow=m)
                        )
            self._job_n += 1
            jobs.append(
                StrategyJob(
                    job_id=f"{self.run_id}-{self._job_n}",
                    strategy=s.id,
                    kind=s.kind,
                    bucket_ns=d.bucket_ns,
                    tickers=sorted(d.tickers),
                    params=s.params,
                    function=s.function,
                    inputs=inputs,
                    event_ns=d.bucket_ns,
                )
            )
        return jobs

    def _roll(self, now_ns: int) -> None:
        for size in self.bars.sizes:
            boundary = now_ns - now_ns % size
            if self._rolled.get(size, -1) < boundary:
                self._rolled[size] = boundary
                self.bars.roll(size)

    # -- results -------------------------------------------------------------------------------

    def on_result(self, result: JobResult, now_ns: int) -> tuple[str, list[Any], int]:
        """A job's result: the alerts to publish now (states persisted, job finished in the store)."""
        status, job, latency = self.dispatcher.complete(result, now_ns)
        if status != "done" or job is None:
            if status == "failed" and job is not None:
                log.warning("job %s (%s) failed twice: %s", result.job_id, result.strategy, result.error)
                self.store.finish_job(job.job_id, {})
            return status, [], latency
        if result.used_symbols and self.throttle.discover(job.strategy, result.used_symbols):
            self.universe_sizes[job.strategy] = len(set(result.used_symbols))
        return status, self.sink.accept(job, list(result.alerts), now_ns), latency

    def expire(self, now_ns: int) -> list[tuple[Status, StrategyJob]]:
        """Jobs past their deadline: retried once, then failed (and finished in the store)."""
        out = self.dispatcher.expire(now_ns)
        for status, job in out:
            if status == "failed":
                self.store.finish_job(job.job_id, {})
        return out

    def next_wakeup(self, now_ns: int) -> int:
        flush = now_ns + int(self.cfg.flush_every * NS)
        candidates = [flush, self._next_adopt_ns]
        b = self.throttle.next_boundary(now_ns)
        if b is not None:
            candidates.append(b)
        d = self.dispatcher.next_deadline()
        if d is not None:
            candidates.append(d)
        return min(candidates)

    def summary(self) -> str:
        st = self.throttle.stats
        sizes = self.universe_sizes
        counts = {"small": 0, "medium": 0, "large": 0, "xlarge": 0}
        for n in sizes.values():
            counts[size_class(n)] += 1
        avg = sum(sizes.values()) / len(sizes) if sizes else 0.0
        return (
            f"ticker updates: {st.ticker_updates}, universe updates: {st.universe_updates}, "
            f"total tracked: {self.store.ticker_count()} | strategy runs: {st.runs}, "
            f"skipped (no update): {st.skipped_no_update}, skipped (bucket dup): {st.skipped_duplicate} | "
            f"cleanup ops: {st.cleanups}, large intersections: {st.large_intersections}, "
            f"universe discoveries: {st.discoveries} | universe distribution: small (<=10): {counts['small']}, "
            f"medium (<=100): {counts['medium']}, large (<=1000): {counts['large']}, "
            f"xlarge (>1000): {counts['xlarge']} | average universe size: {avg:.0f} tickers "
            f"across {len(sizes)} strategies"
        )


async def main(ctx: ServiceContext[AlertsConfig]) -> None:
    cfg = ctx.config
    clock = ctx.clock
    store = open_store(cfg, ctx.common.data_dir)
    alerts = Alerts(cfg, store)
    alerts.start()
    gc.freeze()  # the loaded state is long-lived: keep it out of every later collection
    pub = Publisher(cfg.pub, service="alerts", clock=clock, heartbeat_interval=ctx.common.heartbeat_interval)
    sub = Subscriber(cfg.sub, PREFIXES, clock=clock)
    pusher = Pusher(cfg.jobs, bind=True, sender=pub.publisher_id, hwm=cfg.max_in_flight, linger_ms=0)
    puller = Puller(cfg.results, bind=True, max_message_size=ctx.common.max_message_size)
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
        for job in alerts.dispatcher.ready(clock.time_ns()):
            if not pusher.try_send(job):
                alerts.dispatcher.unsend(job)
                break

    async def inputs() -> None:
        while True:
            batch = await sub.recv_batch()
            now = clock.time_ns()
            for _topic, msg in batch:
                try:
                    fired = alerts.on_message(msg, now)
                except Exception:
                    alerts.skipped_messages += 1
                    log.exception("skipped a %s that could not be applied", type(msg).__name__)
                    continue
                if fired:  # event-triggered: out now, not when the loop next turns
                    for alert in fired:
                        pub.publish(alert_topic(alert.strategy, alert.symbol), alert)
                    pub.flush()

    async def ticker() -> None:
        while True:
            now = clock.time_ns()
            alerts.recover(now)  # at start: the jobs a previous run left, ahead of any new bucket
            t0 = time.perf_counter()
            due = alerts.boundary(now)
            if due:
                eval_latency.observe(time.perf_counter() - t0)
            else:
                alerts.throttle.flush()
            for status, job in alerts.expire(now):
                log.warning(
                    "job %s (%s) attempt %d timed out: %s", job.job_id, job.strategy, job.attempt, status
                )
            push_ready()
            wake.clear()
            delay = (alerts.next_wakeup(clock.time_ns()) - clock.time_ns()) / NS
            sleeper = asyncio.ensure_future(clock.sleep(max(delay, 0.0)))
            waiter = asyncio.ensure_future(wake.wait())
            await asyncio.wait({sleeper, waiter}, return_when=asyncio.FIRST_COMPLETED)
            sleeper.cancel()
            waiter.cancel()
            await asyncio.gather(sleeper, waiter, return_exceptions=True)

    async def results() -> None:
        while True:
            batch = await puller.recv_batch()
            fired: list[AlertFired] = []
            with store.transaction():  # one commit for the batch's states and finished jobs ...
                for msg in batch:
                    if not isinstance(msg, JobResult):
                        alerts.skipped_messages += 1
                        continue
                    status, out, latency = alerts.on_result(msg, clock.time_ns())
                    if status == "done":
                        job_latency.observe(latency / NS)
                    fired += out
                    if status == "retry":
                        wake.set()
            for alert in fired:  # ... then its alerts, out at once: the window before the socket kept short
                pub.publish(alert_topic(alert.strategy, alert.symbol), alert)
            if fired:
                pub.flush()
            push_ready()

    async def cleanup() -> None:
        await clock.sleep(cfg.cleanup_first)
        while True:
            removed = alerts.throttle.cleanup(clock.time_ns(), int(cfg.retention * NS))
            log.info(
                "cleanup: removed %d ticker update(s) older than %.0f d; %d tracked",
                removed,
                cfg.retention / 86400,
                store.ticker_count(),
            )
            await clock.sleep(cfg.cleanup_every)

    async def summary() -> None:
        while True:
            await clock.sleep(cfg.summary_every)
            alerts.universe_sizes = store.universe_sizes()
            log.info("summary: %s", alerts.summary())

    tasks = [
        asyncio.create_task(coro, name=name)
        for name, coro in (
            ("inputs", inputs()),
            ("ticker", ticker()),
            ("results", results()),
            ("cleanup", cleanup()),
            ("summary", summary()),
        )
    ]
    log.info(
        "alerts: %d strategies (%d event-triggered), store %s; jobs on %s, results on %s",
        len(cfg.strategies),
        len(alerts.events.strategies),
        store.name,
        cfg.jobs,
        cfg.results,
    )
    log.info("alerts: %s", workers_origin(cfg))
    stop = asyncio.create_task(ctx.stopping.wait())
    try:
        done, _ = await asyncio.wait([stop, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stop and t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
    finally:
        stop.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(stop, *tasks, return_exceptions=True)
        alerts.throttle.flush()
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
