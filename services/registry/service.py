"""The registry service: a thin async shell around the core.

SUB ``px.*`` -> detectors (candles, FVGs, pivots) and the price index; PULL ``DetectorEvent`` from
outside detectors; a timer loop advances the wheel to the event-time point (the clock while the
price stream is live, its newest event time in a replay: candles.py's Watermark); every event
goes out on PUB
``zone.<event>.<tf>.<symbol>``; a ROUTER answers Clone snapshots of the active zones; SQLite keeps
the zones and the detectors' candles across restarts.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from services.registry.candles import Watermark
from services.registry.clocked import ClockedLoops
from services.registry.config import RegistryConfig
from services.registry.detectors import Detectors
from services.registry.logs import RateLimitFilter
from services.registry.metrics import RegistryCollector, service_histograms
from services.registry.outbox import Outbox
from services.registry.registry import Registry
from services.registry.restore import restore_detectors, stored_zones
from services.registry.store import ZoneStore
from services.registry.turns import Turns
from services.registry.validate import (
    MAX_TTL_NS,
    Limits,
)
from services.registry.zones import NS, timeframe_ns
from shared import compiled
from shared.backoff import sleep_or_wake
from shared.bus import Publisher, Puller, Subscriber
from shared.constants import px_topic, zone_topic
from shared.lifecycle import run_loops
from shared.messages import (
    ZONE_EVENT_NAMES,
    Message,
    Price,
    SnapshotRequest,
    ZoneCreated,
    ZoneExpired,
    ZoneRemoved,
    ZoneSnapshotItem,
)
from shared.ratelog import RateLimitedLog
from shared.runner import ServiceContext
from shared.snapshot import SnapshotServer

log = logging.getLogger("poolwire.registry")

EVENT_NAMES = ZONE_EVENT_NAMES
SUB_DRAIN = 256  # price frames read per drain of the SUB


class RegistryService(ClockedLoops):
    def __init__(self, ctx: ServiceContext[RegistryConfig]) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.clock = ctx.clock
        self.pools = cfg.parsed_pools()
        self.registry = Registry(self.pools.rules(), self.clock.time_ns(), wall=self.clock.time_ns)
        self.registry.on_expiry_error = self._expiry_error
        self.limits = Limits(
            timeframes=frozenset(self.pools.timeframes),
            horizon_ns=int(cfg.future_horizon * NS),
            max_ttl_ns=max(MAX_TTL_NS, *(int(p.ttl * NS) for p in self.pools.timeframes.values())),
        )
        # Bad input is logged through one rate-limited log (shared/'s per-frame warnings too).
        self.skip_log = RateLimitedLog(log, clock=self.clock.monotonic)
        self.log_filter = RateLimitFilter(self.skip_log)
        self.store = (
            ZoneStore(Path(ctx.common.data_dir) / cfg.store, clock=self.clock.monotonic)
            if cfg.store
            else None
        )
        self.detectors: Detectors | None = None
        if cfg.detectors.enabled:
            tfs = cfg.detectors.timeframes or list(self.pools.timeframes)
            self.detectors = Detectors(
                {tf: timeframe_ns(tf) for tf in tfs},
                cfg.detectors.swing_bars,
                cfg.detectors.fvg_min_gap,
                lateness_ns=int(cfg.detectors.allowed_lateness * NS),
                fvg_rule=cfg.detectors.fvg_rule,
                max_symbols=cfg.detectors.max_symbols,
            )
            if self.store is not None:  # before the SUB below connects: no tick meets empty candles
                restore_detectors(self.detectors, self.store)
        self.bad_events: dict[str, int] = {}  # detector events refused, by reason
        self.prices_refused: dict[str, int] = {}
        self._symbols_ok: set[str] = set()  # symbols whose names passed the checks (the hot path)
        # The price stream's event time (every symbol's prices as one stream): how far the wheel
        # may go. Live, the clock; a replay of history (not live), its newest event time.
        self.stream = Watermark(int(cfg.detectors.allowed_lateness * NS))
        self._wake = asyncio.Event()
        self._planned_wake_ns = 0  # on the clock
        self._wake_below_ns = 0  # a zone due before this (event time) wakes the expiry loop
        self._planned_close_ns = 0
        self.processing, self.event_latency = service_histograms(ctx.metrics)
        collector = RegistryCollector(
            self.registry,
            self.detectors,
            self.store,
            lambda: self.bad_events,
            prices_refused=lambda: self.prices_refused,
        )
        ctx.metrics.register(collector)
        self.turns = Turns(self.processing)
        ctx.metrics.register(self.turns)
        self.pub = Publisher(
            cfg.pub,
            service="registry",
            clock=self.clock,
            heartbeat_interval=ctx.common.heartbeat_interval,
            hold=ctx.common.rejoin_wait,
            wire_version=ctx.common.wire_version,
            bind_later=True,
        )
        ctx.bus_stats.add("pub", self.pub.stats)
        # A drain reads at most this many frames before the loop turns (~1 ms; 1 000 held it 5 ms+).
        self.sub = Subscriber(cfg.prices, (px_topic(""),), clock=self.clock, max_drain=SUB_DRAIN)
        ctx.bus_stats.add("sub", self.sub.stats)
        self.puller = Puller(
            cfg.pull, bind=True, max_message_size=ctx.common.max_message_size, bind_later=True
        )
        ctx.bus_stats.add("pull", self.puller.stats)
        self.snapshots = SnapshotServer(
            cfg.snapshot,
            self.snapshot,
            publisher=self.pub,
            max_message_size=ctx.common.max_message_size,
            bind_later=True,
        )
        collector.snapshot_bad_requests = lambda: self.snapshots.bad_requests
        self.outbox = Outbox(self.store, self.publish, turns=self.turns) if self.store is not None else None

    # ------------------------------------------------------------------------------------------
    def emit(self, oldest_ns: int = 0) -> int:
        """Note the core's events' changes for the store and publish them once written (the
        outbox); ``oldest_ns``: the publish time of the oldest price that caused them."""
        events = self.registry.drain()
        store = self.store
        grace = self.registry.rules.grace_ns
        for event in events:
            zone = event.zone  # type: ignore[attr-defined]
            if store is not None:
                if isinstance(event, ZoneRemoved):
                    store.removed(zone.id)
                else:
                    store.changed(zone)
            if isinstance(event, ZoneCreated) and zone.expires_ns < self._wake_below_ns:
                self._wake.set()
            elif isinstance(event, ZoneExpired) and zone.ended_ns + grace < self._wake_below_ns:
                self._wake.set()  # filled at an event time whose grace ends sooner (a replay)
        if self.outbox is None:
            self.publish(events, oldest_ns)
        elif events:
            self.outbox.send(events, oldest_ns)
        return len(events)

    def publish(self, events: list[Message], oldest_ns: int = 0) -> None:
        publish = self.pub.publish
        for event in events:
            zone = event.zone  # type: ignore[attr-defined]
            publish(zone_topic(EVENT_NAMES[type(event)], zone.timeframe, zone.symbol), event)
        if events and oldest_ns:
            self.event_latency.observe(max(0, self.clock.time_ns() - oldest_ns) / 1e9)

    def emit_safely(self, oldest_ns: int = 0) -> int:
        """:meth:`emit` for the loops: an exception (a bug) is counted and logged, never the end."""
        try:
            return self.emit(oldest_ns)
        except Exception:
            self.internal(self.bad_events, "the zone events")
            return 0

    def flush_store(self, *, detector_symbols: int | None = 0) -> None:
        """Write the zones' pending changes, and the changed candles of ``detector_symbols``
        symbols (None: all of them), through the outbox.

        Candles change with every tick. Written before each publish, or all at once each second,
        they cost the price -> zone hop 7-10 ms at p99 with 2 000 symbols at 10 k prices/s; the
        detector-state loop writes them a few symbols at a time instead. A kill -9 loses the ticks
        not yet written; a detection that fires again after the restart gets the same zone id (a
        counted duplicate).
        """
        assert self.store is not None and self.outbox is not None
        if self.detectors is not None:
            evicted = self.detectors.take_evicted()  # before their newer states, if they came back
            if evicted:
                tfs = self.detectors.timeframes
                self.store.states_removed([(sym, tf) for sym in evicted for tf in tfs])
            if detector_symbols != 0:
                self.store.states_changed(self.detectors.changed(detector_symbols))
        self.outbox.send([])

    async def next_turn(self) -> None:
        """Let the other tasks run; hold the input while the store is behind."""
        await asyncio.sleep(0)
        if self.outbox is not None:
            await self.outbox.wait_room()

    def snapshot(self, request: SnapshotRequest) -> tuple[int, list[Message]]:
        if self.outbox is not None:  # every zone in the reply is announced before its seq
            self.outbox.settle_now()
        # every active zone: the server keeps those whose topic starts with the request's prefix
        items: list[Message] = [ZoneSnapshotItem(zone=zone) for zone in self.registry.active()]
        self.pub.flush()
        return self.pub.seq, items

    async def price_loop(self) -> None:
        while True:
            batch = await self.sub.recv_batch()
            start = 0
            while start < len(batch):
                t0 = self.turns.start()
                was, start = start, self.prices(batch, start)
                self.turns.done("prices", t0, "%d prices", start - was)
                last = batch[start - 1][1]
                self.observe_stream(last.publish_ns if isinstance(last, Price) else 0)
                await self.next_turn()  # recv_batch does not yield while prices are queued

    async def detector_loop(self) -> None:
        while True:
            msgs = await self.puller.recv_batch()
            start = 0
            while start < len(msgs):
                t0 = self.turns.start()
                was, start = start, self.detector_events(msgs, start)
                self.turns.done("detector_events", t0, "%d events", start - was)
                await self.next_turn()

    async def flush_loop(self) -> None:
        assert self.store is not None
        interval = self.ctx.config.store_flush_interval
        while True:
            await self.clock.sleep(interval)
            t0 = self.turns.start()
            self.flush_store()
            self.turns.done("store", t0, "the zones' flush")

    async def log_loop(self) -> None:
        while True:
            await self.clock.sleep(1.0)
            self.skip_log.flush()

    async def detector_state_loop(self) -> None:
        cfg = self.ctx.config
        while True:
            await self.clock.sleep(cfg.detector_state_interval)
            t0 = self.turns.start()
            self.flush_store(detector_symbols=cfg.detector_state_batch)
            self.turns.done("store", t0, "the detectors' state")

    # ------------------------------------------------------------------------------------------
    async def bind(self) -> None:
        """Bind the service's sockets on the event loop (a port still in use is retried there)."""
        for owner in (self.pub, self.puller, self.snapshots):
            await owner.bound(self.clock)

    async def run(self) -> None:
        ctx = self.ctx
        now = self.clock.time_ns()
        self.log_filter.install()
        log.info("core: %s", compiled.status("services.registry"))
        await self.bind()
        self.pub.start()
        self.snapshots.start()
        if self.store is not None:
            zones = stored_zones(self.store, now, self.limits, self.skip_log)
            restored = self.registry.restore(zones, now)
            nxt = self.registry.next_deadline_ns()
            overdue = nxt is not None and nxt <= now
            log.info("restored %d zone(s) from %s; some overdue: %s", restored, self.store.path, overdue)
            if overdue:
                # Give subscribers a moment to (re)connect before the overdue zones expire.
                await sleep_or_wake(self.clock, ctx.config.restore_expire_delay, ctx.stopping)
        self.emit()
        # What start-up made (modules, the restored state) lives as long as the process: out of
        # the cyclic GC's full collections, whose pauses are the registry's longest stalls.
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self.turns.on_gc)
        loops: dict[str, Coroutine[Any, Any, None]] = {
            "prices": self.price_loop(),
            "detector-events": self.detector_loop(),
            "expiry": self.expiry_loop(),
            "skip-log": self.log_loop(),
            "turns": self.turns.probe(),
        }
        if self.outbox is not None:
            loops["outbox"] = self.outbox.run()
        if self.detectors is not None:
            loops["candles"] = self.candle_loop()
        if self.store is not None:
            loops["store-flush"] = self.flush_loop()
            if self.detectors is not None:
                loops["detector-state"] = self.detector_state_loop()
        try:
            await run_loops(ctx.stopping, loops)
        finally:
            self.emit()
            if self.outbox is not None:
                self.outbox.close()  # the writes in flight, then their events
            await self.snapshots.close()
            self.sub.close()
            self.puller.close()
            await self.pub.close()
            if self.store is not None:
                if self.detectors is not None:
                    tfs = self.detectors.timeframes
                    self.store.states_removed([(s, tf) for s in self.detectors.take_evicted() for tf in tfs])
                    self.store.states_changed(self.detectors.changed(None))
                self.store.close()  # a last write, here on the loop: the outbox is closed
            self.skip_log.flush()
            self.log_filter.remove()
            gc.callbacks.remove(self.turns.on_gc)
            log.info("stopped with %d zone(s) held", len(self.registry))


async def main(ctx: ServiceContext[RegistryConfig]) -> None:
    await RegistryService(ctx).run()
