"""JSON-RPC replies of the wrong shape (wrong types, huge numbers, truncated JSON, a result that is
not a list, undecodable extra logs) from a proxy in front of the real node, into the real sync
process while it scrapes and follows. It keeps heartbeating, counts the bad replies, and once the
node answers well again its state equals the contracts."""

from __future__ import annotations

import asyncio
import copy
import json
import signal
import tempfile
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tests.helpers import eventually, spawn
from tests.ports import free_port
from tests.sync.chain import Chain, Trader
from tests.sync.test_bad_rpc import FaultyProxy
from tests.sync.test_fuzz_service import scrape
from tests.sync.test_node_outage import heartbeats
from tests.sync.test_rpc_service import Watch, assert_state, config

HUGE = "0x" + "f" * 80  # far outside uint64


def _first_block(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((i["result"] for i in items if isinstance(i.get("result"), dict)), None)


def block_wrong_type(items: list[dict[str, Any]]) -> bool:
    block = _first_block(items)
    if block is None:
        return False
    block["number"] = int(block["number"], 16)  # a JSON number, not a 0x quantity
    return True


def block_huge_number(items: list[dict[str, Any]]) -> bool:
    block = _first_block(items)
    if block is None:
        return False
    block["timestamp"] = HUGE
    return True


def block_short_hash(items: list[dict[str, Any]]) -> bool:
    block = _first_block(items)
    if block is None:
        return False
    block["hash"] = block["hash"][:40]
    return True


def logs_not_a_list(items: list[dict[str, Any]]) -> bool:
    item = next((i for i in items if isinstance(i.get("result"), list)), None)
    if item is None:
        return False
    item["result"] = {"logs": item["result"]}
    return True


def bogus_log(items: list[dict[str, Any]]) -> bool:
    """One more log in a block that has logs, that cannot decode (huge index, data not hex)."""
    item = next((i for i in items if isinstance(i.get("result"), list) and i["result"]), None)
    if item is None:
        return False
    extra = copy.deepcopy(item["result"][0])
    extra.update(logIndex=HUGE, data=12345)
    item["result"].append(extra)
    return True


def call_wrong_type(items: list[dict[str, Any]]) -> bool:
    item = next((i for i in items if isinstance(i.get("result"), str) and len(i["result"]) > 2), None)
    if item is None:
        return False
    item["result"] = int(item["result"][:18], 16)
    return True


# (name, the requests it applies to, what it does to the reply's items)
Mutation = tuple[str, bytes, Callable[[list[dict[str, Any]]], bool]]
MUTATIONS: list[Mutation] = [
    ("block_wrong_type", b'"eth_getBlockByNumber"', block_wrong_type),
    ("block_huge_number", b'"eth_getBlockByNumber"', block_huge_number),
    ("block_short_hash", b'"eth_getBlockByNumber"', block_short_hash),
    ("logs_not_a_list", b'"eth_getLogs"', logs_not_a_list),
    ("bogus_log", b'"eth_getLogs"', bogus_log),
    ("call_wrong_type", b'"eth_call"', call_wrong_type),
    ("truncated", b"", lambda items: True),
]


class ShapeProxy(FaultyProxy):
    """While ``active``, each reply is mangled by the next mutation that applies to it, each
    mutation ``budget`` times (then the replies are clean again: the service can get on)."""

    def __init__(self, upstream: str, budget: int = 3) -> None:
        super().__init__(upstream, faults=["ok"])
        self.active = True
        self.left = {name: budget for name, _, _ in MUTATIONS}
        self.turn = 0
        self.requests = 0
        self.answered = asyncio.Event()  # set at every request

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with self.session.post(
            self.upstream, data=body, headers={"content-type": "application/json"}
        ) as r:
            data = await r.read()
        self.requests += 1
        self.answered.set()
        if not self.active:
            return web.Response(body=data, content_type="application/json")
        reply = json.loads(data)
        items = reply if isinstance(reply, list) else [reply]
        for i in range(len(MUTATIONS)):
            name, needle, mutate = MUTATIONS[(self.turn + i) % len(MUTATIONS)]
            if self.left[name] and needle in body and mutate(items):
                self.left[name] -= 1
                self.seen[name] = self.seen.get(name, 0) + 1
                self.turn += i + 1
                out = json.dumps(reply).encode()
                return web.Response(body=out[: len(out) // 2] if name == "truncated" else out)
        return web.Response(body=data, content_type="application/json")


async def test_wrong_shapes_from_the_node_are_counted_and_state_stays_exact(chain: Chain) -> None:
    trader = Trader(chain, seed=81)
    for _ in range(2):
        trader.block(8)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        async with ShapeProxy(chain.a.url) as node:
            path, eps = config(
                chain, tmp, rpc_urls=[node.url], metrics_port=port, backoff_max="200ms",
                failed_pool_retry="200ms",
            )  # fmt: skip
            watch = Watch(eps["pub"])
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    await watch.sub.wait_for_publisher("sync", timeout=20)
                    for _ in range(100):  # blocks with trades until every mutation was served
                        if not any(node.left.values()):
                            break
                        trader.block(8)
                        await _until_requests(node, node.requests + 6, proc)
                    assert not any(node.left.values()), node.left
                    await heartbeats(eps["pub"], proc)
                    node.active = False
                    # a pool whose scrape failed is scraped again every failed_pool_retry: wait
                    # for every pool's state before the state is compared
                    pools = {"0x" + key.hex() for key in chain.truth(chain.head()[0])}
                    await watch.until_published(pools, proc)
                    trader.block(8)
                    await watch.until_head(chain, proc, nudge=True)
                    await assert_state(chain, eps["snapshot"])
                    figures = await asyncio.to_thread(scrape, port)
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
            finally:
                watch.sub.close()
    assert proc.returncode == 0, err[-3000:]
    assert set(node.seen) == {name for name, _, _ in MUTATIONS}
    event = 'poolwire_sync_follower_events_total{{event="{}"}}'.format
    rpc = 'poolwire_sync_rpc_events_total{{event="{}"}}'.format
    assert figures[rpc("garbage")] >= node.seen["truncated"]  # truncated JSON: asked again
    assert figures[event("bad_logs")] == node.seen["bogus_log"]  # each undecodable extra log skipped
    # wrong block objects and a logs result that is not a list: the step retried, or the start
    failed_steps = figures[event("rpc_failures")] + figures[event("chain_breaks")]
    failed_steps += figures['poolwire_sync_startup_failures_total{phase="cold_start"}']
    assert failed_steps >= 3
    scrape_retries = figures["poolwire_sync_pools_retried_total"]
    scrape_retries += figures['poolwire_sync_scrape_events_total{event="pools_retried"}']
    assert scrape_retries >= 1  # a pool whose eth_call answer had the wrong type: scraped again


async def _until_requests(node: ShapeProxy, n: int, proc: Any) -> None:
    await eventually(
        lambda: node.requests >= n,
        wake=node.answered,
        timeout=30,
        what=f"{n} requests at the node",
        state=lambda: node.requests,
        process=proc,
    )
