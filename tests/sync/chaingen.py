"""A random but valid event stream over a few V2/V3/V4 pools, for property tests and benchmarks."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from services.sync import amm
from services.sync.pool import Pool
from shared.exex import PoolUpdate

V2_POOL = bytes.fromhex("b4e16d0168e52d35cacd2c6185b44281ec28c9dc")
V3_POOL = bytes.fromhex("88e6a0c2ddd26feeb64f039a2c41296fcb3f5640")
V4_POOL = bytes(range(32))


def block_hash(number: int, fork: int = 0) -> bytes:
    return hashlib.sha256(f"{number}:{fork}".encode()).digest()


def fresh_pools(snapshot_block: int = 0) -> list[Pool]:
    v2 = Pool(V2_POOL, "v2", snapshot_block=snapshot_block)
    v2.reserve0, v2.reserve1 = 10**24, 2 * 10**21
    v3 = Pool(V3_POOL, "v3", snapshot_block=snapshot_block, fee=500, tick_spacing=10)
    v3.sqrt_price_x96, v3.tick = amm.get_sqrt_ratio_at_tick(200), 200
    v4 = Pool(V4_POOL, "v4", snapshot_block=snapshot_block, fee=3000, tick_spacing=60)
    v4.sqrt_price_x96, v4.tick = amm.get_sqrt_ratio_at_tick(-1200), -1200
    return [v2, v3, v4]


@dataclass
class ChainGen:
    """Generates blocks of events; keeps the positions so that burns are valid."""

    rng: random.Random
    positions: dict[tuple[bytes, int, int], int] = field(default_factory=dict)
    r0: int = 10**24
    r1: int = 2 * 10**21

    def event(self, block: int, tx: int, log: int) -> PoolUpdate:
        rng = self.rng
        which = rng.random()
        if which < 0.3:
            self.r0 = max(1, self.r0 + rng.randint(-(10**21), 10**21))
            self.r1 = max(1, self.r1 + rng.randint(-(10**18), 10**18))
            return PoolUpdate(
                seq=0, block=block, tx=tx, log=log, pool=V2_POOL, protocol="v2", kind="Sync",
                reserve0=self.r0, reserve1=self.r1,
            )  # fmt: skip
        pool, protocol, spacing = (V3_POOL, "v3", 10) if which < 0.7 else (V4_POOL, "v4", 60)
        roll = rng.random()
        if roll < 0.35:
            tick = rng.randint(-3000, 3000)
            return PoolUpdate(
                seq=0, block=block, tx=tx, log=log, pool=pool, protocol=protocol, kind="Swap",  # type: ignore[arg-type]
                amount0=rng.randint(-(10**20), 10**20), amount1=rng.randint(-(10**20), 10**20),
                sqrt_price_x96=amm.get_sqrt_ratio_at_tick(tick) + rng.randint(0, 1000), tick=tick,
                liquidity=rng.randint(0, 10**22),
            )  # fmt: skip
        mine = [k for k in self.positions if k[0] == pool]
        if roll < 0.7 or not mine:
            lower = rng.randint(-60, 55) * spacing
            upper = lower + rng.randint(1, 10) * spacing
            delta = rng.randint(1, 10**20)
            key = (pool, lower, upper)
            self.positions[key] = self.positions.get(key, 0) + delta
        else:
            key = rng.choice(mine)
            _, lower, upper = key
            delta = -rng.randint(0, self.positions[key]) if rng.random() < 0.7 else -self.positions[key]
            self.positions[key] += delta
            if self.positions[key] == 0:
                del self.positions[key]
        kind = ("Mint" if delta > 0 else "Burn") if protocol == "v3" else "ModifyLiquidity"
        return PoolUpdate(
            seq=0, block=block, tx=tx, log=log, pool=pool, protocol=protocol, kind=kind,  # type: ignore[arg-type]
            tick_lower=lower, tick_upper=upper, liquidity_delta=delta,
        )  # fmt: skip

    def block(self, number: int, n_events: int) -> list[PoolUpdate]:
        return [self.event(number, i // 3, i) for i in range(n_events)]
