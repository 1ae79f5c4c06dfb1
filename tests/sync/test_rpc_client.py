"""The JSON-RPC client has one retry layer: a call is at most ``retries + 1`` POSTs, whatever fails,
each retry after a backoff on the injected clock, over the configured URLs in turn."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from services.sync.rpc import RpcClient, RpcError, RpcUnavailable
from shared.clock import FakeClock
from tests.ports import free_port

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RecordingClock(FakeClock):
    """Sleeps return at once, time moved by the delay; the delays are kept."""

    def __init__(self) -> None:
        super().__init__()
        self.slept: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)


class Endpoint:
    """A JSON-RPC endpoint that answers every POST with ``reply`` and counts them."""

    def __init__(self, reply: Handler) -> None:
        self.reply = reply
        self.posts = 0
        self.url = f"http://127.0.0.1:{free_port()}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.posts += 1
        await request.read()
        return await self.reply(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/", self.handle)
        self.runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", int(self.url.rsplit(":", 1)[1])).start()


async def http500(_request: web.Request) -> web.StreamResponse:
    return web.Response(status=500, text="down")


async def garbage(_request: web.Request) -> web.StreamResponse:
    return web.Response(body=b"\x00not json{", content_type="application/json")


async def node_error(request: web.Request) -> web.StreamResponse:
    rid = (await request.json())["id"]
    return web.json_response({"jsonrpc": "2.0", "id": rid, "error": {"code": -32000, "message": "nope"}})


@pytest.fixture
async def endpoints() -> AsyncIterator[list[Endpoint]]:
    made: list[Endpoint] = []
    yield made
    for ep in made:
        await ep.runner.cleanup()


async def serve(endpoints: list[Endpoint], reply: Handler) -> Endpoint:
    ep = Endpoint(reply)
    await ep.start()
    endpoints.append(ep)
    return ep


@pytest.mark.parametrize("reply", [http500, garbage], ids=["http500", "garbage"])
async def test_a_failing_endpoint_gets_retries_plus_one_posts(
    endpoints: list[Endpoint], reply: Handler
) -> None:
    ep = await serve(endpoints, reply)
    clock = RecordingClock()
    rpc = RpcClient([ep.url], retries=3, backoff_initial=0.05, backoff_max=2.0, clock=clock)
    try:
        with pytest.raises(RpcUnavailable):
            await rpc.call("eth_blockNumber")
        assert ep.posts == 4  # not 16: the transport and the reply are retried in one layer
        assert rpc.stats.retries == 3 and rpc.stats.failures == 1
        # capped exponential with equal jitter: each delay in [ceiling / 2, ceiling]
        for n, delay in enumerate(clock.slept):
            ceiling = min(2.0, 0.05 * 2**n)
            assert ceiling / 2 <= delay <= ceiling
        assert len(clock.slept) == 3

        ep.posts = 0
        with pytest.raises(RpcUnavailable):
            await rpc.batch([("eth_blockNumber", []), ("eth_chainId", [])])
        assert ep.posts == 4
    finally:
        await rpc.close()


async def test_retries_turn_to_the_next_url(endpoints: list[Endpoint]) -> None:
    first, second = await serve(endpoints, http500), await serve(endpoints, http500)
    rpc = RpcClient([first.url, second.url], retries=3, clock=RecordingClock())
    try:
        with pytest.raises(RpcUnavailable):
            await rpc.call("eth_blockNumber")
    finally:
        await rpc.close()
    assert (first.posts, second.posts) == (2, 2)


async def test_a_node_error_is_returned_at_once_or_retried_in_the_same_layer(
    endpoints: list[Endpoint],
) -> None:
    ep = await serve(endpoints, node_error)
    rpc = RpcClient([ep.url], retries=2, clock=RecordingClock())
    try:
        with pytest.raises(RpcError):
            await rpc.call("eth_call")
        assert ep.posts == 1
        with pytest.raises(RpcError):
            await rpc.call("eth_call", retry_errors=True)
        assert ep.posts == 1 + 3
    finally:
        await rpc.close()
