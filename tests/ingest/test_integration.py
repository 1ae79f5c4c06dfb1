"""ingest as a real process against the simulator (in this test's loop) over real sockets."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer, SimConn
from shared.bus import Pusher, Subscriber
from shared.messages import BookChange, BookSnapshot, ForceSubscribe, Message
from tests.helpers import eventually, polling, spawn
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow


class CopyCountingServer(PolymarketServer):
    """Counts the copies of an update (a price_change entry, a trade) sent beyond the first: while
    two connections hold an asset (a recycling handoff), ingest receives each update twice and must
    publish it once and drop the other copy, counted. Sets ``changed`` on every frame it sends as
    well, so a test can wait on what was sent (frames, copies)."""

    extra_copies = 0

    def _route(self, ev: dict[str, Any], outbox: dict[SimConn, list[str]]) -> None:
        if ev["event_type"] == "price_change":
            assets = [e["asset_id"] for e in ev["price_changes"]]
        else:
            assets = [ev["asset_id"]]
        for asset in assets:
            n = sum(1 for c in self.subscribers.get(asset, ()) if not c.stalled)
            self.extra_copies += max(0, n - 1)
        super()._route(ev, outbox)

    async def _send(self, conn: SimConn, text: str) -> None:
        await super()._send(conn, text)
        self.changed.set()


@asynccontextmanager
async def simulator(
    n_assets: int,
    events_per_s: float = 200.0,
    server_cls: type[PolymarketServer] = PolymarketServer,
    **kw: Any,
) -> AsyncIterator[tuple[PolymarketServer, str, str]]:
    sim = MarketSim(n_assets, seed=21)
    server = server_cls(sim, events_per_s=events_per_s, tick=0.02, **kw)
    gamma = GammaServer(server)
    runners = [web.AppRunner(server.app), web.AppRunner(gamma.app)]
    urls = []
    for r in runners:
        await r.setup()
        port = free_port()
        await web.TCPSite(r, "127.0.0.1", port).start()
        urls.append(f"127.0.0.1:{port}")
    server.start()
    try:
        yield server, f"ws://{urls[0]}/ws/market", f"http://{urls[1]}"
    finally:
        await server.stop()
        for r in runners:
            await r.cleanup()


async def scraped_until(cond: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Wait for ``cond``, a figure scraped from the process's metrics (asked every 50 ms: there is
    no event to wait on)."""
    held = False

    async def ask() -> None:
        nonlocal held
        held = await cond()

    await eventually(lambda: held, wake=polling(ask), timeout=timeout, what=f"{cond.__name__} on /metrics")


def write_config(tmp: Path, ws_url: str, **ingest: Any) -> tuple[str, str, str, int]:
    pub, pull, metrics = tcp_endpoint(), tcp_endpoint(), free_port()
    section = {
        "pub": pub,
        "pull": pull,
        "snapshot": tcp_endpoint(),  # never the default port: shards and other tests run side by side
        "metrics_port": metrics,
        "ws_url": ws_url,
        "gamma_url": "",
        "subscribe_interval": "200ms",
        "ping_interval": "1s",
        "silence_timeout": "5s",
        "backoff_base": "100ms",
        "backoff_cap": "1s",
        **ingest,
    }
    path = tmp / "poolwire.yaml"
    path.write_text(yaml.safe_dump({"common": {"heartbeat_interval": 0.1}, "ingest": section}))
    return str(path), pub, pull, metrics


async def metric(port: int, name: str) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def stop(proc: subprocess.Popen[str], timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=timeout)
    return time.monotonic() - t0


async def test_1000_pending_make_400_400_200_and_stop_quickly(tmp_path: Path) -> None:
    async with simulator(1000) as (server, ws_url, _):
        cfg, *_ = write_config(tmp_path, ws_url, assets=list(server.sim.assets))
        with spawn("-m", "services.ingest", "--config", cfg) as proc:
            await eventually(
                lambda: server.connection_sizes() == [400, 400, 200],
                wake=server.changed,
                timeout=30,
                what="400/400/200",
            )
            took = await asyncio.to_thread(stop, proc)
            assert proc.returncode == 0 and took < 10.0


async def test_5200_assets_over_13_connections(tmp_path: Path) -> None:
    async with simulator(5200, events_per_s=100) as (server, ws_url, _):
        cfg, *_ = write_config(tmp_path, ws_url, assets=list(server.sim.assets))
        with spawn("-m", "services.ingest", "--config", cfg) as proc:
            await eventually(
                lambda: server.connection_sizes() == [400] * 13,
                wake=server.changed,
                timeout=60,
                what="13 x 400",
            )
            took = await asyncio.to_thread(stop, proc)
            assert proc.returncode == 0 and took < 10.0


async def test_discovery_and_below_minimum_waits_until_forced(tmp_path: Path) -> None:
    async with simulator(30) as (server, ws_url, http_url):
        # 30 assets discovered from Gamma (paged by 7, after_cursor) are below the minimum of 50
        cfg, pub, pull, metrics = write_config(tmp_path, ws_url, gamma_url=http_url, gamma_page_limit=7)
        async with Subscriber(pub, ["ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                await sub.wait_for_publisher("ingest", timeout=20)
                # let several subscription passes (every 200 ms) go by: heartbeats every 100 ms
                seen = 0
                while seen < 10:
                    seen += sum(1 for _ in await sub.recv_batch(timeout=5))
                assert await metric(metrics, "poolwire_ingest_assets") == 30
                assert await metric(metrics, "poolwire_ingest_discovery_polls_total") >= 1
                assert server.connection_sizes() == []
                pusher = Pusher(pull, sender="test")
                forced = ["999", next(iter(server.sim.assets))]
                await pusher.send(ForceSubscribe(asset_ids=forced), timeout=5)
                await eventually(
                    lambda: server.connection_sizes() == [31],
                    wake=server.changed,
                    timeout=20,
                    what="forced connection",
                )
                pusher.close()
                assert await asyncio.to_thread(stop, proc) < 10.0


def hashes_by_asset(msgs: list[tuple[str, Message]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for _, m in msgs:
        if isinstance(m, BookChange):
            out.setdefault(m.asset, []).append(m.hash)
    return out


def sim_hashes(history: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ev in history:
        for entry in ev.get("price_changes", ()):
            out.setdefault(entry["asset_id"], []).append(entry["hash"])
    return out


def assert_contiguous(got: dict[str, list[str]], truth: dict[str, list[str]], assets: set[str]) -> int:
    """Per asset, what was published is an unbroken run of the simulator's stream: no gap, no dup."""
    checked = 0
    for asset in assets:
        seq = got.get(asset, [])
        if not seq:
            continue
        full = truth[asset]
        start = full.index(seq[0])
        assert seq == full[start : start + len(seq)], f"gap or duplicate on {asset}"
        assert seq[-1] == full[-1], f"{asset}: missing the tail"
        checked += 1
    return checked


async def collect_until(
    sub: Subscriber, out: list[tuple[str, Message]], done: Callable[[], bool], timeout: float
) -> None:
    """Receive into ``out`` until ``done()``."""

    async def receive() -> None:
        out.extend(await sub.recv_batch(timeout=0.5))

    await eventually(
        done, wake=receive, timeout=timeout, what="the messages collected", state=lambda: len(out)
    )


async def collect_to_the_last(sub: Subscriber, out: list[tuple[str, Message]], last: dict[str, str]) -> None:
    """Receive into ``out`` until each asset's last published hash is its hash in ``last``."""
    await collect_until(
        sub, out, lambda: all(hashes_by_asset(out).get(a, [""])[-1] == h for a, h in last.items()), 20
    )


async def test_recycling_at_30_percent_no_gap_no_duplicate(tmp_path: Path) -> None:
    """A recycle with both sockets carrying the market: every update is published once, and every
    copy the second socket brings is dropped and counted (``handoff_duplicates`` while the
    replacement is a candidate, ``not_owner_drops`` once it owns the asset), exactly.

    The simulator pauses while the replacement subscribes, so its 70 books all repeat a state
    already published (exactly 70 duplicates, none republished); then it runs for a while during
    the handoff grace, both sockets live, and pauses again before the old socket closes, so that
    every copy it counts reached ingest.
    """
    async with simulator(100, events_per_s=300, server_cls=CopyCountingServer) as (server, ws_url, _):
        assert isinstance(server, CopyCountingServer)
        server.history = []
        cfg, pub, _pull, metrics = write_config(
            tmp_path,
            ws_url,
            assets=list(server.sim.assets),
            min_pending=10,
            recycle_age="500ms",
            handoff_grace="3s",
        )
        got: list[tuple[str, Message]] = []

        async def routed_everything() -> bool:
            """ingest routed every frame the simulator sent (PONGs aside: they are not routed)."""
            sent = sum(c.sent for c in server.conns.values())
            return await metric(metrics, "poolwire_ingest_frames_total") == sent

        async def dropped() -> float:
            return await metric(metrics, "poolwire_ingest_handoff_duplicates_total") + await metric(
                metrics, "poolwire_ingest_not_owner_drops_total"
            )

        async def books_dropped() -> bool:
            """The replacement's 70 books, each a copy of a published state, dropped."""
            return await dropped() >= 70

        async with Subscriber(pub, ["md.", "ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                await sub.wait_for_publisher("ingest", timeout=20)
                await eventually(
                    lambda: server.connection_sizes() == [100],
                    wake=server.changed,
                    timeout=20,
                    what="one connection",
                )
                (first_id,) = server.conns
                await collect_until(sub, got, lambda: len(hashes_by_asset(got)) > 20, 20)

                # quiet market: ingest's state is the simulator's before the handoff starts
                server.slow(0)
                await scraped_until(routed_everything, 5)
                assert await routed_everything(), "ingest did not route what the simulator sent"
                assert server.extra_copies == 0
                mark = len(got)
                resolved = await server.resolve(server.sim.open_markets()[:15])  # 30 of 100 assets
                gone = {a.asset_id for m in resolved for a in m.assets}
                live = set(server.sim.assets) - gone
                await eventually(
                    lambda: len(server.conns) == 2 and all(c.sent for c in server.conns.values()),
                    wake=server.changed,
                    timeout=20,
                    what="the replacement subscribed and sent its books",
                )
                assert server.connection_sizes() == [100, 70]
                await scraped_until(books_dropped, 5)
                assert await metric(metrics, "poolwire_ingest_handoff_duplicates_total") == 70

                # both sockets carry the market for a while, within the handoff grace
                server.slow(1.0)
                await eventually(
                    lambda: server.extra_copies > 50,
                    wake=server.changed,
                    timeout=20,
                    what="traffic on both sockets",
                )
                server.slow(0)
                assert first_id in server.conns, "the old socket closed before the end of the overlap"
                copies = server.extra_copies
                assert copies > 50  # the overlap carried traffic
                await eventually(
                    lambda: server.connection_sizes() == [70] and first_id not in server.conns,
                    wake=server.changed,
                    timeout=30,
                    what="the recycled connection",
                )

                # the new connection carries on alone
                server.slow(1.0)
                await collect_until(sub, got, lambda: not server.events < 2000, 30)
                server.slow(0)
                await asyncio.sleep(0)
                truth = sim_hashes(server.history)
                last = {a: truth[a][-1] for a in live if a in truth}
                await collect_to_the_last(sub, got, last)
                assert server.extra_copies == copies  # one connection since
                assert await metric(metrics, "poolwire_ingest_recycles_total") == 1
                # each copy dropped, counted once; none published (contiguity below: nothing published twice)
                assert await dropped() == 70 + copies
                republished = [m for _, m in got[mark:] if isinstance(m, BookSnapshot) and m.asset in live]
                assert republished == []
                assert assert_contiguous(hashes_by_asset(got), truth, live) >= 60
                assert sub.stats.gaps == 0
                assert await asyncio.to_thread(stop, proc) < 10.0


async def test_silent_stall_healed_and_garbage_counted(tmp_path: Path) -> None:
    async with simulator(60, events_per_s=300, server_cls=CopyCountingServer) as (server, ws_url, _):
        server.history = []
        cfg, pub, _pull, metrics = write_config(
            tmp_path, ws_url, assets=list(server.sim.assets), min_pending=10, silence_timeout="1s"
        )
        got: list[tuple[str, Message]] = []
        async with Subscriber(pub, ["md.", "ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                await eventually(
                    lambda: server.connection_sizes() == [60],
                    wake=server.changed,
                    timeout=20,
                    what="one connection",
                )
                await sub.wait_for_publisher("ingest", timeout=20)
                await collect_until(sub, got, lambda: len(hashes_by_asset(got)) > 20, 20)
                # garbage: counted, and the stream around it is intact
                sent = await server.garbage(7)
                (first_id,) = server.conns
                await eventually(
                    lambda: server.conns[first_id].sent > 50 if first_id in server.conns else False,
                    wake=server.changed,
                    timeout=10,
                    what="frames after the garbage",
                )
                # a silent stall: PING still answered, no data; ingest must reconnect on its own
                server.stall([first_id])
                await eventually(
                    lambda: first_id not in server.conns and server.connection_sizes() == [60],
                    wake=server.changed,
                    timeout=20,
                    what="the stalled connection replaced",
                )
                await collect_until(sub, got, lambda: server.events > 1500, 30)
                server.slow(0)
                await asyncio.sleep(0)
                truth = sim_hashes(server.history)
                last = {a: truth[a][-1] for a in server.sim.assets if a in truth}
                await collect_to_the_last(sub, got, last)
                decode_errors = await metric(metrics, "poolwire_ingest_decode_errors_total")
                legacy = await metric(metrics, "poolwire_ingest_legacy_events_total")
                unknown = await metric(metrics, "poolwire_ingest_unknown_events_total")
                assert decode_errors + legacy + unknown >= sent - 1  # 7 kinds of garbage, each counted
                assert await metric(metrics, "poolwire_ingest_silence_resets_total") >= 1
                # after the stall the new socket's books resynced state; changes on each side are unbroken
                published = hashes_by_asset(got)
                for asset, seq in published.items():
                    assert len(seq) == len(set(seq)), f"duplicate on {asset}"
                assert await asyncio.to_thread(stop, proc) < 10.0
