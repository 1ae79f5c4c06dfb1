"""The ingest service: discovery -> subscriptions -> pool of connections -> router -> PUB.

Thin async shell; the logic lives in the pure cores (protocol, book, router, subscriptions, planner).
A ROUTER answers Clone snapshots of the books (and mids) the router holds, so a consumer that
joins late, recovers from a gap or sees ingest restart gets the current books.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal

import aiohttp

from services.ingest.burst import BurstFlush
from services.ingest.config import IngestConfig
from services.ingest.connection import Connection
from services.ingest.discovery import discover
from services.ingest.force import ForceGate
from services.ingest.metrics import PUBLISH_LATENCY_BUCKETS, IngestCollector, LatencyHistogram
from services.ingest.pacing import TurnPacer
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.rest import RestClient, Resyncer
from services.ingest.router import Router
from services.ingest.shard import ANY_SHARD, Shard
from services.ingest.subscriptions import Subscriptions
from shared import compiled
from shared.bus import Publisher, Puller
from shared.constants import md_topic
from shared.messages import ForceSubscribe, MarketLifecycle, Message, SnapshotRequest
from shared.ratelog import RateLimitedLog
from shared.runner import ServiceContext
from shared.snapshot import SnapshotServer

SKIP_LOG_FLUSH = 5.0  # seconds between writes of the skip log's due summaries


async def main(ctx: ServiceContext[IngestConfig]) -> None:
    cfg = ctx.config
    log = ctx.log
    skip_log = RateLimitedLog(log, clock=ctx.clock.monotonic)  # bad input: a burst, then summaries
    shard = Shard(cfg.shard_index, cfg.shard_count)
    pub = await Publisher(
        cfg.pub,
        service="ingest",
        publisher_id=cfg.publisher_id or None,
        clock=ctx.clock,
        heartbeat_interval=ctx.common.heartbeat_interval,
        hold=ctx.common.rejoin_wait,
        wire_version=ctx.common.wire_version,
        bind_later=True,
    ).bound(ctx.clock)
    pub.start()
    puller = await Puller(
        cfg.pull, bind=True, max_message_size=ctx.common.max_message_size, bind_later=True
    ).bound(ctx.clock)
    ctx.bus_stats.add("pub", pub.stats)
    ctx.bus_stats.add("pull", puller.stats)
    subscriptions = Subscriptions()
    pool_ref: list[ConnectionPool] = []

    async def resubscribe(conn_id: str, asset: str) -> bool:
        info = pool_ref[0].connections.get(conn_id)
        return info is not None and await info.connection.resync(asset)

    def on_resync(conn_id: str, asset: str) -> None:
        resyncer_ref[0].request(conn_id, asset)

    resyncer_ref: list[Resyncer] = []

    def on_lifecycle(kind: Literal["new", "resolved"], market: str, assets: list[str], winner: str) -> None:
        if kind == "resolved":
            subscriptions.mark_expired(assets)
        elif cfg.subscribe_new_markets and subscriptions.add(assets, market=market, source="ws"):
            pool_ref[0].wake()

    router = Router(
        pub.publish,
        clock=ctx.clock,
        verify_hashes=cfg.verify_hashes,
        hash_check_every=cfg.hash_check_every,
        resync_interval=cfg.resync_interval,
        on_resync=on_resync,
        on_lifecycle=on_lifecycle,
        owns=shard.owns if shard.enabled else None,
        defer_checks=asyncio.get_running_loop().call_soon,
        before_checks=pub.flush,
        skip_log=skip_log,
    )

    def snapshot(request: SnapshotRequest) -> tuple[int, list[Message]]:
        # The router applies and publishes in one synchronous step: after the flush, its state is
        # exactly what the messages numbered up to pub.seq built.
        pub.flush()
        return pub.seq, router.snapshot(request.prefix)

    snapshots = await SnapshotServer(
        cfg.snapshot, snapshot, publisher=pub, max_message_size=ctx.common.max_message_size, bind_later=True
    ).bound(ctx.clock)
    latency = LatencyHistogram(PUBLISH_LATENCY_BUCKETS)
    observe = latency.observe
    handle = router.handle_frame
    perf = time.perf_counter

    # a long burst's first messages go out before its end
    burst = BurstFlush(pub.flush, asyncio.get_running_loop().call_soon)
    routed = burst.routed
    # under load, the loop wakes about once a pace, not once a frame (pacing.py)
    pacer = TurnPacer(cfg.loop_pace, asyncio.get_running_loop().call_soon)
    woke = pacer.woke
    if cfg.loop_pace:
        log.info("loop paced: under load, one turn every %.2f ms at most (loop_pace)", cfg.loop_pace * 1000)

    def on_frame(conn_id: str, data: str | bytes) -> int:
        t0 = perf()
        woke(t0)
        n = handle(conn_id, data)
        t1 = perf()
        observe(t1 - t0)
        routed(t0, t1)
        return n

    session = aiohttp.ClientSession()
    rest = (
        RestClient(
            session,
            cfg.rest_url,
            rate=cfg.rest_rate,
            timeout=cfg.rest_timeout,
            max_wait=cfg.rest_max_wait,
            backoff_base=cfg.rest_backoff_base,
            backoff_cap=cfg.rest_backoff_cap,
            clock=ctx.clock,
        )
        if cfg.rest_url
        else None
    )
    resyncer = Resyncer(router, rest, resubscribe)
    resyncer_ref.append(resyncer)

    def factory(conn_id: str) -> Connection:
        return Connection(
            conn_id,
            cfg.ws_url,
            session,
            lambda: subscriptions.live_assets(conn_id),
            on_frame,
            ping_interval=cfg.ping_interval,
            silence_timeout=cfg.silence_timeout,
            connect_timeout=cfg.connect_timeout,
            backoff_base=cfg.backoff_base,
            backoff_cap=cfg.backoff_cap,
            custom_features=cfg.custom_features,
            on_connected=pool.on_connected,
            clock=ctx.clock,
        )

    limits = Limits(
        per_connection=cfg.per_connection,
        hard_limit=cfg.hard_limit,
        min_pending=cfg.min_pending,
        max_connections=cfg.max_connections,
        pollution_threshold=cfg.pollution_threshold,
        min_recycle_age=cfg.recycle_age,
    )
    pool = ConnectionPool(
        subscriptions,
        router,
        limits,
        factory,
        subscribe_interval=cfg.subscribe_interval,
        recycle_timeout=cfg.recycle_timeout,
        handoff_grace=cfg.handoff_grace,
        stop_timeout=min(cfg.stop_timeout, 5.0),
        clock=ctx.clock,
    )
    pool_ref.append(pool)
    collector = IngestCollector(pool, router, subscriptions, shard, resyncer)
    ctx.metrics.register(collector)
    collector.snapshot_bad_requests = lambda: snapshots.bad_requests
    collector.burst_flushes = lambda: burst.flushes
    collector.pacer = pacer
    collector.publish_latency = latency
    gate = ForceGate(cfg.force_unknown_per_minute, ctx.clock.monotonic)
    collector.force_refused = gate.refused

    static = shard.mine(cfg.assets)
    collector.foreign_static = len(cfg.assets) - len(static)
    if static:
        subscriptions.add(static, source="static")

    async def pull_loop() -> None:
        while True:
            for msg in await puller.recv_batch():
                if isinstance(msg, ForceSubscribe):
                    collector.force_requests += 1
                    # a command may name a shard (a field newer messages carry; -1: each takes its own)
                    target = int(getattr(msg, "shard", ANY_SHARD))
                    mine, others = shard.forced(msg.asset_ids, target)
                    collector.forced_ignored += others
                    admitted = gate.admit(mine, subscriptions.records.__contains__)
                    assets = admitted.taken
                    if admitted.refused:
                        skip_log(
                            "force_refused",
                            "force_subscribe: refused %d of %d ids (%s); %d unknown ids taken",
                            admitted.refused_total,
                            len(mine),
                            ", ".join(f"{n} {reason}" for reason, n in admitted.refused.items()),
                            admitted.unknown_taken,
                        )
                    if not assets:
                        log.info(
                            "force_subscribe of %d assets: none to take (shard %s)", len(msg.asset_ids), shard
                        )
                        continue
                    cid = await pool.force_subscribe(assets)
                    log.info(
                        "force_subscribe of %d assets (%d for other shards) -> %s",
                        len(assets),
                        others,
                        cid or "nowhere",
                    )
                else:
                    kind = type(msg).__name__
                    collector.pull_ignored[kind] = collector.pull_ignored.get(kind, 0) + 1
                    skip_log("pull_ignored", "ignored a %s on PULL", kind)

    async def skip_log_loop() -> None:
        while True:
            await ctx.clock.sleep(SKIP_LOG_FLUSH)
            skip_log.flush()

    async def discovery_loop() -> None:
        while True:
            collector.discovery_polls += 1
            try:
                res = await discover(
                    session, cfg.gamma_url, params=cfg.gamma_params, limit=cfg.gamma_page_limit
                )
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                collector.discovery_errors += 1
                log.warning("gamma discovery failed: %r", exc)
            else:
                if res.cursor_stuck:
                    collector.discovery_cursor_stuck += 1
                added = 0
                opened = [(market, shard.mine(ids)) for market, ids in res.open]
                if shard.enabled:
                    collector.foreign_discovered = sum(len(ids) for _, ids in res.open) - sum(
                        len(ids) for _, ids in opened
                    )
                for token, (size, neg) in res.params.items():
                    router.set_params([token], size, neg)
                for market, ids in opened:
                    if cfg.max_assets and len(subscriptions.records) >= cfg.max_assets:
                        break
                    if ids:
                        added += subscriptions.add(ids, market=market, source="gamma")
                over = shard.mine(a for _, ids in res.closed for a in ids)
                if res.complete:  # gamma assets no longer listed as open are over
                    listed = {a for _, ids in opened for a in ids}
                    over += [
                        r.asset
                        for r in subscriptions.records.values()
                        if r.source == "gamma" and r.state != "expired" and r.asset not in listed
                    ]
                now_ns = ctx.clock.time_ns()
                for asset in subscriptions.mark_expired(over):
                    pub.publish(
                        md_topic("market", asset),
                        MarketLifecycle(asset=asset, status="expired", event_ns=now_ns),
                    )
                log.info(
                    "gamma: %d pages, %d new assets, %d pending",
                    res.pages,
                    added,
                    subscriptions.pending_count(),
                )
                if added:
                    pool.wake()
            await ctx.clock.sleep(cfg.discovery_interval)

    tasks = [
        asyncio.get_running_loop().create_task(pull_loop(), name="ingest-pull"),
        asyncio.get_running_loop().create_task(skip_log_loop(), name="ingest-skip-log"),
    ]
    if cfg.gamma_url:
        tasks.append(asyncio.get_running_loop().create_task(discovery_loop(), name="ingest-discovery"))
    # No wait for subscribers before subscribing: a PUB drops what it sends before a subscriber
    # has (re)connected (the slow joiner), and the books sent on subscribe are sent once; a
    # consumer that needs them (late, after a gap, after a restart) asks for the snapshot.
    snapshots.start()
    await pool.start()
    log.info(
        "ingest%s: publishing on %s, commands on %s, snapshots on %s, %d static assets; core: %s",
        f" shard {shard}" if shard.enabled else "",
        cfg.pub,
        cfg.pull,
        cfg.snapshot,
        len(static),
        compiled.status("services.ingest"),
    )
    try:
        await ctx.stopping.wait()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await resyncer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(pool.stop(), cfg.stop_timeout)
        await session.close()
        await snapshots.close()
        puller.close()
        await pub.close()
