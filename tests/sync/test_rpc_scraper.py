"""The JSON-RPC scraper against a real node running the real Uniswap contracts."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest

from services.sync.coordinator import StartupCoordinator
from services.sync.metrics import SyncCollector
from services.sync.rpc import Call, RpcClient, RpcError
from services.sync.rpc_scraper import RpcScraper
from services.sync.scraper import ScrapeProgress
from services.sync.source import BlockSource
from shared.messages import PoolSpec
from tests.sync.chain import Chain, Trader, pools_view


async def test_scrape_equals_the_contracts_after_hundreds_of_random_trades(chain: Chain) -> None:
    trader = Trader(chain, seed=11)
    for _ in range(40):
        trader.block(10)
    specs = [PoolSpec(**s) for s in chain.specs()]
    rpc = RpcClient([chain.a.url], max_batch=100)
    try:
        scraper = RpcScraper(rpc, state_view=chain.state_view, concurrency=2)
        v2 = await scraper.scrape([s for s in specs if s.protocol == "v2"], 500)
        rest = await scraper.scrape([s for s in specs if s.protocol != "v2"], 2)
    finally:
        await rpc.close()
    assert not v2.failed and not rest.failed
    number, bhash = chain.head()
    assert (rest.block, rest.hash) == (number, bhash)
    got = pools_view({p.key: p for p in v2.pools + rest.pools})
    truth = chain.truth(number)
    assert got == truth
    # the trader did reach many ticks
    assert sum(len(v[3]) for v in truth.values() if len(v) == 4) > 40
    assert v2.round_trips == 3  # pin, one batch, the pinned hash checked again
    assert scraper.stats.ticks > 40


async def test_missing_pools_are_retried_then_skipped_and_counted(chain: Chain) -> None:
    specs = [
        PoolSpec(protocol="v2", address=chain.v2_pairs[0]),
        PoolSpec(protocol="v2", address="0x" + "12" * 20),  # no contract
        PoolSpec(protocol="v3", address="0x" + "34" * 20),
        PoolSpec(protocol="v4", pool_id="0x" + "56" * 32, tick_spacing=60),  # not initialized
    ]
    rpc = RpcClient([chain.a.url])
    try:
        scraper = RpcScraper(rpc, state_view=chain.state_view, retries=1)
        result = await scraper.scrape(specs, 10)
    finally:
        await rpc.close()
    assert [p.hex for p in result.pools] == [chain.v2_pairs[0].lower()]
    assert len(result.failed) == 3
    assert scraper.stats.pools_failed == 3 and scraper.stats.pools_retried == 3


class RecordingRpc(RpcClient):
    """Notes the block every eth_call names."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.blocks: set[str] = set()

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        self.blocks |= {json.dumps(params[1]) for method, params in calls if method == "eth_call"}
        return await super().batch(calls)


async def test_scrape_progress_moves_after_every_batch_and_is_exported(chain: Chain) -> None:
    trader = Trader(chain, seed=12)
    for _ in range(3):
        trader.block(8)
    specs = [PoolSpec(**s) for s in chain.specs()]
    rpc = RpcClient([chain.a.url])
    seen: list[tuple[int, int, float, float]] = []
    try:
        scraper = RpcScraper(rpc, state_view=chain.state_view, concurrency=1)
        coord = StartupCoordinator(BlockSource(), scraper)
        collector = SyncCollector(lambda: coord)

        def on_progress(p: ScrapeProgress) -> None:
            gauges = {s.name: s.value for fam in collector.collect() for s in fam.samples}
            seen.append(
                (
                    p.done,
                    p.total,
                    gauges["poolwire_sync_scrape_pools_done"],
                    gauges["poolwire_sync_scrape_pools_total"],
                )
            )

        scraper.on_progress = on_progress
        result = await scraper.scrape(specs, 2)
    finally:
        await rpc.close()
    n = len(specs)
    assert len(result.pools) == n == 7
    # one call a batch of 2 (the last one holds 1), the gauges equal to the figures at that moment
    assert seen == [(d, n, d, n) for d in (2, 4, 6, 7)]
    assert scraper.progress.block == result.block


async def test_pin_by_hash_names_the_block_by_hash_and_equals_the_contracts(chain: Chain) -> None:
    trader = Trader(chain, seed=13)
    for _ in range(5):
        trader.block(8)
    specs = [PoolSpec(**s) for s in chain.specs()]
    rpc = RecordingRpc([chain.a.url])
    try:
        scraper = RpcScraper(rpc, state_view=chain.state_view, pin_by_hash=True)
        result = await scraper.scrape(specs, 50)
    finally:
        await rpc.close()
    number, bhash = chain.head()
    assert (result.block, result.hash) == (number, bhash)
    assert rpc.blocks == {json.dumps({"blockHash": "0x" + bhash.hex()})}  # EIP-1898, never a number
    assert not result.failed
    assert pools_view({p.key: p for p in result.pools}) == chain.truth(number)


class PrunedRpc(RpcClient):
    """Answers every eth_call naming block ``pruned`` with the error of a node that pruned its state."""

    def __init__(self, *args: Any, pruned: int, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.pruned = hex(pruned)
        self.refused = 0

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        replies = await super().batch(calls)
        for i, (method, params) in enumerate(calls):
            if method == "eth_call" and params[1] == self.pruned:
                replies[i] = RpcError(-32000, "missing trie node")
                self.refused += 1
        return replies


async def test_pools_added_live_are_pinned_to_our_head_else_scraped_at_the_latest_block(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    """Pinned to our head block: its state, whatever the node's tip. A node that no longer serves that
    block's state (eth_call errors), or no longer has the block, gets the pools scraped at its latest
    block instead (installed there: the blocks in between are not applied to them), said in the log."""
    trader = Trader(chain, seed=14)
    trader.block(8)
    ours, ours_hash = chain.head()
    for _ in range(3):
        trader.block(8)
    tip, _ = chain.head()
    specs = [PoolSpec(**s) for s in chain.specs()]
    for rpc, head, expect in (
        (RpcClient([chain.a.url]), (ours, ours_hash), ours),  # pinned
        (PrunedRpc([chain.a.url], pruned=ours), (ours, ours_hash), tip),  # state pruned: latest
        (RpcClient([chain.a.url]), (ours, b"\x01" * 32), tip),  # block reorged away: latest
    ):
        caplog.clear()
        try:
            scraper = RpcScraper(rpc, state_view=chain.state_view, retries=0)
            coord = StartupCoordinator(BlockSource(), scraper)
            coord.resume([], [], *head)
            added = await coord.add_pools(specs)
        finally:
            await rpc.close()
        assert {p.snapshot_block for p in added} == {expect}
        assert pools_view({p.key: p for p in added}) == chain.truth(expect)
        fell_back = "at the latest block" in caplog.text
        assert fell_back == (expect == tip), caplog.text
