"""The alerts service's synchronous core: inputs, boundaries, jobs and results, no sockets.

:class:`Alerts` is driven by the async shell in service.py (and by tests with a fake clock):
messages in (:meth:`Alerts.on_message`), bucket boundaries (:meth:`Alerts.boundary`), results
back (:meth:`Alerts.on_result`), time passing (:meth:`Alerts.expire`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from sys import intern

import msgspec

from services.alerts.bars import Bars
from services.alerts.config import AlertsConfig
from services.alerts.dispatch import Dispatcher
from services.alerts.events import EventEvaluator
from services.alerts.inputs import FlowLog
from services.alerts.orderflow import FlowBook, swap_flow
from services.alerts.results import Results
from services.alerts.sink import AlertSink
from services.alerts.store import ThrottleStore
from services.alerts.strategies import Signal
from services.alerts.throttle import Due, PartialBoundary, Throttle
from services.alerts.wiring import (
    event_strategy_of,
    input_prefixes,
    open_store,
    policy_of,
    spec_of,
    summary_line,
    workers_origin,
)
from shared.bars import Watermark
from shared.constants import dex_symbol, pm_symbol
from shared.messages import (
    ZONE_EVENT_NAMES,
    AlertFired,
    AlertZoneEvent,
    JobResult,
    Message,
    OrderFlowMetrics,
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
__all__ = ["Alerts", "event_strategy_of", "input_prefixes", "open_store", "workers_origin"]


class Alerts(Results):
    """Everything but the sockets' loops: testable with a fake clock and no processes."""

    def __init__(self, cfg: AlertsConfig, store: ThrottleStore) -> None:
        self.cfg = cfg
        self.store = store
        self.run_id = uuid.uuid4().hex[:12]
        self.strategies = {s.id: s for s in cfg.strategies}
        bucketed = [s for s in cfg.strategies if s.trigger == "bucket"]
        self.throttle = Throttle(store, [spec_of(s) for s in bucketed])
        self.bars = Bars((int(s.bucket * NS) for s in bucketed), cfg.max_zone_events)
        # Boundaries are evaluated on the inputs' event time: bucket B once the watermark passes B
        # plus the allowed lateness. With no input yet the stream counts as live (the wall clock).
        self.watermark = Watermark(int(cfg.allowed_lateness * NS), live=True)
        flow_kinds = [s for s in bucketed if s.kind in ("order_flow", "python")]
        self.reads_flow = bool(flow_kinds)  # else trades and swaps only stamp their ticker
        self.flow_log = FlowLog(
            max((int((s.flow_window + s.bucket) * NS) for s in flow_kinds), default=0), self.run_id
        )
        # a zone event went into an open bar: persist that series now (flush_urgent), not a flush later
        self.urgent = False
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
        self._unsaved: dict[str, bytes] = {}  # open-bar rows a failed write left to write again
        self._unsaved_deletes: list[str] = []
        # how long each evaluation that ran a strategy took (from the ticker or an input), until
        # the shell takes them for its histogram
        self.evaluation_seconds: list[float] = []
        self._next_close: int | None = self.throttle.next_boundary(0)  # the next boundary to evaluate

    def start(self) -> None:
        self.throttle.start()
        self.universe_sizes = self.store.universe_sizes()
        rows = self.store.load_inputs()
        restored = self.bars.restore(rows)
        self._unsaved_deletes += self.bars.stale_keys  # replaced by the next flush
        flows = self.flow_log.restore(rows, self.flow)
        if restored or flows:
            log.info("restored the open bars of %d series and %d order-flow input(s)", restored, flows)
            latest = max(self.bars.restored_latest_ns, self.flow_log.restored_latest_ns)
            self.throttle.resume(self.bars.restored_through, latest)
        else:
            # Nothing open to close: the first input's event time says whether the stream is live
            # (the wall clock closes its buckets too) or a replay of history (only its event time).
            self.watermark.live = False

    # -- inputs --------------------------------------------------------------------------------

    def on_message(self, msg: Message, now_ns: int) -> list[AlertFired]:
        """Note one input; returns the alerts its event-triggered strategies fired (to publish now)."""
        # An input's time is its event time (at most its arrival: a clock ahead, or a forged time,
        # cannot put it into a later bar).
        ev = msg.event_ns if 0 < msg.event_ns < now_ns else now_ns
        self.watermark.observe(ev, now_ns)
        self._close_passed(now_ns)
        # Symbols are interned: every table keyed by one holds the same string, not a copy each.
        if isinstance(msg, Price):
            symbol = intern(msg.symbol)
            fired = self.events.on_price(symbol, msg.price) if self.events else None
            self.throttle.note_update(symbol, ev)
            self.bars.price(symbol, msg.price, ev)
            if fired:
                return self._fire(fired, ev, now_ns)
        elif isinstance(msg, Trade):
            symbol = intern(pm_symbol(msg.asset))
            self.throttle.note_update(symbol, ev)
            if self.reads_flow:
                self.flow.add(symbol, ev, msg.size, msg.side == "buy")
                self.flow_log.add(symbol, ev, msg.size, msg.side == "buy")
        elif isinstance(msg, Swap):
            symbol = intern(dex_symbol(msg.pool))
            flow = swap_flow(msg.amount0, msg.amount1)
            if flow is None:
                self.skipped_messages += 1
                self.ratelog("bad swap", "skipped a swap of %s with unreadable amounts", msg.pool[:80])
                return []
            self.throttle.note_update(symbol, ev)
            if self.reads_flow:
                self.flow.add(symbol, ev, flow[0], flow[1])
                self.flow_log.add(symbol, ev, flow[0], flow[1])
        elif isinstance(msg, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved):
            z = msg.zone
            event = ZONE_EVENT_NAMES[type(msg)]
            price = msg.price if isinstance(msg, ZoneTouched) else 0.0
            symbol = intern(z.symbol)
            self.throttle.note_update(symbol, ev)
            zone_event = AlertZoneEvent(
                event=event,
                zone_id=z.id,
                timeframe=intern(z.timeframe),
                kind=intern(z.kind),
                top=z.top,
                bottom=z.bottom,
                price=price,
                event_ns=ev,
            )
            if self.bars.zone(symbol, zone_event):
                self.urgent = True
            if self.events:
                fired = self.events.on_zone(symbol, zone_event)
                if fired:
                    return self._fire(fired, zone_event.event_ns, now_ns)
        else:
            self.skipped_messages += 1
            self.ratelog("unexpected message", "skipped a %s on the inputs", type(msg).__name__)
        return []

    def _close_passed(self, now_ns: int) -> None:
        """Evaluate the boundaries this input closed (its event time, or the wall clock, passed
        them plus the lateness) before it is applied: whatever the speed of the stream, a boundary
        is evaluated with the inputs before its close point and none after (replay = live)."""
        point = self.watermark.point(now_ns)
        if self._next_close is None or point < self._next_close:
            return
        try:
            self.boundary(point)
        except Exception as exc:  # the store failed: the ticker evaluates it again
            self.loop_errors["inputs"] += 1
            self.ratelog(
                "inputs error", "alerts: boundary at an input: %s: %s (retried)", type(exc).__name__, exc
            )

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
        raised: the failed bucket is evaluated at the next call. Nothing closes before the first
        input (``now_ns`` 0).
        """
        if now_ns <= 0:
            return []
        t0 = time.perf_counter()
        try:
            due = self.throttle.run_due(now_ns, self._jobs)
        except PartialBoundary as exc:
            self._submit(exc.due)
            raise exc.cause from None
        self._submit(due)
        self._roll(now_ns)
        self._next_close = self.throttle.next_boundary(now_ns)
        if due:
            self.evaluation_seconds.append(time.perf_counter() - t0)
        return due

    def _submit(self, due: list[Due]) -> None:
        for d in due:
            if d.job is not None:
                self.dispatcher.submit(d.job)

    def _jobs(self, due: list[Due]) -> list[StrategyJob]:
        """One job per due strategy: its changed tickers and their inputs (closed bars, flow).

        Order flow is as of the boundary (the window ending at ``bucket_ns``, trades after it left
        out), not of the moment it is evaluated: the same at any speed of the stream."""
        wanted: dict[int, dict[str, set[float]]] = {}
        for d in due:
            s = self.strategies[d.strategy]
            if s.kind in ("order_flow", "python"):
                by_symbol = wanted.setdefault(d.bucket_ns, {})
                for t in d.tickers:
                    by_symbol.setdefault(t, set()).add(float(s.flow_window))
        flows: dict[tuple[str, float, int], OrderFlowMetrics] = {}
        for boundary, by_symbol in wanted.items():
            for (t, w), metrics in self.flow.metrics_for(by_symbol, boundary).items():
                flows[(t, w, boundary)] = metrics
        jobs: list[StrategyJob] = []
        made: dict[tuple[int, int, str], TickerInput] = {}  # a ticker's input, shared by the jobs
        for d in due:
            s = self.strategies[d.strategy]
            size = int(s.bucket * NS)
            inputs = self.bars.inputs(size, d.tickers, d.bucket_ns, made)
            if flows and s.kind in ("order_flow", "python"):
                w = float(s.flow_window)
                for t in d.tickers:
                    m = flows.get((t, w, d.bucket_ns))
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

    def _roll(self, point_ns: int) -> None:
        for size in self.bars.sizes:
            self.bars.roll(size, point_ns - point_ns % size)

    def close_point(self, now_ns: int) -> int:
        """How far buckets are closed at wall clock ``now_ns``: the boundaries at or before it are
        the ones to evaluate (see shared/bars.py)."""
        return self.watermark.point(now_ns)

    def flush(self, now_ns: int) -> None:
        """Write the batched ticker updates and the open bars' changed inputs, in one transaction:
        a restart after kill -9 takes them back (:meth:`start`). Raises if the store fails (what
        was not written is kept for the next call)."""
        with self.store.transaction():
            self.throttle.flush()
            self.flow_log.prune(now_ns)
            rows, deletes = self.flow_log.take()
            rows.update(self.bars.dirty_rows())
            self.urgent = False
            self._save(rows, deletes)

    def flush_urgent(self) -> None:
        """The series zone events went into, and their tickers' updates, in one transaction: a zone
        event is in the store before the next input is read. The rest (other bars, order flow,
        other tickers) waits for :meth:`flush`, so this stays a small write on the hot path."""
        with self.store.transaction():
            rows, symbols = self.bars.urgent_rows()
            self.urgent = False
            self._unsaved.update(rows)  # kept for the next write if the tickers' write fails
            self.throttle.flush_tickers(symbols)
            self._save({}, [])

    def _save(self, rows: dict[str, bytes], deletes: list[str]) -> None:
        """Write open-input rows and deletes, with those a failed write left; on failure they are
        kept for the next call and the error raised."""
        self._unsaved.update(rows)
        self._unsaved_deletes.extend(deletes)
        rows, self._unsaved = self._unsaved, {}
        deletes, self._unsaved_deletes = self._unsaved_deletes, []
        for key in deletes:  # expired before a failed write could be retried: never written
            rows.pop(key, None)
        try:
            self.store.save_inputs(rows, deletes)
        except BaseException:
            rows.update(self._unsaved)
            self._unsaved = rows
            self._unsaved_deletes[:0] = deletes
            raise

    def next_wakeup(self, now_ns: int) -> int:
        flush = now_ns + int(self.cfg.flush_every * NS)
        candidates = [flush, self._next_adopt_ns]
        b = self.throttle.next_boundary(self.close_point(now_ns))
        if b is not None:  # closed when the wall clock passes it plus the lateness (a live stream)
            candidates.append(b + self.watermark.lateness_ns)
        d = self.dispatcher.next_deadline()
        if d is not None:
            candidates.append(d)
        return min(candidates)

    def summary(self) -> str:
        return summary_line(self.throttle.stats, self.universe_sizes, self.store.ticker_count())
