"""REST resync (issue 12) over real HTTP against the simulator's ``GET /book``: the client's
failures by reason, backoff and rate limit; and the real ingest process resyncing a mismatched
asset by REST, then, with the endpoint failing, by resubscribing on its WebSocket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from services.ingest.rest import RestClient, parse_book
from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer
from shared.bus import Subscriber
from shared.clock import FakeClock
from shared.messages import BookSnapshot
from tests.helpers import eventually, spawn
from tests.ingest.test_integration import metric, scraped_until, stop, write_config
from tests.ports import free_port


@asynccontextmanager
async def servers(n_assets: int) -> AsyncIterator[tuple[PolymarketServer, GammaServer, str, str]]:
    """The simulator's WebSocket and HTTP servers on real ports, no market events (the test's own)."""
    server = PolymarketServer(MarketSim(n_assets, seed=4), events_per_s=0)
    gamma = GammaServer(server)
    runners = [web.AppRunner(server.app), web.AppRunner(gamma.app)]
    ports = []
    for r in runners:
        await r.setup()
        ports.append(free_port())
        await web.TCPSite(r, "127.0.0.1", ports[-1]).start()
    try:
        yield server, gamma, f"ws://127.0.0.1:{ports[0]}/ws/market", f"http://127.0.0.1:{ports[1]}"
    finally:
        await server.stop()
        for r in runners:
            await r.cleanup()


def test_a_book_body_is_parsed_verbatim_and_anything_else_is_none() -> None:
    sim = MarketSim(2, seed=3)
    asset = next(iter(sim.assets.values()))
    body = json.dumps(asset.book_doc()).encode()
    book = parse_book(body, asset.asset_id)
    assert book is not None and book.hash == asset.hash and book.min_order_size == "5"
    assert [lv.price for lv in book.bids] == [lv["price"] for lv in asset.book_doc()["bids"]]
    assert parse_book(body, "another asset") is None
    assert parse_book(b'{"market":"0x1","bids":[', asset.asset_id) is None
    assert parse_book(b"[" * 100_000, asset.asset_id) is None


async def test_rest_client_counts_each_failure_and_backs_off() -> None:
    async with servers(4) as (server, gamma, _, http_url):
        asset = next(iter(server.sim.assets))
        clock = FakeClock()
        async with aiohttp.ClientSession() as session:
            rest = RestClient(session, http_url, rate=100, backoff_base=1, backoff_cap=8, clock=clock)

            async def get(token: str) -> bool:
                clock.advance(0.05)  # each request in its own turn of the rate limit: none waits
                return await rest.book(token) is not None

            assert await get(asset)
            assert not await get("404")  # unknown token: 404
            assert not await get(asset)  # backing off: not sent
            assert rest.stats.requests == 2 and gamma.book_requests == 2
            clock.advance(8)
            gamma.rest_fault = "garbage"
            assert not await get(asset)
            clock.advance(8)
            gamma.rest_fault = ""
            assert await get(asset) and await get(asset)  # recovered: the backoff is reset
            failures = {k: v for k, v in rest.stats.failures.items() if v}
            assert failures == {"http": 1, "backoff": 1, "bad_body": 1}
            assert rest.stats.books == 3
            clock.advance(0.05)
            book = await rest.book(asset)
            assert book is not None and book.hash == server.sim.assets[asset].hash

            refused = RestClient(session, f"http://127.0.0.1:{free_port()}", clock=clock)
            assert await refused.book(asset) is None and refused.stats.failures["connection"] == 1

            slow = RestClient(session, http_url, rate=1, max_wait=0.5, clock=clock)
            assert await slow.book(asset) is not None
            assert await slow.book(asset) is None  # its turn is 1 s away: not queued
            assert slow.stats.failures["busy"] == 1 and slow.stats.requests == 1


def bogus_change(server: PolymarketServer, asset: str) -> str:
    """A price_change of ``asset`` whose hash no book has: a mismatch under its pinned rule."""
    a = server.sim.assets[asset]
    entry = {"asset_id": asset, "price": "0.01", "size": "7", "side": "BUY", "hash": "0" * 40}
    return json.dumps(
        {
            "market": a.market.condition_id,
            "price_changes": [entry],
            "timestamp": str(server.now_ms()),
            "event_type": "price_change",
        }
    )


@pytest.mark.slow
async def test_ingest_resyncs_by_rest_and_falls_back_to_resubscribing(tmp_path: Path) -> None:
    async with servers(6) as (server, gamma, ws_url, http_url):
        cfg, pub, _, metrics = write_config(
            tmp_path,
            ws_url,
            gamma_url=http_url,
            rest_url=http_url,
            min_pending=1,
            resync_interval="1h",
            silence_timeout="60s",
        )
        first, second = list(server.sim.assets)[:2]
        async with Subscriber(pub, ["md.book.", "ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                books: dict[tuple[str, int], BookSnapshot] = {}  # by asset and topic_seq

                async def receive() -> None:
                    for _, m in await sub.recv_batch(timeout=1):
                        if isinstance(m, BookSnapshot):
                            books[m.asset, m.topic_seq] = m

                async def books_of(asset: str, n: int) -> BookSnapshot:
                    """The asset's n-th book on its topic (1: the subscription's, which this SUB
                    may or may not read before the test goes on; 2: the first resync's)."""
                    await eventually(
                        lambda: (asset, n) in books, wake=receive, timeout=20, what=f"book {n} of {asset}"
                    )
                    return books[asset, n]

                async def pinned() -> bool:
                    return await metric(metrics, "poolwire_ingest_hash_pins_total") == 6

                await sub.wait_for_publisher("ingest", timeout=20)  # connected: nothing lost from now
                await scraped_until(pinned, 20)
                assert await pinned()

                await server.inject([bogus_change(server, first)])
                rest_book = await books_of(first, 2)  # from the REST book: the sim's own state
                assert rest_book.hash == server.sim.assets[first].hash and gamma.book_requests == 1
                assert await metric(metrics, 'poolwire_ingest_resync_total{path="rest"}') == 1
                assert await metric(metrics, 'poolwire_ingest_resync_total{path="resubscribe"}') == 0
                assert await metric(metrics, "poolwire_ingest_hash_unverifiable_total") == 0
                assert [c.rejected for c in server.conns.values()] == [0]

                gamma.rest_fault = "error"
                await server.inject([bogus_change(server, second)])
                ws_book = await books_of(second, 2)  # the WebSocket sends it on the resubscribe
                assert ws_book.hash == server.sim.assets[second].hash and gamma.book_requests == 2

                async def fell_back() -> bool:
                    return await metric(metrics, 'poolwire_ingest_resync_total{path="resubscribe"}') == 1

                await scraped_until(fell_back, 10)
                assert await fell_back()
                assert await metric(metrics, 'poolwire_ingest_rest_failures_total{reason="http"}') == 1
                assert await metric(metrics, 'poolwire_ingest_resync_total{path="rest"}') == 1
                assert await metric(metrics, "poolwire_ingest_resyncs_total") == 2
                assert await asyncio.to_thread(stop, proc) < 10.0
