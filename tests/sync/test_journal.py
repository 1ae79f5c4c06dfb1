"""The event processor: exact tick/liquidity updates, the undo journal, replay after a scrape."""

from __future__ import annotations

import copy
import random
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.sync import amm
from services.sync.journal import EventProcessor, ResyncNeeded
from services.sync.pool import Pool, v4_pool_id
from shared.exex import PoolUpdate
from tests.sync.chaingen import V2_POOL, V3_POOL, V4_POOL, ChainGen, block_hash, fresh_pools


def processor(snapshot_block: int = 0, depth: int = 64) -> EventProcessor:
    proc = EventProcessor(depth=depth)
    for pool in fresh_pools(snapshot_block):
        proc.add_pool(pool)
    return proc


def state(proc: EventProcessor) -> dict[bytes, tuple[object, ...]]:
    return {key: pool.state() for key, pool in proc.pools.items()}


def mint(block: int, lower: int, upper: int, delta: int, log: int = 0) -> PoolUpdate:
    kind: Literal["Mint", "Burn"] = "Mint" if delta > 0 else "Burn"
    return PoolUpdate(
        seq=0, block=block, tx=0, log=log, pool=V3_POOL, protocol="v3", kind=kind,
        tick_lower=lower, tick_upper=upper, liquidity_delta=delta,
    )  # fmt: skip


def test_v4_pool_id_is_keccak_of_the_pool_key() -> None:
    # The ETH/USDC 0.05 % pool on mainnet's V4 PoolManager.
    pid = v4_pool_id(
        "0x0000000000000000000000000000000000000000", "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48", 500, 10,
        "0x0000000000000000000000000000000000000000",
    )  # fmt: skip
    assert pid.hex() == "21c67e77068de97969ba93d4aab21826d33ca12bb9f565d8496e8fda8a82ca27"


def test_mint_and_burn_update_ticks_bitmap_and_in_range_liquidity_as_the_contract() -> None:
    proc = processor()
    pool = proc.pools[V3_POOL]  # tick 200, spacing 10
    proc.apply_block(1, block_hash(1), b"", [mint(1, 100, 300, 1000), mint(1, 300, 500, 7, log=1)])
    assert pool.liquidity == 1000  # only [100, 300) contains tick 200
    assert pool.ticks == {100: (1000, 1000), 300: (1007, -993), 500: (7, -7)}
    # compressed ticks 10, 30, 50 in word 0
    assert pool.bitmap == {0: (1 << 10) | (1 << 30) | (1 << 50)}
    proc.apply_block(2, block_hash(2), block_hash(1), [mint(2, 100, 300, -1000)])
    assert pool.liquidity == 0
    assert pool.ticks == {300: (7, 7), 500: (7, -7)}
    assert pool.bitmap == {0: (1 << 30) | (1 << 50)}
    # negative ticks land in word -1
    proc.apply_block(3, block_hash(3), block_hash(2), [mint(3, -20, 10, 5)])
    assert pool.bitmap[-1] == 1 << 254
    assert pool.ticks[-20] == (5, 5) and pool.ticks[10] == (5, -5)
    # the next initialized tick search, as TickBitmap does it
    assert pool._next_initialized_tick(200, lte=True) == (10, True)
    assert pool._next_initialized_tick(200, lte=False) == (300, True)


def test_overflow_and_bad_events_are_counted_and_skipped() -> None:
    proc = processor()
    before = state(proc)
    too_much = amm.max_liquidity_per_tick(10) + 1
    proc.apply_block(
        1, block_hash(1), b"",
        [
            mint(1, 100, 300, too_much),  # LO
            mint(1, 100, 300, -5),  # LS: burning what is not there
            mint(1, 105, 300, 5),  # not a multiple of the spacing
            PoolUpdate(seq=0, block=1, tx=0, log=9, pool=b"\x09" * 20, protocol="v2", kind="Sync"),
            PoolUpdate(seq=0, block=1, tx=0, log=10, pool=V2_POOL, protocol="v2", kind="Sync", reserve0=1 << 112),
            PoolUpdate(seq=0, block=1, tx=0, log=11, pool=V2_POOL, protocol="v3", kind="Swap"),
        ],
    )  # fmt: skip
    assert state(proc) == before
    s = proc.stats
    assert (s.overflows, s.invalid_events, s.pool_not_found) == (3, 2, 1)
    assert s.errors == 6
    assert "LO" in proc.last_error or proc.last_error


def test_v2_sync_sets_absolute_reserves() -> None:
    proc = processor()
    sync = PoolUpdate(
        seq=0, block=1, tx=0, log=0, pool=V2_POOL, protocol="v2", kind="Sync", reserve0=5, reserve1=7
    )
    swap = PoolUpdate(seq=0, block=1, tx=0, log=1, pool=V2_POOL, protocol="v2", kind="Swap", amount0=3)
    result = proc.apply_block(1, block_hash(1), b"", [sync, swap])
    pool = proc.pools[V2_POOL]
    assert (pool.reserve0, pool.reserve1) == (5, 7)
    assert result.changed == {pool}
    assert proc.stats.v2_syncs_processed == 1 and proc.stats.v2_swaps_processed == 1


def run_chain(proc: EventProcessor, seed: int, blocks: int, per_block: int, fork: int = 0) -> None:
    gen = ChainGen(random.Random(seed))
    for n in range(1, blocks + 1):
        parent = block_hash(n - 1, fork) if n > 1 else b""
        proc.apply_block(n, block_hash(n, fork), parent, gen.block(n, per_block))


@settings(max_examples=200, deadline=None)
@given(
    seed=st.integers(0, 2**32),
    blocks=st.integers(1, 12),
    per_block=st.integers(0, 40),
    keep=st.integers(0, 12),
)
def test_apply_then_revert_restores_the_exact_prior_state(
    seed: int, blocks: int, per_block: int, keep: int
) -> None:
    keep = min(keep, blocks)
    proc = processor()
    gen = ChainGen(random.Random(seed))
    states = [state(proc)]
    for n in range(1, blocks + 1):
        proc.apply_block(n, block_hash(n), block_hash(n - 1) if n > 1 else b"", gen.block(n, per_block))
        states.append(state(proc))
    for n in range(blocks, keep, -1):
        result = proc.revert_block(n, block_hash(n))
        assert result.reverted == [(n, block_hash(n))]
        assert state(proc) == states[n - 1]
    assert proc.head == ((keep, block_hash(keep)) if keep else None)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), blocks=st.integers(2, 10), fork_at=st.integers(1, 10))
def test_reorg_by_parent_hash_unwinds_and_applies_the_new_branch(
    seed: int, blocks: int, fork_at: int
) -> None:
    fork_at = min(fork_at, blocks)
    gen_a, gen_b = ChainGen(random.Random(seed)), ChainGen(random.Random(seed))
    chain_a = [gen_a.block(n, 15) for n in range(1, blocks + 1)]
    # the new branch shares blocks < fork_at
    chain_b = [gen_b.block(n, 15) for n in range(1, fork_at)]
    gen_b.rng.seed(seed + 1)
    chain_b += [gen_b.block(n, 15) for n in range(fork_at, blocks + 2)]

    def h(n: int, branch: str) -> bytes:
        return block_hash(n, 0 if n < fork_at or branch == "a" else 1)

    proc = processor()
    for n, events in enumerate(chain_a, 1):
        proc.apply_block(n, h(n, "a"), h(n - 1, "a") if n > 1 else b"", events)
    # the new branch arrives without any revert message: its first block's parent is not our head
    for n in range(fork_at, blocks + 2):
        proc.apply_block(n, h(n, "b"), h(n - 1, "b") if n > 1 else b"", chain_b[n - 1])
    ref = processor()
    for n, events in enumerate(chain_b, 1):
        ref.apply_block(n, h(n, "b"), h(n - 1, "b") if n > 1 else b"", events)
    assert state(proc) == state(ref)
    assert proc.stats.reorgs == 1
    assert proc.stats.reverts_processed == blocks - fork_at + 1


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**32), blocks=st.integers(1, 15), scrape_at=st.integers(0, 15))
def test_replay_after_a_scrape_equals_applying_everything_from_genesis(
    seed: int, blocks: int, scrape_at: int
) -> None:
    scrape_at = min(scrape_at, blocks)
    genesis = processor()
    gen = ChainGen(random.Random(seed))
    chain = [gen.block(n, 20) for n in range(1, blocks + 1)]
    scraped: list[Pool] = []
    for n, events in enumerate(chain, 1):
        genesis.apply_block(n, block_hash(n), block_hash(n - 1) if n > 1 else b"", events)
        if n == scrape_at:
            scraped = copy.deepcopy(list(genesis.pools.values()))
    if scrape_at == 0:
        scraped = fresh_pools()
    # a new reader: the scraped state at block B, then every buffered block (including <= B)
    replayed = EventProcessor()
    for pool in scraped:
        pool.snapshot_block = scrape_at
        replayed.add_pool(pool)
    for n, events in enumerate(chain, 1):
        replayed.apply_block(n, block_hash(n), block_hash(n - 1) if n > 1 else b"", events)
    assert state(replayed) == state(genesis)


def test_revert_below_the_journal_or_the_snapshot_asks_for_a_resync() -> None:
    proc = processor(snapshot_block=0, depth=2)
    run_chain(proc, seed=1, blocks=4, per_block=5)
    proc.revert_block(4, block_hash(4))
    proc.revert_block(3, block_hash(3))
    with pytest.raises(ResyncNeeded):
        proc.revert_block(2, block_hash(2))
    # a pool scraped at block 10 cannot be unwound below it: it goes stale and is skipped
    proc2 = processor(snapshot_block=10)
    proc2.apply_block(11, block_hash(11), b"", [])
    result = proc2.revert_block(11, block_hash(11))
    assert not result.stale
    result = proc2.revert_block(10, block_hash(10))
    assert {p.key for p in result.stale} == {V2_POOL, V3_POOL, V4_POOL}


def test_gap_in_blocks_asks_for_a_resync() -> None:
    proc = processor()
    proc.apply_block(1, block_hash(1), b"", [])
    with pytest.raises(ResyncNeeded):
        proc.apply_block(3, block_hash(3), block_hash(2), [])


def test_held_events_for_a_pool_being_added_are_kept_and_dropped_on_revert() -> None:
    proc = EventProcessor()
    proc.hold(V2_POOL)
    sync = PoolUpdate(seq=0, block=1, tx=0, log=0, pool=V2_POOL, protocol="v2", kind="Sync", reserve0=1)
    proc.apply_block(1, block_hash(1), b"", [sync])
    proc.apply_block(2, block_hash(2), block_hash(1), [sync])
    proc.revert_block(2, block_hash(2))
    assert len(proc.release(V2_POOL)) == 1


def test_held_event_count_returns_to_zero_however_the_hold_ends() -> None:
    proc = EventProcessor()
    sync = PoolUpdate(seq=0, block=1, tx=0, log=0, pool=V2_POOL, protocol="v2", kind="Sync", reserve0=1)
    proc.hold(V2_POOL)
    proc.apply_block(1, block_hash(1), b"", [sync])
    assert proc.held_events == 1
    proc.remove_pool(V2_POOL)  # an add that is retried drops what it held
    assert proc.held_events == 0
    proc.hold(V2_POOL)
    proc.apply_block(2, block_hash(2), block_hash(1), [sync])
    proc.add_pool(processor().pools[V2_POOL])  # installed without a release
    assert proc.held_events == 0
    proc.remove_pool(V2_POOL)
    proc.hold(V2_POOL)
    proc.apply_block(3, block_hash(3), block_hash(2), [sync])
    assert len(proc.release(V2_POOL)) == 1
    assert proc.held_events == 0


def test_quote_matches_the_price_for_a_small_trade_and_crosses_ticks() -> None:
    proc = processor()
    pool = proc.pools[V3_POOL]
    proc.apply_block(1, block_hash(1), b"", [mint(1, 100, 300, 10**22), mint(1, -1000, 1000, 10**20, log=1)])
    small = 10**12
    out = pool.quote(small, zero_for_one=True)
    assert out == pytest.approx(small * pool.price() * (1 - 0.0005), rel=1e-4)
    # a big trade runs through the [100, 300) range into the wide one: worse average price
    big = 10**21
    assert pool.quote(big, zero_for_one=True) < big * pool.price()
    assert pool.quote(big, zero_for_one=False) > 0
    v2 = proc.pools[V2_POOL]
    assert v2.quote(10**18, zero_for_one=True) == amm.v2_amount_out(10**18, v2.reserve0, v2.reserve1)
    assert proc.pools[V4_POOL].quote(10**18, zero_for_one=True) == 0  # no liquidity


def test_skipped_events_are_logged_rate_limited_and_still_counted_exactly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    proc = processor()
    proc.skip_log.clock = lambda: now[0]
    bad_sync = [
        PoolUpdate(seq=0, block=1, tx=0, log=i, pool=V2_POOL, protocol="v2", kind="Sync", reserve0=1 << 112)
        for i in range(50)
    ]
    with caplog.at_level("WARNING", logger="poolwire.sync.apply"):
        proc.apply_block(1, block_hash(1), b"", [*bad_sync, mint(1, 105, 300, 5, log=60)])
        lines = [r.getMessage() for r in caplog.records]
        burst = proc.skip_log.burst
        overflow = [m for m in lines if "(overflow)" in m]
        assert len(overflow) == burst  # the flood is cut to a burst
        assert f"pool 0x{V2_POOL.hex()}" in overflow[0] and "block 1 " in overflow[0]
        assert "reserves out of uint112" in overflow[0]
        invalid = [m for m in lines if "(invalid)" in m]
        assert len(invalid) == 1 and "multiples of the spacing" in invalid[0]  # its own budget
        caplog.clear()
        proc.skip_log.flush()  # the interval is not over: no summary yet
        assert caplog.records == []
        now[0] = proc.skip_log.interval
        proc.skip_log.flush()
        (summary,) = [r.getMessage() for r in caplog.records]
        assert summary.startswith(f"{50 - burst} more overflow message(s) suppressed")
    s = proc.stats
    assert (s.overflows, s.invalid_events, s.errors) == (50, 1, 51)
