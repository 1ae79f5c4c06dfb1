"""The JSON-RPC scraper against a real node running the real Uniswap contracts."""

from __future__ import annotations

from services.sync.rpc import RpcClient
from services.sync.rpc_scraper import RpcScraper
from shared.messages import PoolSpec
from tests.sync.chain import Chain, Trader, arena_view


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
    got = arena_view({p.key: p for p in v2.pools + rest.pools})
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
