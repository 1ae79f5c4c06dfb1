"""sync in-process: the event processor's rates, the replay of a buffer, its memory, a quote.

- ``v2_events_per_s``: 200 k generated V2 Sync/Swap events over 1 000 pools, 200 a block, through
  ``EventProcessor.apply_block`` (journal depth 64); best of 3 passes.
- ``v3_events_per_s``: 100 k generated V3/V4 events (swaps, mints, burns across ticks) on the test
  pools, 200 a block, journaled for reverts; best of 3.
- ``replay_60k_s``: 60 k mixed events held encoded in an ``EventBuffer`` (400 blocks of 150), taken
  out and applied, as when the pools being added are installed; best of 3 (the same events, each
  round in a buffer of its own). Building the buffer is not timed.
- ``bytes_per_buffered_event``: tracemalloc's growth for building that buffer, / 60 k.
- ``quote_us``: one exact V3 quote of 1e21 in, crossing ticks, after 50 blocks; mean of 2 000.
- The JSON-RPC figures (scrape, catch-up) come from ``bench/_sync_chain.py`` when anvil is installed.
"""

from __future__ import annotations

import random
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

from services.sync import amm
from services.sync.buffer import Block, EventBuffer
from services.sync.journal import EventProcessor
from services.sync.pool import Pool
from shared.exex import PoolUpdate, encode_payload
from tests.sync.chaingen import ChainGen, block_hash, fresh_pools

PER_BLOCK = 200


def _v2_blocks(n_pools: int, n_events: int, rng: random.Random) -> tuple[list[Pool], list[list[PoolUpdate]]]:
    pools = [Pool(rng.randbytes(20), "v2") for _ in range(n_pools)]
    blocks = []
    for b in range(n_events // PER_BLOCK):
        blocks.append(
            [
                PoolUpdate(
                    seq=0,
                    block=b + 1,
                    tx=i // 2,
                    log=i,
                    pool=pools[rng.randrange(n_pools)].key,
                    protocol="v2",
                    kind="Sync",
                    reserve0=rng.randint(10**18, 10**25),
                    reserve1=rng.randint(10**6, 10**13),
                )
                for i in range(PER_BLOCK)
            ]
        )
    return pools, blocks


def _apply_rate(
    pools: list[Pool], blocks: list[list[PoolUpdate]], clock: Callable[[], float] = time.perf_counter
) -> float:
    proc = EventProcessor(depth=64)
    for pool in pools:
        proc.add_pool(pool)
    n = sum(len(b) for b in blocks)
    t0 = clock()
    for i, events in enumerate(blocks, 1):
        proc.apply_block(i, block_hash(i), block_hash(i - 1) if i > 1 else b"", events)
    return n / (clock() - t0)


def _v3_blocks(n_events: int, seed: int) -> list[list[PoolUpdate]]:
    gen = ChainGen(random.Random(seed))
    blocks = []
    for b in range(n_events // PER_BLOCK):
        evs: list[PoolUpdate] = []
        while len(evs) < PER_BLOCK:
            ev = gen.event(b + 1, len(evs) // 3, len(evs))
            if ev.protocol != "v2":
                evs.append(ev)
        blocks.append(evs)
    return blocks


def _mixed_blocks(n_events: int, seed: int) -> list[list[bytes]]:
    """Blocks of 150 mixed events, each encoded as the buffer holds it."""
    gen = ChainGen(random.Random(seed))
    per = 150
    return [[encode_payload(ev) for ev in gen.block(b, per)] for b in range(1, n_events // per + 1)]


def _buffer(blocks: list[list[bytes]]) -> EventBuffer:
    buf = EventBuffer(capacity=sum(len(raws) for raws in blocks) + 1)
    for b, raws in enumerate(blocks, 1):
        buf.add(Block(b, block_hash(b), block_hash(b - 1) if b > 1 else b"", False, [], raws))
    return buf


def _mixed_buffer(n_events: int, seed: int) -> tuple[EventBuffer, int]:
    blocks = _mixed_blocks(n_events, seed)
    return _buffer(blocks), len(blocks)


def run() -> dict[str, dict[str, Any]]:
    rng = random.Random(7)
    pools, v2 = _v2_blocks(1000, 200_000, rng)
    v2_rate = max(_apply_rate(pools, v2) for _ in range(3))
    v3 = _v3_blocks(100_000, 3)
    v3_rate = max(_apply_rate(fresh_pools(), v3) for _ in range(3))

    best_replay = float("inf")
    mixed = _mixed_blocks(60_000, 11)  # generated once: a buffer is emptied by its replay
    for _ in range(3):
        buf = _buffer(mixed)
        proc = EventProcessor()
        for pool in fresh_pools():
            proc.add_pool(pool)
        t0 = time.perf_counter()
        for number, bhash, parent, events in buf.take_blocks():
            proc.apply_block(number, bhash, parent, events)
        best_replay = min(best_replay, time.perf_counter() - t0)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    buf, _ = _mixed_buffer(60_000, 12)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    per_event = used / len(buf)

    # exactness costs: a quote across ticks
    proc = EventProcessor()
    for pool in fresh_pools():
        proc.add_pool(pool)
    for i, events in enumerate(v3[:50], 1):
        proc.apply_block(i, block_hash(i), block_hash(i - 1) if i > 1 else b"", events)
    v3pool = next(p for p in proc.pools.values() if p.protocol == "v3")
    t0 = time.perf_counter()
    n_quotes = 2000
    for _ in range(n_quotes):
        v3pool.quote(10**21, zero_for_one=True)
    quote_us = (time.perf_counter() - t0) / n_quotes * 1e6
    assert amm.get_tick_at_sqrt_ratio(amm.get_sqrt_ratio_at_tick(1)) == 1
    chain_figures: dict[str, dict[str, Any]] = {}
    try:
        from bench import _sync_chain

        chain_figures = _sync_chain.run()
    except FileNotFoundError as exc:  # node_modules not installed: the in-process figures only
        print(f"sync: no local node for the JSON-RPC figures ({exc}); run npm install", flush=True)
    return {
        **chain_figures,
        "sync.v2_events_per_s": {"value": v2_rate, "unit": "events/s", "goal": ">= 300000"},
        "sync.v3_events_per_s": {"value": v3_rate, "unit": "events/s", "goal": ">= 100000"},
        "sync.replay_60k_s": {"value": best_replay, "unit": "s", "goal": "<= 0.3"},
        "sync.bytes_per_buffered_event": {"value": per_event, "unit": "B", "goal": "<= 200"},
        "sync.quote_us": {"value": quote_us, "unit": "us", "goal": ""},
    }
