"""Bad JSON-RPC answers (timeouts, HTTP errors, garbage, error objects, missing batch items) through
a faulty proxy in front of the real node: retried or counted, never fatal, state still exact."""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncIterator, Sequence
from typing import Self

import aiohttp
import pytest
from aiohttp import web

from services.sync.coordinator import StartupCoordinator
from services.sync.follower import LogFollower
from services.sync.rpc import RpcClient
from services.sync.rpc_scraper import RpcScraper
from shared.messages import PoolSpec
from tests.ports import free_port
from tests.sync.chain import Chain, Trader, pools_view
from tests.sync.test_follower import Synced, addresses

FAULTS = ["ok", "http500", "ok", "garbage", "ok", "hang", "ok", "error", "ok", "drop_one", "ok"]


class FaultyProxy:
    def __init__(self, upstream: str, faults: Sequence[str] = FAULTS) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.faults = itertools.cycle(faults)
        self.seen: dict[str, int] = {}
        self.never = asyncio.Event()
        self.rng = random.Random(5)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        fault = next(self.faults)
        self.seen[fault] = self.seen.get(fault, 0) + 1
        if fault == "http500":
            return web.Response(status=500, text="upstream hiccup")
        if fault == "garbage":
            return web.Response(body=b"\x00not json{", content_type="application/json")
        if fault == "hang":
            await self.never.wait()  # the client's timeout fires first
        async with self.session.post(
            self.upstream, data=body, headers={"content-type": "application/json"}
        ) as r:
            reply = json.loads(await r.read())
        if fault == "error":
            items = reply if isinstance(reply, list) else [reply]
            i = self.rng.randrange(len(items))
            items[i] = {
                "jsonrpc": "2.0",
                "id": items[i]["id"],
                "error": {"code": -32000, "message": "header not found"},
            }
            reply = items if isinstance(reply, list) else items[0]
        if fault == "drop_one" and isinstance(reply, list) and len(reply) > 1:
            reply = reply[1:]
        return web.json_response(reply)

    async def __aenter__(self) -> Self:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.never.set()
        await self.runner.cleanup()
        await self.session.close()


@pytest.fixture
async def proxy(chain: Chain) -> AsyncIterator[FaultyProxy]:
    async with FaultyProxy(chain.a.url) as p:
        yield p


async def test_scrape_and_follow_through_bad_answers_stay_exact(chain: Chain, proxy: FaultyProxy) -> None:
    trader = Trader(chain, seed=41)
    for _ in range(10):
        trader.block(8)
    rpc = RpcClient([proxy.url], timeout=0.5, retries=6, backoff_initial=0.01, max_batch=50)
    follower = LogFollower(rpc, addresses=lambda: addresses(chain), poll_interval=0.02, backoff_initial=0.01)
    scraper = RpcScraper(rpc, state_view=chain.state_view, retries=6)
    coord = StartupCoordinator(follower, scraper, v3_v4_batch=2, replay_wait=30)
    follower.start()
    try:
        await asyncio.wait_for(follower.connected.wait(), 20)
        await coord.cold_start([PoolSpec(**s) for s in chain.specs()])
        s = Synced(chain, follower, coord)
        for _ in range(8):
            trader.block(8)
            await s.catch_up(timeout=30)
        number, _ = chain.head()
        assert pools_view(coord.processor.pools) == chain.truth(number)
    finally:
        await follower.close()
        await rpc.close()
    st = rpc.stats
    assert st.timeouts and st.garbage and st.transport_errors and st.rpc_errors and st.retries
    assert {"http500", "garbage", "hang", "error", "drop_one"} <= set(proxy.seen)
