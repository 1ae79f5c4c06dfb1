"""The alerts service's synchronous core: inputs, boundaries, jobs and results, no sockets.

:class:`Alerts` is driven by the async shell in service.py (and by tests with a fake clock):
messages in (:meth:`Alerts.on_message`), bucket boundaries (:meth:`Alerts.boundary`), results
back (:meth:`Alerts.on_result`), time passing (:meth:`Alerts.expire`).
"""

from __future__ import annotations

import logging
import os
import uuid
from collections import Counter
from typing import Any

import msgspec

from services.alerts.bars import Bars
from services.alerts.config import AlertsConfig, StrategyConfig
from services.alerts.dispatch import Dispatcher, Status
from services.alerts.events import EventEvaluator, EventStrategy
from services.alerts.frequency import Policy
from services.alerts.orderflow import FlowBook, swap_flow
from services.alerts.sink import AlertSink
from services.alerts.store import ThrottleStore
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from services.alerts.strategies import Signal, refusal_reason
from services.alerts.throttle import Due, PartialBoundary, StrategySpec, Throttle, size_class
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
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.alerts")

NS = 1_000_000_000
PREFIXES = ("px.", "md.trade.", "dex.swap.", "zone.")
MAX_DEFERRED = 10_000  # results kept while the store fails; beyond, their jobs time out and retry


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
        self.ratelog = RateLimitedLog(log)
        self.deferred: list[JobResult] = []  # results the store failed on, handled again later
        self.store_errors = 0  # store calls that raised while handling a result
        self.worker_refusals: Counter[str] = Counter()  # jobs workers refused, by reason
        self.loop_errors: Counter[str] = Counter()  # errors the service's loops survived, by loop
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
                self.ratelog("bad swap", "skipped a swap of %s with unreadable amounts", msg.pool[:80])
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
            self.ratelog("unexpected message", "skipped a %s on the inputs", type(msg).__name__)
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
        """Evaluate due buckets (their jobs persisted with the claims), queue the jobs, roll the bars.

        If the store fails, the jobs already claimed are queued, the bars are kept and the error
        raised: the failed bucket is evaluated at the next call.
        """
        try:
            due = self.throttle.run_due(now_ns, lambda ds: self._jobs(ds, now_ns))
        except PartialBoundary as exc:
            self._submit(exc.due)
            raise exc.cause from None
        self._submit(due)
        self._roll(now_ns)
        return due

    def _submit(self, due: list[Due]) -> None:
        for d in due:
            if d.job is not None:
                self.dispatcher.submit(d.job)

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

    def on_result(self, result: JobResult, now_ns: int) -> tuple[Status, list[Any], int]:
        """A job's result: the alerts to publish now (states persisted, job finished in the store).

        Only a result for a job in flight, of that job's strategy, is taken (see
        :meth:`Dispatcher.check`); an alert in it of another strategy is dropped. Both are counted
        in ``dispatcher.refused`` and logged rate-limited. If the store fails while the result is
        handled, the job is in flight again and the result kept in ``deferred``, handled again by
        :meth:`retry_deferred`.
        """
        if not result.job_id and refusal_reason(result.error) is not None:
            self._worker_refusal(result)  # a worker's report of a job it could not even read
            return "refused", [], 0
        status, job, latency = self.dispatcher.complete(result, now_ns)
        if status == "refused":
            self.ratelog(
                "refused result",
                "refused a result from %s for job %r (strategy %r): %s",
                result.worker[:64],
                result.job_id[:64],
                result.strategy[:64],
                self.dispatcher.check(result),
            )
            self._worker_refusal(result)
            return status, [], latency
        if status != "done" or job is None:
            if status == "failed" and job is not None:
                log.warning("job %s (%s) failed twice: %s", result.job_id, result.strategy, result.error)
                self.store.finish_job(job.job_id, {})
            if status in ("retry", "failed"):
                self._worker_refusal(result)
            return status, [], latency
        alerts = [a for a in result.alerts if a.strategy == job.strategy]
        if len(alerts) < len(result.alerts):
            n = len(result.alerts) - len(alerts)
            self.dispatcher.refused["alert_strategy"] += n
            self.ratelog(
                "refused alert", "dropped %d alert(s) of another strategy in a result of %s", n, job.strategy
            )
        try:
            if result.used_symbols and self.throttle.discover(job.strategy, result.used_symbols):
                self.universe_sizes[job.strategy] = len(set(result.used_symbols))
            return status, self.sink.accept(job, alerts, now_ns), latency
        except Exception as exc:
            self.dispatcher.restore(job, now_ns, latency)
            if len(self.deferred) < MAX_DEFERRED:
                self.deferred.append(result)
            self.store_errors += 1
            self.ratelog(
                "store error", "result of job %s kept to handle again: store failed: %r", job.job_id, exc
            )
            return "deferred", [], latency

    def retry_deferred(self, now_ns: int) -> list[AlertFired]:
        """Handle again the results the store failed on; the alerts to publish."""
        pending, self.deferred = self.deferred, []
        out: list[AlertFired] = []
        for i, result in enumerate(pending):
            status, fired, _ = self.on_result(result, now_ns)
            out += fired
            if status == "deferred":  # still failing: the rest waits too, in order
                self.deferred += pending[i + 1 :]
                break
        return out

    def _worker_refusal(self, result: JobResult) -> None:
        reason = refusal_reason(result.error) if not result.ok else None
        if reason is not None:
            self.worker_refusals[reason] += 1
            self.ratelog(
                f"worker refusal {reason}", "worker %s refused a job: %s", result.worker[:64], result.error
            )

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
