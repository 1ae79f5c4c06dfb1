"""The connection pool (ENG-001) with the recycler (ENG-005): the async shell over the planner.

Every ``subscribe_interval`` (30 s) it places pending assets (spare capacity on live
connections first, then new connections of 400, a new one only for at least 50 unless forced),
closes connections whose assets all expired, and recycles polluted ones: a replacement opens
with only the live assets, the router hands each asset over without gap or duplicate once the
replacement delivers, then the old connection drains briefly and closes.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from services.ingest.connection import Connection
from services.ingest.planner import ConnView, Limits, plan, should_recycle, total_capacity
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions
from shared.backoff import sleep_or_wake
from shared.clock import Clock, RealClock

log = logging.getLogger("poolwire.ingest.pool")

ConnectionFactory = Callable[[str], Connection]  # connection id -> a connection, not started


@dataclass(slots=True)
class ConnectionInfo:
    connection: Connection
    created_at: float  # clock.monotonic()
    is_draining: bool = False


@dataclass(slots=True)
class PoolStats:
    opened: int = 0
    closed: int = 0
    recycles: int = 0
    recycle_failures: int = 0
    dynamic_subscribes: int = 0  # assets placed on spare capacity of live connections
    forced: int = 0


class ConnectionPool:
    def __init__(
        self,
        subscriptions: Subscriptions,
        router: Router,
        limits: Limits,
        factory: ConnectionFactory,
        *,
        subscribe_interval: float = 30.0,
        recycle_timeout: float = 30.0,
        handoff_grace: float = 1.0,
        stop_timeout: float = 8.0,
        clock: Clock | None = None,
    ) -> None:
        self.subscriptions = subscriptions
        self.router = router
        self.limits = limits
        self.factory = factory
        self.subscribe_interval = subscribe_interval
        self.recycle_timeout = recycle_timeout
        self.handoff_grace = handoff_grace
        self.stop_timeout = stop_timeout
        self.clock: Clock = clock or RealClock()
        self.connections: dict[str, ConnectionInfo] = {}
        self.stats = PoolStats()
        self._ids = itertools.count(1)
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the subscription loop (its first pass runs now)."""
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(
                self._subscription_loop(), name="ingest-pool"
            )

    async def stop(self) -> None:
        """Stop the loop and every connection, concurrently, within ``stop_timeout``."""
        for task in [self._loop_task, *self._tasks]:
            if task is not None:
                task.cancel()
        await asyncio.gather(
            *[t for t in [self._loop_task, *self._tasks] if t is not None], return_exceptions=True
        )
        self._loop_task = None
        conns = [info.connection for info in self.connections.values()]
        await asyncio.gather(*(c.stop(self.stop_timeout) for c in conns), return_exceptions=True)
        self.stats.closed += len(conns)
        self.connections.clear()

    def wake(self) -> None:
        """Run a subscription pass now (new pending assets arrived)."""
        self._wake.set()

    async def _subscription_loop(self) -> None:
        while True:
            try:
                await self._process_pending_markets()
                await self._check_for_recycling()
            except Exception:
                log.exception("subscription pass failed")
            await sleep_or_wake(self.clock, self.subscribe_interval, self._wake)
            self._wake.clear()

    # -- placing assets --------------------------------------------------------------------------

    def _views(self) -> list[ConnView]:
        return [
            ConnView(
                cid,
                self.subscriptions.connection_stats(cid).total,
                info.connection.is_live and not info.is_draining,
            )
            for cid, info in self.connections.items()
        ]

    async def _process_pending_markets(self, force: bool = False) -> list[str]:
        """Place pending assets; returns the connections that took some."""
        async with self._lock:
            p = plan(self._views(), self.subscriptions.pending_count(), self.limits, force=force)
            used: list[str] = []
            for cid, n in p.fills:
                assets = self.subscriptions.take_pending_batch(n)
                if not assets:
                    break
                self.subscriptions.mark_subscribed(assets, cid)
                self.router.assign(assets, cid)
                await self.connections[cid].connection.subscribe(assets)
                self.stats.dynamic_subscribes += len(assets)
                used.append(cid)
            for n in p.opens:
                assets = self.subscriptions.take_pending_batch(n)
                if not assets:
                    break
                used.append(self._open(assets))
            return used

    def _open(self, assets: list[str]) -> str:
        cid = f"c{next(self._ids)}"
        self.subscriptions.mark_subscribed(assets, cid)
        self.router.assign(assets, cid)
        conn = self.factory(cid)
        self.connections[cid] = ConnectionInfo(conn, self.clock.monotonic())
        conn.start()
        self.stats.opened += 1
        log.info("%s: opened with %d assets", cid, len(assets))
        return cid

    async def force_subscribe(self, asset_ids: list[str]) -> str:
        """Subscribe these assets now, ahead of the queue and below the minimum; returns the
        connection id that holds the first of them ("" if none could be placed)."""
        self.stats.forced += len(asset_ids)
        self.subscriptions.add(asset_ids, priority=True, source="force")
        await self._process_pending_markets(force=True)
        for asset in asset_ids:
            rec = self.subscriptions.records.get(asset)
            if rec is not None and rec.conn is not None:
                return rec.conn
        return ""

    # -- recycling -------------------------------------------------------------------------------

    async def _check_for_recycling(self) -> None:
        now = self.clock.monotonic()
        for cid, info in list(self.connections.items()):
            if info.is_draining:
                continue
            s = self.subscriptions.connection_stats(cid)
            if s.total and s.live == 0:
                log.info("%s: every asset expired: closing", cid)
                await self._remove_connection(cid)
            elif should_recycle(s.total, s.expired, now - info.created_at, self.limits):
                info.is_draining = True
                task = asyncio.get_running_loop().create_task(self._initiate_recycling(cid))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _initiate_recycling(self, old: str) -> None:
        info = self.connections[old]
        live = self.subscriptions.live_assets(old)
        expired = self.subscriptions.assets_of(old) - set(live)
        log.info("%s: recycling (%d live, %d expired)", old, len(live), len(expired))
        new = f"c{next(self._ids)}"
        self.subscriptions.move(live, new)
        self.router.begin_handoff(live, new)
        conn = self.factory(new)
        self.connections[new] = ConnectionInfo(conn, self.clock.monotonic())
        conn.start()
        self.stats.opened += 1
        if not await sleep_or_wake(self.clock, self.recycle_timeout, conn.delivered):
            log.warning(
                "%s: replacement %s delivered nothing in %.0f s: keeping the old one",
                old,
                new,
                self.recycle_timeout,
            )
            self.router.abort_handoff(live, new)
            self.subscriptions.move(live, old)
            self.connections.pop(new, None)
            await conn.stop(self.stop_timeout)
            self.stats.closed += 1
            self.stats.recycle_failures += 1
            info.is_draining = False
            info.created_at = self.clock.monotonic()  # do not retry at once
            return
        await self.clock.sleep(self.handoff_grace)  # the old socket's frames in flight still count
        await info.connection.stop(self.stop_timeout)
        self.router.complete_handoff(live, new)
        self.subscriptions.release_connection(old)
        self.router.release(expired)
        self.connections.pop(old, None)
        self.stats.closed += 1
        self.stats.recycles += 1
        log.info("%s: recycled into %s", old, new)

    async def _remove_connection(self, cid: str) -> None:
        info = self.connections.pop(cid, None)
        if info is None:
            return
        await info.connection.stop(self.stop_timeout)
        gone = self.subscriptions.assets_of(cid)
        back = self.subscriptions.release_connection(cid)
        self.router.release(gone - set(back))
        self.stats.closed += 1

    def on_connected(self, conn: Connection, assets: list[str]) -> None:
        """A (re)connect subscribed only live assets: the expired slots are gone from it."""
        if conn.id in self.connections:
            dropped = self.subscriptions.drop_expired(conn.id)
            self.router.release(dropped)

    # -- stats -----------------------------------------------------------------------------------

    def connection_report(self) -> list[dict[str, Any]]:
        now = self.clock.monotonic()
        out = []
        for cid, info in self.connections.items():
            s = self.subscriptions.connection_stats(cid)
            c = info.connection
            out.append(
                {
                    "connection_id": cid,
                    "assets": s.total,
                    "live": s.live,
                    "expired": s.expired,
                    "pollution": s.pollution,
                    "age_s": now - info.created_at,
                    "is_live": c.is_live,
                    "is_draining": info.is_draining,
                    "connects": c.stats.connects,
                    "reconnects": c.stats.reconnects,
                    "silence_resets": c.stats.silence_resets,
                    "frames": c.stats.frames,
                    "pings": c.stats.pings,
                    "pongs": c.stats.pongs,
                    "errors": c.stats.errors,
                }
            )
        return out

    def capacity(self) -> int:
        return total_capacity(self._views(), self.limits)
