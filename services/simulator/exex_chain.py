"""A simulated chain of V2/V3/V4 pools for the ExEx server: valid blocks, reverts, reorgs, scrapes.

Independent of sync's arena on purpose (a second implementation to check it against): ticks are
kept as gross/net, and the in-range liquidity after a swap is recomputed from scratch as the sum
of liquidity_net over initialized ticks at or below the new tick.
"""

from __future__ import annotations

import copy
import hashlib
import math
import random
import time
from dataclasses import dataclass, field
from typing import Any

from shared.exex import BeginBlock, EndBlock, PoolUpdate, ScrapedPoolState

Q96 = 1 << 96
HISTORY_DEPTH = 256  # blocks kept for reverts and reorgs: a long demo must not grow without bound


@dataclass
class SimPool:
    key: bytes
    protocol: str
    fee: int = 0
    spacing: int = 0
    reserve0: int = 0
    reserve1: int = 0
    tick: int = 0
    sqrt: int = Q96
    liquidity: int = 0
    ticks: dict[int, list[int]] = field(default_factory=dict)  # tick -> [gross, net]
    positions: dict[tuple[int, int], int] = field(default_factory=dict)

    def tokens(self) -> tuple[str, str]:
        """The pool's two tokens (V4: currencies), sorted as the factories sort them; derived from the
        pool's key, not drawn from the chain's RNG (which would move every later key)."""
        a, b = (hashlib.sha256(self.key + side).digest()[:20] for side in (b"token0", b"token1"))
        return "0x" + min(a, b).hex(), "0x" + max(a, b).hex()

    def scrape(self) -> ScrapedPoolState:
        token0, token1 = self.tokens()
        return ScrapedPoolState(
            pool=self.key,
            protocol=self.protocol,  # type: ignore[arg-type]
            reserve0=str(self.reserve0),
            reserve1=str(self.reserve1),
            sqrt_price_x96=str(self.sqrt),
            tick=self.tick,
            liquidity=str(self.liquidity),
            fee=self.fee,
            tick_spacing=self.spacing,
            ticks=[(t, str(g), str(n)) for t, (g, n) in sorted(self.ticks.items())],
            token0=token0,
            token1=token1,
        )


def sqrt_at(tick: int) -> int:
    return int(math.sqrt(1.0001**tick) * Q96)


class SimChain:
    def __init__(self, seed: int = 1, pools_per_protocol: int = 2, events_per_block: int = 10) -> None:
        self.rng = random.Random(seed)
        self.events_per_block = events_per_block
        self.number = 0
        self.fork = 0
        self.hashes: dict[int, bytes] = {0: self._hash(0)}
        self.times: dict[int, int] = {}
        self.pools: dict[bytes, SimPool] = {}
        for i in range(pools_per_protocol):
            v2 = SimPool(self.rng.randbytes(20), "v2", reserve0=10**24 + i, reserve1=3 * 10**21)
            v3 = SimPool(self.rng.randbytes(20), "v3", fee=500, spacing=10, tick=150, sqrt=sqrt_at(150))
            v4 = SimPool(self.rng.randbytes(32), "v4", fee=3000, spacing=60, tick=-600, sqrt=sqrt_at(-600))
            for p in (v2, v3, v4):
                self.pools[p.key] = p
        self.history: list[dict[bytes, SimPool]] = [copy.deepcopy(self.pools)]

    def _hash(self, number: int) -> bytes:
        return hashlib.sha256(f"sim:{number}:{self.fork}".encode()).digest()

    @property
    def head_hash(self) -> bytes:
        return self.hashes[self.number]

    def _event(self, block: int, tx: int, log: int) -> PoolUpdate:
        rng = self.rng
        pool = rng.choice(list(self.pools.values()))
        base: dict[str, Any] = {
            "seq": 0,
            "block": block,
            "tx": tx,
            "log": log,
            "pool": pool.key,
            "protocol": pool.protocol,
        }
        if pool.protocol == "v2":
            pool.reserve0 = max(1, pool.reserve0 + rng.randint(-(10**21), 10**21))
            pool.reserve1 = max(1, pool.reserve1 + rng.randint(-(10**18), 10**18))
            return PoolUpdate(**base, kind="Sync", reserve0=pool.reserve0, reserve1=pool.reserve1)
        roll = rng.random()
        if roll < 0.4:
            pool.tick = rng.randint(-2000, 2000)
            pool.sqrt = sqrt_at(pool.tick)
            pool.liquidity = sum(net for t, (_, net) in pool.ticks.items() if t <= pool.tick)
            a0 = rng.randint(-(10**20), 10**20)
            return PoolUpdate(
                **base, kind="Swap", amount0=a0, amount1=-a0 * 2, sqrt_price_x96=pool.sqrt,
                liquidity=pool.liquidity, tick=pool.tick,
            )  # fmt: skip
        if roll < 0.75 or not pool.positions:
            lower = rng.randint(-40, 35) * pool.spacing
            upper = lower + rng.randint(1, 8) * pool.spacing
            delta = rng.randint(1, 10**20)
        else:
            lower, upper = rng.choice(list(pool.positions))
            delta = -rng.randint(1, pool.positions[(lower, upper)])
        left = pool.positions.get((lower, upper), 0) + delta
        if left:
            pool.positions[(lower, upper)] = left
        else:
            del pool.positions[(lower, upper)]
        for t, sign in ((lower, 1), (upper, -1)):
            info = pool.ticks.setdefault(t, [0, 0])
            info[0] += delta
            info[1] += sign * delta
            if info[0] == 0:
                del pool.ticks[t]
        if lower <= pool.tick < upper:
            pool.liquidity += delta
        kind = ("Mint" if delta > 0 else "Burn") if pool.protocol == "v3" else "ModifyLiquidity"
        return PoolUpdate(**base, kind=kind, tick_lower=lower, tick_upper=upper, liquidity_delta=delta)  # type: ignore[arg-type]

    def next_block(self) -> tuple[BeginBlock, list[PoolUpdate], EndBlock]:
        """Produce the next block (seq numbers are filled by the connection)."""
        self.number += 1
        n = self.number
        self.hashes[n] = self._hash(n)
        updates = [self._event(n, i // 2, i) for i in range(self.events_per_block)]
        self.history.append(copy.deepcopy(self.pools))
        if len(self.history) > HISTORY_DEPTH + 1:
            del self.history[0]
            self.hashes.pop(n - HISTORY_DEPTH - 1, None)
        self.times[n] = max(self.times.get(n - 1, 0), int(time.time()))  # block time, seconds
        begin = BeginBlock(
            seq=0, number=n, hash=self.hashes[n], parent_hash=self.hashes[n - 1], timestamp=self.times[n]
        )
        return begin, updates, EndBlock(seq=0, number=n, num_updates=len(updates))

    def revert(self) -> tuple[BeginBlock, EndBlock]:
        """Unwind the head block; the next block starts a new fork."""
        n = self.number
        begin = BeginBlock(
            seq=0, number=n, hash=self.hashes[n], parent_hash=self.hashes[n - 1], is_revert=True,
            timestamp=self.times.get(n, 0),
        )  # fmt: skip
        self.unwind_silently()
        return begin, EndBlock(seq=0, number=n, num_updates=0)

    def unwind_silently(self) -> None:
        """Drop the head block without telling anyone (a reorg seen only through parent hashes)."""
        self.history.pop()
        self.pools = copy.deepcopy(self.history[-1])
        del self.hashes[self.number]
        self.number -= 1
        self.fork += 1

    def scrape(self, keys: list[bytes]) -> list[ScrapedPoolState]:
        out = []
        for key in keys:
            pool = self.pools.get(key)
            out.append(pool.scrape() if pool else ScrapedPoolState(pool=key, protocol="v2", found=False))
        return out
