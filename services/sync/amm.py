"""Exact integer AMM math, a line-by-line port of Uniswap v3-core's libraries.

Every function here returns what the contract returns for the same input, or raises
:class:`MathError` where the contract reverts (the message names the contract's revert reason).
Python integers are unbounded, so each Solidity width (uint160, uint128, int128, int24) is
checked explicitly.
"""

from __future__ import annotations

MIN_TICK = -887272
MAX_TICK = 887272
MIN_SQRT_RATIO = 4295128739
MAX_SQRT_RATIO = 1461446703485210103287273052203988822378723970342
Q96 = 1 << 96
Q128 = 1 << 128
U128_MAX = (1 << 128) - 1
U160_MAX = (1 << 160) - 1
U256_MAX = (1 << 256) - 1
I128_MIN = -(1 << 127)
I128_MAX = (1 << 127) - 1
U112_MAX = (1 << 112) - 1


class MathError(ArithmeticError):
    """The contract would revert here (overflow, out-of-range tick or price)."""


# TickMath.getSqrtRatioAtTick: ratio multipliers for each bit of |tick|, Q128.128.
_TICK_FACTORS: tuple[tuple[int, int], ...] = (
    (0x2, 0xFFF97272373D413259A46990580E213A),
    (0x4, 0xFFF2E50F5F656932EF12357CF3C7FDCC),
    (0x8, 0xFFE5CACA7E10E4E61C3624EAA0941CD0),
    (0x10, 0xFFCB9843D60F6159C9DB58835C926644),
    (0x20, 0xFF973B41FA98C081472E6896DFB254C0),
    (0x40, 0xFF2EA16466C96A3843EC78B326B52861),
    (0x80, 0xFE5DEE046A99A2A811C461F1969C3053),
    (0x100, 0xFCBE86C7900A88AEDCFFC83B479AA3A4),
    (0x200, 0xF987A7253AC413176F2B074CF7815E54),
    (0x400, 0xF3392B0822B70005940C7A398E4B70F3),
    (0x800, 0xE7159475A2C29B7443B29C7FA6E889D9),
    (0x1000, 0xD097F3BDFD2022B8845AD8F792AA5825),
    (0x2000, 0xA9F746462D870FDF8A65DC1F90E061E5),
    (0x4000, 0x70D869A156D2A1B890BB3DF62BAF32F7),
    (0x8000, 0x31BE135F97D08FD981231505542FCFA6),
    (0x10000, 0x9AA508B5B7A84E1C677DE54F3E99BC9),
    (0x20000, 0x5D6AF8DEDB81196699C329225EE604),
    (0x40000, 0x2216E584F5FA1EA926041BEDFE98),
    (0x80000, 0x48A170391F7DC42444E8FA2),
)


def get_sqrt_ratio_at_tick(tick: int) -> int:
    """sqrt(1.0001^tick) * 2^96 as v3-core computes it (reverts 'T' for |tick| > MAX_TICK)."""
    abs_tick = -tick if tick < 0 else tick
    if abs_tick > MAX_TICK:
        raise MathError(f"T: tick {tick} out of [{MIN_TICK}, {MAX_TICK}]")
    ratio = 0xFFFCB933BD6FAD37AA2D162D1A594001 if abs_tick & 0x1 else 0x100000000000000000000000000000000
    for bit, factor in _TICK_FACTORS:
        if abs_tick & bit:
            ratio = (ratio * factor) >> 128
    if tick > 0:
        ratio = U256_MAX // ratio
    return (ratio >> 32) + (0 if ratio & 0xFFFFFFFF == 0 else 1)


def get_tick_at_sqrt_ratio(sqrt_price_x96: int) -> int:
    """The greatest tick whose sqrt ratio is <= ``sqrt_price_x96`` (reverts 'R' out of range)."""
    if not MIN_SQRT_RATIO <= sqrt_price_x96 < MAX_SQRT_RATIO:
        raise MathError(f"R: sqrt price {sqrt_price_x96} out of [MIN_SQRT_RATIO, MAX_SQRT_RATIO)")
    ratio = sqrt_price_x96 << 32
    msb = ratio.bit_length() - 1
    r = ratio >> (msb - 127) if msb >= 128 else ratio << (127 - msb)
    log_2 = (msb - 128) << 64
    for shift in range(63, 49, -1):
        r = (r * r) >> 127
        f = r >> 128
        log_2 |= f << shift
        r >>= f
    log_sqrt10001 = log_2 * 255738958999603826347141
    tick_low = (log_sqrt10001 - 3402992956809132418596140100660247210) >> 128
    tick_hi = (log_sqrt10001 + 291339464771989622907027621153398088495) >> 128
    if tick_low == tick_hi:
        return tick_low
    return tick_hi if get_sqrt_ratio_at_tick(tick_hi) <= sqrt_price_x96 else tick_low


def add_delta(x: int, y: int) -> int:
    """LiquidityMath.addDelta: uint128 plus int128, reverting 'LS' (underflow) or 'LA' (overflow)."""
    z = x + y
    if z < 0:
        raise MathError(f"LS: liquidity {x} + {y} < 0")
    if z > U128_MAX:
        raise MathError(f"LA: liquidity {x} + {y} > uint128")
    return z


def check_int128(value: int, what: str) -> int:
    if not I128_MIN <= value <= I128_MAX:
        raise MathError(f"{what} {value} does not fit int128")
    return value


def max_liquidity_per_tick(tick_spacing: int) -> int:
    """Tick.tickSpacingToMaxLiquidityPerTick (Solidity division truncates toward zero)."""
    if tick_spacing <= 0:
        raise MathError(f"tick spacing {tick_spacing} must be positive")
    min_tick = -(-MIN_TICK // tick_spacing) * tick_spacing
    max_tick = (MAX_TICK // tick_spacing) * tick_spacing
    num_ticks = (max_tick - min_tick) // tick_spacing + 1
    return U128_MAX // num_ticks


def tick_position(compressed: int) -> tuple[int, int]:
    """TickBitmap.position: (word, bit) of a compressed tick (tick // spacing)."""
    return compressed >> 8, compressed & 0xFF


def price_from_sqrt(sqrt_price_x96: int) -> float:
    """token1 per token0 in raw units, as a float (for display and px.* only)."""
    return (sqrt_price_x96 / Q96) ** 2


def swap_in_range(protocol: str, amount0: int, amount1: int, sqrt_price_x96: int) -> bool:
    """Whether a Swap event's values are possible (a V3 amount is an int256, a V4 one an int128,
    V2's in - out within +-uint256; V3/V4 prices in the TickMath range): a ``dex.swap`` is only
    published from those."""
    bound = 1 << (127 if protocol == "v4" else 255 if protocol == "v3" else 256)
    if not (-bound <= amount0 < bound and -bound <= amount1 < bound):
        return False
    return protocol == "v2" or MIN_SQRT_RATIO <= sqrt_price_x96 < MAX_SQRT_RATIO


# ----------------------------------------------------------------------------------------------
# SqrtPriceMath / SwapMath / FullMath, for quotes.


def mul_div(a: int, b: int, denominator: int) -> int:
    if denominator == 0:
        raise MathError("division by zero")
    result = a * b // denominator
    if result > U256_MAX:
        raise MathError("mulDiv overflow")
    return result


def mul_div_rounding_up(a: int, b: int, denominator: int) -> int:
    if denominator == 0:
        raise MathError("division by zero")
    q, rem = divmod(a * b, denominator)
    if rem:
        q += 1
    if q > U256_MAX:
        raise MathError("mulDiv overflow")
    return q


def _div_rounding_up(x: int, y: int) -> int:
    return -(-x // y)


def get_amount0_delta(sqrt_a: int, sqrt_b: int, liquidity: int, round_up: bool) -> int:
    if sqrt_a > sqrt_b:
        sqrt_a, sqrt_b = sqrt_b, sqrt_a
    numerator1 = liquidity << 96
    numerator2 = sqrt_b - sqrt_a
    if sqrt_a <= 0:
        raise MathError("sqrt price must be positive")
    if round_up:
        return _div_rounding_up(mul_div_rounding_up(numerator1, numerator2, sqrt_b), sqrt_a)
    return mul_div(numerator1, numerator2, sqrt_b) // sqrt_a


def get_amount1_delta(sqrt_a: int, sqrt_b: int, liquidity: int, round_up: bool) -> int:
    if sqrt_a > sqrt_b:
        sqrt_a, sqrt_b = sqrt_b, sqrt_a
    if round_up:
        return mul_div_rounding_up(liquidity, sqrt_b - sqrt_a, Q96)
    return mul_div(liquidity, sqrt_b - sqrt_a, Q96)


def _next_sqrt_from_amount0_rounding_up(sqrt_p: int, liquidity: int, amount: int, add: bool) -> int:
    if amount == 0:
        return sqrt_p
    numerator1 = liquidity << 96
    product = amount * sqrt_p
    if add:
        if product // amount == sqrt_p and product <= U256_MAX:
            denominator = numerator1 + product
            if denominator >= numerator1 and denominator <= U256_MAX:
                return mul_div_rounding_up(numerator1, sqrt_p, denominator)
        return _div_rounding_up(numerator1, numerator1 // sqrt_p + amount)
    if product > U256_MAX or numerator1 <= product:
        raise MathError("next sqrt price from amount0 underflow")
    result = mul_div_rounding_up(numerator1, sqrt_p, numerator1 - product)
    if result > U160_MAX:
        raise MathError("uint160 overflow")
    return result


def _next_sqrt_from_amount1_rounding_down(sqrt_p: int, liquidity: int, amount: int, add: bool) -> int:
    if add:
        quotient = (amount << 96) // liquidity if amount <= U160_MAX else mul_div(amount, Q96, liquidity)
        result = sqrt_p + quotient
        if result > U160_MAX:
            raise MathError("uint160 overflow")
        return result
    quotient = (
        _div_rounding_up(amount << 96, liquidity)
        if amount <= U160_MAX
        else mul_div_rounding_up(amount, Q96, liquidity)
    )
    if sqrt_p <= quotient:
        raise MathError("next sqrt price from amount1 underflow")
    return sqrt_p - quotient


def get_next_sqrt_price_from_input(sqrt_p: int, liquidity: int, amount_in: int, zero_for_one: bool) -> int:
    if sqrt_p <= 0 or liquidity <= 0:
        raise MathError("price and liquidity must be positive")
    if zero_for_one:
        return _next_sqrt_from_amount0_rounding_up(sqrt_p, liquidity, amount_in, True)
    return _next_sqrt_from_amount1_rounding_down(sqrt_p, liquidity, amount_in, True)


def compute_swap_step_exact_in(
    sqrt_current: int, sqrt_target: int, liquidity: int, amount_remaining: int, fee_pips: int
) -> tuple[int, int, int, int]:
    """SwapMath.computeSwapStep for an exact-input step: (sqrt_next, amount_in, amount_out, fee)."""
    zero_for_one = sqrt_current >= sqrt_target
    amount_less_fee = mul_div(amount_remaining, 1_000_000 - fee_pips, 1_000_000)
    if zero_for_one:
        amount_in = get_amount0_delta(sqrt_target, sqrt_current, liquidity, True)
    else:
        amount_in = get_amount1_delta(sqrt_current, sqrt_target, liquidity, True)
    if amount_less_fee >= amount_in:
        sqrt_next = sqrt_target
    else:
        sqrt_next = get_next_sqrt_price_from_input(sqrt_current, liquidity, amount_less_fee, zero_for_one)
    reached = sqrt_target == sqrt_next
    if zero_for_one:
        if not reached:
            amount_in = get_amount0_delta(sqrt_next, sqrt_current, liquidity, True)
        amount_out = get_amount1_delta(sqrt_next, sqrt_current, liquidity, False)
    else:
        if not reached:
            amount_in = get_amount1_delta(sqrt_current, sqrt_next, liquidity, True)
        amount_out = get_amount0_delta(sqrt_current, sqrt_next, liquidity, False)
    if not reached:
        fee_amount = amount_remaining - amount_in
    else:
        fee_amount = mul_div_rounding_up(amount_in, fee_pips, 1_000_000 - fee_pips)
    return sqrt_next, amount_in, amount_out, fee_amount


def v2_amount_out(amount_in: int, reserve_in: int, reserve_out: int, fee_bps: int = 30) -> int:
    """UniswapV2Library.getAmountOut (0.3 % fee by default)."""
    if amount_in <= 0 or reserve_in <= 0 or reserve_out <= 0:
        return 0
    amount_in_with_fee = amount_in * (10_000 - fee_bps)
    return amount_in_with_fee * reserve_out // (reserve_in * 10_000 + amount_in_with_fee)
