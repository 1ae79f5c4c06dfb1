"""One pool's exact state (V2 reserves; V3/V4 price, tick, in-range liquidity, ticks, bitmap) and
its swap quote; pool keys (addresses, V4 pool ids)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

from eth_abi.abi import encode as abi_encode
from eth_hash.auto import keccak

from services.sync import amm

ProtocolName = Literal["v2", "v3", "v4"]
TickInfo = tuple[int, int]  # (liquidity_gross, liquidity_net)


def v4_pool_id(currency0: str, currency1: str, fee: int, tick_spacing: int, hooks: str) -> bytes:
    """PoolId = keccak256(abi.encode(PoolKey)) (currencies sorted, as the PoolManager requires)."""
    encoded = abi_encode(
        ["address", "address", "uint24", "int24", "address"],
        [currency0, currency1, fee, tick_spacing, hooks],
    )
    return bytes(keccak(encoded))


def parse_hex(value: str, size: int | None = None) -> bytes:
    raw = bytes.fromhex(value.removeprefix("0x"))
    if size is not None and len(raw) != size:
        raise ValueError(f"expected {size} bytes of hex, got {len(raw)}: {value!r}")
    return raw


class Pool:
    """One pool's state. V2 uses the reserves; V3/V4 the price, tick, liquidity and ticks."""

    __slots__ = (
        "bitmap",
        "fee",
        "hex",
        "key",
        "liquidity",
        "max_liquidity_per_tick",
        "protocol",
        "reserve0",
        "reserve1",
        "snapshot_block",
        "sqrt_price_x96",
        "stale",
        "tick",
        "tick_spacing",
        "ticks",
        "token0",
        "token1",
    )

    def __init__(
        self,
        key: bytes,
        protocol: ProtocolName,
        *,
        snapshot_block: int = 0,
        fee: int = 0,
        tick_spacing: int = 0,
        token0: str = "",
        token1: str = "",
    ) -> None:
        self.key = key
        self.hex = "0x" + key.hex()
        self.protocol: ProtocolName = protocol
        self.snapshot_block = snapshot_block
        self.stale = False
        self.fee = fee
        self.tick_spacing = tick_spacing
        self.token0 = token0
        self.token1 = token1
        self.reserve0 = 0
        self.reserve1 = 0
        self.sqrt_price_x96 = 0
        self.tick = 0
        self.liquidity = 0
        self.ticks: dict[int, TickInfo] = {}
        self.bitmap: dict[int, int] = {}
        self.max_liquidity_per_tick = amm.max_liquidity_per_tick(tick_spacing) if tick_spacing > 0 else 0

    def set_ticks(self, ticks: Iterable[tuple[int, int, int]]) -> None:
        """Load scraped ticks (tick, gross, net); the bitmap is derived from them."""
        self.ticks = {}
        self.bitmap = {}
        for tick, gross, net in ticks:
            if gross:
                self.ticks[tick] = (gross, net)
                self._flip(tick)

    def _flip(self, tick: int) -> None:
        word, bit = amm.tick_position(tick // self.tick_spacing)
        bits = self.bitmap.get(word, 0) ^ (1 << bit)
        if bits:
            self.bitmap[word] = bits
        else:
            del self.bitmap[word]

    def price(self) -> float:
        """token1 per token0 in raw units."""
        if self.protocol == "v2":
            return self.reserve1 / self.reserve0 if self.reserve0 else 0.0
        return amm.price_from_sqrt(self.sqrt_price_x96)

    def state(self) -> tuple[Any, ...]:
        """Everything that defines the pool's state, for equality checks."""
        return (
            self.protocol,
            self.reserve0,
            self.reserve1,
            self.sqrt_price_x96,
            self.tick,
            self.liquidity,
            dict(sorted(self.ticks.items())),
            dict(sorted(self.bitmap.items())),
        )

    # -- quotes ---------------------------------------------------------------------------------

    def _next_initialized_tick(self, tick: int, lte: bool) -> tuple[int, bool]:
        """TickBitmap.nextInitializedTickWithinOneWord."""
        spacing = self.tick_spacing
        compressed = tick // spacing
        if lte:
            word, bit = amm.tick_position(compressed)
            masked = self.bitmap.get(word, 0) & ((1 << (bit + 1)) - 1)
            if masked:
                return (compressed - (bit - (masked.bit_length() - 1))) * spacing, True
            return (compressed - bit) * spacing, False
        word, bit = amm.tick_position(compressed + 1)
        masked = self.bitmap.get(word, 0) & ~((1 << bit) - 1)
        if masked:
            lsb = (masked & -masked).bit_length() - 1
            return (compressed + 1 + (lsb - bit)) * spacing, True
        return (compressed + 1 + (255 - bit)) * spacing, False

    def quote(self, amount_in: int, zero_for_one: bool) -> int:
        """Amount out for an exact ``amount_in`` (raw units), as the pool's swap would compute it."""
        if amount_in <= 0:
            return 0
        if self.protocol == "v2":
            if zero_for_one:
                return amm.v2_amount_out(amount_in, self.reserve0, self.reserve1)
            return amm.v2_amount_out(amount_in, self.reserve1, self.reserve0)
        if self.sqrt_price_x96 == 0:
            return 0
        limit = amm.MIN_SQRT_RATIO + 1 if zero_for_one else amm.MAX_SQRT_RATIO - 1
        remaining = amount_in
        out = 0
        sqrt_price, tick, liquidity = self.sqrt_price_x96, self.tick, self.liquidity
        while remaining > 0 and sqrt_price != limit:
            start = sqrt_price
            tick_next, initialized = self._next_initialized_tick(tick, zero_for_one)
            tick_next = min(max(tick_next, amm.MIN_TICK), amm.MAX_TICK)
            sqrt_next = amm.get_sqrt_ratio_at_tick(tick_next)
            beyond = sqrt_next < limit if zero_for_one else sqrt_next > limit
            target = limit if beyond else sqrt_next
            sqrt_price, step_in, step_out, fee_amount = amm.compute_swap_step_exact_in(
                sqrt_price, target, liquidity, remaining, self.fee
            )
            remaining -= step_in + fee_amount
            out += step_out
            if sqrt_price == sqrt_next:
                if initialized:
                    net = self.ticks.get(tick_next, (0, 0))[1]
                    liquidity = amm.add_delta(liquidity, -net if zero_for_one else net)
                tick = tick_next - 1 if zero_for_one else tick_next
            elif sqrt_price != start:
                tick = amm.get_tick_at_sqrt_ratio(sqrt_price)
        return out
