"""What the JSON-RPC scraper asks a pool and how it reads the answers: the eth_calls (ABI
selectors and words) for a pool's state, its tick bitmap words and its initialized ticks, for V2
and V3 pools directly and V4 pools through StateView."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from eth_hash.auto import keccak

from services.sync import amm
from services.sync.pool import Pool
from services.sync.scraper import NOT_ON_CHAIN
from shared.messages import PoolSpec


def _sel(signature: str) -> str:
    return bytes(keccak(signature.encode()))[:4].hex()


SEL = {
    name: _sel(name)
    for name in (
        "getReserves()",
        "token0()",
        "token1()",
        "slot0()",
        "liquidity()",
        "tickSpacing()",
        "fee()",
        "tickBitmap(int16)",
        "ticks(int24)",
        "getSlot0(bytes32)",
        "getLiquidity(bytes32)",
        "getTickBitmap(bytes32,int16)",
        "getTickLiquidity(bytes32,int24)",
    )
}


def _arg(value: int) -> str:
    """One ABI word of a (possibly negative) integer, as hex."""
    return (value % (1 << 256)).to_bytes(32, "big").hex()


def read_words(data: Any, n: int) -> list[int]:
    if isinstance(data, Exception):
        raise data
    if data == "0x":
        raise ValueError(f"{NOT_ON_CHAIN}: empty eth_call result (no contract at the address)")
    if not isinstance(data, str) or not data.startswith("0x") or len(data) < 2 + 64 * n:
        raise ValueError(f"short or empty eth_call result {str(data)[:80]!r} (no contract?)")
    return [int(data[2 + 64 * i : 66 + 64 * i], 16) for i in range(n)]


def signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _address(word: int) -> str:
    return "0x" + (word & ((1 << 160) - 1)).to_bytes(20, "big").hex()


def word_range(spacing: int) -> tuple[int, int]:
    """The bitmap words that hold the usable ticks of a pool with this spacing."""
    return (-(amm.MAX_TICK // spacing)) >> 8, (amm.MAX_TICK // spacing) >> 8


@dataclass
class PoolJob:
    spec: PoolSpec
    key: bytes
    pool: Pool | None = None
    error: str = ""
    words: list[int] = field(default_factory=list)


class PoolCalls:
    """The calls of one pool job, and the pool read from their answers (the scraper's settings:
    ``state_view``, the StateView address; ``word_radius``, bitmap words either side of the price)."""

    state_view: str
    word_radius: int

    def _state_calls(self, job: PoolJob) -> list[tuple[str, str]]:
        spec = job.spec
        if spec.protocol == "v2":
            tokens = [] if spec.currency0 and spec.currency1 else ["token0()", "token1()"]
            return [(spec.address, "0x" + SEL[name]) for name in ("getReserves()", *tokens)]
        if spec.protocol == "v3":
            return [
                (spec.address, "0x" + SEL[name])
                for name in ("slot0()", "liquidity()", "tickSpacing()", "fee()", "token0()", "token1()")
            ]
        if not self.state_view:
            raise ValueError("V4 pool but no sync.v4_state_view configured")
        pid = job.key.hex()
        return [
            (self.state_view, "0x" + SEL["getSlot0(bytes32)"] + pid),
            (self.state_view, "0x" + SEL["getLiquidity(bytes32)"] + pid),
        ]

    def _parse_state(self, job: PoolJob, replies: list[Any], block: int) -> Pool:
        spec = job.spec
        if spec.protocol == "v2":
            r0, r1 = read_words(replies[0], 2)
            token0, token1 = spec.currency0, spec.currency1
            if len(replies) == 3:  # the spec did not name them: read from the pair
                token0, token1 = (
                    _address(read_words(replies[1], 1)[0]),
                    _address(read_words(replies[2], 1)[0]),
                )
            pool = Pool(job.key, "v2", snapshot_block=block, fee=3000, token0=token0, token1=token1)
            pool.reserve0, pool.reserve1 = r0, r1
            return pool
        if spec.protocol == "v3":
            sqrt, tick = read_words(replies[0], 2)
            (liquidity,) = read_words(replies[1], 1)
            (spacing,) = read_words(replies[2], 1)
            (fee,) = read_words(replies[3], 1)
            (t0,) = read_words(replies[4], 1)
            (t1,) = read_words(replies[5], 1)
            pool = Pool(
                job.key, "v3", snapshot_block=block, fee=fee, tick_spacing=signed(spacing, 24),
                token0=_address(t0), token1=_address(t1),
            )  # fmt: skip
        else:
            sqrt, tick, _protocol_fee, lp_fee = read_words(replies[0], 4)
            (liquidity,) = read_words(replies[1], 1)
            if sqrt == 0:
                raise ValueError(f"{NOT_ON_CHAIN}: V4 pool not initialized (unknown pool id)")
            if spec.tick_spacing <= 0:
                raise ValueError("V4 pool spec without tick_spacing")
            pool = Pool(
                job.key, "v4", snapshot_block=block, fee=lp_fee or spec.fee, tick_spacing=spec.tick_spacing,
                token0=spec.currency0, token1=spec.currency1,
            )  # fmt: skip
        if pool.tick_spacing <= 0:
            raise ValueError(f"tick spacing {pool.tick_spacing}")
        pool.sqrt_price_x96, pool.tick, pool.liquidity = sqrt, signed(tick, 24), liquidity
        return pool

    def _word_list(self, pool: Pool) -> list[int]:
        lo, hi = word_range(pool.tick_spacing)
        if self.word_radius <= 0:
            return list(range(lo, hi + 1))
        center = (pool.tick // pool.tick_spacing) >> 8
        words = set(range(max(lo, center - self.word_radius), min(hi, center + self.word_radius) + 1))
        return sorted(words | {lo, hi})

    def _bitmap_call(self, job: PoolJob, word: int) -> tuple[str, str]:
        if job.spec.protocol == "v3":
            return job.spec.address, "0x" + SEL["tickBitmap(int16)"] + _arg(word)
        return self.state_view, "0x" + SEL["getTickBitmap(bytes32,int16)"] + job.key.hex() + _arg(word)

    def _tick_call(self, job: PoolJob, tick: int) -> tuple[str, str]:
        if job.spec.protocol == "v3":
            return job.spec.address, "0x" + SEL["ticks(int24)"] + _arg(tick)
        return self.state_view, "0x" + SEL["getTickLiquidity(bytes32,int24)"] + job.key.hex() + _arg(tick)
