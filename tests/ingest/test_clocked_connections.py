"""The connection's PING, silence watchdog and reconnect backoff, and the pool's recycling, timed by
the FakeClock: real sockets to the simulator, no real seconds waited."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web

from services.ingest.connection import Connection
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer
from shared.clock import FakeClock, settle
from shared.messages import Message
from tests.helpers import eventually
from tests.ports import free_port


@asynccontextmanager
async def quiet_simulator(n_assets: int) -> AsyncIterator[tuple[PolymarketServer, str]]:
    """The simulator's WebSocket with no market moving: data is the books sent on subscribe."""
    server = PolymarketServer(MarketSim(n_assets, seed=4), events_per_s=0)
    runner = web.AppRunner(server.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield server, f"ws://127.0.0.1:{port}/ws/market"
    finally:
        await server.stop()
        await runner.cleanup()


def equals(read: Callable[[], int], target: int) -> Callable[[], bool]:
    return lambda: read() == target


async def advance(clock: FakeClock, seconds: float, sleepers: int) -> None:
    """Move the fake clock once the expected number of timers are waiting on it, so that none of
    them is registered after the move (and measured from the later time)."""
    await eventually(
        lambda: clock.sleepers >= sleepers, wake=None, timeout=5.0, what=f"{sleepers} sleepers on the clock"
    )
    clock.advance(seconds)
    await settle()  # the woken timers run their next step


async def test_ping_every_interval_silence_reset_at_the_timeout_and_reconnect_after_backoff() -> None:
    clock = FakeClock()
    async with quiet_simulator(4) as (server, url), aiohttp.ClientSession() as session:
        frames: list[str | bytes] = []

        def on_frame(conn_id: str, data: str | bytes) -> int:
            frames.append(data)
            return 1

        conn = Connection(
            "c1",
            url,
            session,
            lambda: list(server.sim.assets),
            on_frame,
            ping_interval=10.0,
            silence_timeout=60.0,
            backoff_base=0.5,
            backoff_cap=4.0,
            rng=random.Random(1),
            clock=clock,
        )
        conn.start()
        await asyncio.wait_for(conn.delivered.wait(), 5)
        assert len(frames) == 1  # the books
        sim_conn = next(iter(server.conns.values()))

        for second in range(10, 60, 10):  # the ping and the watchdog wait on the clock
            await advance(clock, 10.0, sleepers=2)
            await eventually(
                equals(lambda: conn.stats.pongs, second // 10),
                wake=None,
                timeout=5.0,
                what=f"the PONG at {second} s",
            )
        assert sim_conn.pings == 5
        await advance(clock, 9.9, sleepers=2)  # 59.9 s without data (PONGs are not data)
        assert conn.stats.silence_resets == 0 and conn.is_live

        await advance(clock, 0.2, sleepers=2)
        await eventually(
            lambda: conn.stats.reconnects == 1, wake=None, timeout=5.0, what="the silent socket dropped"
        )
        assert conn.stats.silence_resets == 1 and conn.stats.connects == 1
        # it had delivered: the backoff starts over, 0.25-0.5 s on the clock
        await advance(clock, 0.2, sleepers=1)
        assert conn.stats.connects == 1
        await advance(clock, 0.3, sleepers=1)
        await eventually(
            lambda: len(frames) == 2, wake=None, timeout=5.0, what="the books again after the reconnect"
        )
        assert conn.stats.connects == 2 and conn.backoff.failures == 1  # since the last delivery
        await conn.stop()


async def test_a_connection_that_never_connects_backs_off_doubling_on_the_clock() -> None:
    clock = FakeClock()
    async with aiohttp.ClientSession() as session:
        conn = Connection(
            "c1",
            f"ws://127.0.0.1:{free_port()}/ws/market",  # nothing listens
            session,
            lambda: ["1"],
            lambda cid, data: 1,
            backoff_base=1.0,
            backoff_cap=8.0,
            rng=random.Random(2),
            clock=clock,
        )
        conn.start()
        ceilings = [1.0, 2.0, 4.0, 8.0, 8.0]
        for i, ceiling in enumerate(ceilings, start=1):
            await eventually(
                equals(lambda: conn.stats.errors, i), wake=None, timeout=5.0, what=f"failure {i}"
            )
            await advance(clock, ceiling / 2 - 0.01, sleepers=1)  # never sooner than half the ceiling
            assert conn.stats.errors == i
            await advance(clock, ceiling / 2 + 0.01, sleepers=1)
        await eventually(
            lambda: conn.stats.errors == len(ceilings) + 1, wake=None, timeout=5.0, what="the last attempt"
        )
        await conn.stop()


class Rig:
    """Subscriptions, router and pool wired as the service wires them, on the fake clock."""

    def __init__(self, url: str, session: aiohttp.ClientSession, clock: FakeClock) -> None:
        self.subscriptions = Subscriptions()
        self.published: list[tuple[str, Message]] = []
        self.router = Router(lambda topic, msg: self.published.append((topic, msg)), clock=clock)
        self.conns: dict[str, Connection] = {}
        self.pool = ConnectionPool(
            self.subscriptions,
            self.router,
            Limits(min_recycle_age=300.0, pollution_threshold=0.3),
            self.connection,
            subscribe_interval=30.0,
            recycle_timeout=30.0,
            handoff_grace=1.0,
            clock=clock,
        )
        self.url, self.session, self.clock = url, session, clock

    def connection(self, conn_id: str) -> Connection:
        subs = self.subscriptions
        conn = Connection(
            conn_id,
            self.url,
            self.session,
            lambda: subs.live_assets(conn_id),
            self.router.handle_frame,
            ping_interval=1000.0,
            silence_timeout=1000.0,
            on_connected=self.pool.on_connected,
            clock=self.clock,
        )
        self.conns[conn_id] = conn
        return conn


async def test_a_polluted_connection_is_recycled_once_old_enough_on_the_clock() -> None:
    clock = FakeClock()
    async with quiet_simulator(10) as (server, url), aiohttp.ClientSession() as session:
        rig = Rig(url, session, clock)
        assets = list(server.sim.assets)
        assert await rig.pool.force_subscribe(assets) == "c1"
        await asyncio.wait_for(rig.conns["c1"].delivered.wait(), 5)
        await rig.pool.start()
        rig.subscriptions.mark_expired(assets[:4])  # 40 % polluted, above the 30 % threshold
        # passes every 30 s; a connection younger than 300 s is left alone. On the clock: the
        # pass loop, c1's PING and watchdog
        for _ in range(9):
            await advance(clock, 30.0, sleepers=3)
        assert clock.monotonic() == 270.0
        assert rig.pool.stats.opened == 1 and list(rig.pool.connections) == ["c1"]

        await advance(clock, 30.0, sleepers=3)  # 300 s: recycled
        await eventually(lambda: "c2" in rig.conns, wake=None, timeout=5.0, what="the replacement opened")
        await asyncio.wait_for(rig.conns["c2"].delivered.wait(), 5)
        assert server.connection_sizes() == [10, 6]  # the replacement holds only the live assets
        assert rig.pool.stats.recycles == 0  # the old one drains for handoff_grace on the clock
        await advance(clock, 1.0, sleepers=6)  # the grace, the loop, c1 and c2
        await eventually(
            lambda: rig.pool.stats.recycles == 1, wake=None, timeout=5.0, what="the old connection closed"
        )
        assert list(rig.pool.connections) == ["c2"]
        assert set(rig.router.assets) == set(assets[4:])  # the expired are released
        await eventually(
            lambda: server.connection_sizes() == [6],
            wake=server.changed,
            timeout=5.0,
            what="the old socket closed",
        )
        await rig.pool.stop()


async def test_a_replacement_that_delivers_nothing_is_abandoned_after_recycle_timeout() -> None:
    clock = FakeClock()
    async with quiet_simulator(10) as (server, url), aiohttp.ClientSession() as session:
        rig = Rig(url, session, clock)
        assets = list(server.sim.assets)
        await rig.pool.force_subscribe(assets)
        await asyncio.wait_for(rig.conns["c1"].delivered.wait(), 5)
        server.stall_above = 1  # a new connection of 6 assets stalls: no books
        await rig.pool.start()
        rig.subscriptions.mark_expired(assets[:4])
        for _ in range(10):  # 300 s: recycled
            await advance(clock, 30.0, sleepers=3)
        await eventually(
            lambda: server.connection_sizes() == [10, 6],
            wake=server.changed,
            timeout=5.0,
            what="the silent replacement subscribed",
        )
        # the recycle timeout, the loop, c1 and c2
        await advance(clock, 29.0, sleepers=6)
        assert rig.pool.stats.recycle_failures == 0
        await advance(clock, 1.0, sleepers=6)
        await eventually(
            lambda: rig.pool.stats.recycle_failures == 1,
            wake=None,
            timeout=5.0,
            what="the replacement abandoned",
        )
        assert list(rig.pool.connections) == ["c1"] and rig.pool.stats.recycles == 0
        assert set(rig.router.assets) == set(assets)  # the old connection still holds them all
        await rig.pool.stop()
