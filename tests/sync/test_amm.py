"""TickMath and liquidity math equal Uniswap's: published v3-core values and the real bytecode in an EVM."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.sync import amm
from services.sync.amm import (
    MAX_SQRT_RATIO,
    MAX_TICK,
    MIN_SQRT_RATIO,
    MIN_TICK,
    MathError,
    get_sqrt_ratio_at_tick,
    get_tick_at_sqrt_ratio,
)

ROOT = Path(__file__).resolve().parents[2]
TICKMATH_ARTIFACT = ROOT / "node_modules/@uniswap/v4-core/out/TickMathTest.sol/TickMathTest.json"

# Published by v3-core's TickMath.spec.ts.
V3_CORE_VECTORS = {
    MIN_TICK: 4295128739,
    MIN_TICK + 1: 4295343490,
    MAX_TICK - 1: 1461373636630004318706518188784493106690254656249,
    MAX_TICK: 1461446703485210103287273052203988822378723970342,
    0: 1 << 96,
}


def test_published_vectors() -> None:
    for tick, sqrt in V3_CORE_VECTORS.items():
        assert get_sqrt_ratio_at_tick(tick) == sqrt
    assert get_tick_at_sqrt_ratio(MIN_SQRT_RATIO) == MIN_TICK
    assert get_tick_at_sqrt_ratio(MAX_SQRT_RATIO - 1) == MAX_TICK - 1
    assert get_tick_at_sqrt_ratio(1 << 96) == 0


def test_reverts_like_the_contract() -> None:
    with pytest.raises(MathError, match="T"):
        get_sqrt_ratio_at_tick(MAX_TICK + 1)
    with pytest.raises(MathError, match="T"):
        get_sqrt_ratio_at_tick(MIN_TICK - 1)
    with pytest.raises(MathError, match="R"):
        get_tick_at_sqrt_ratio(MIN_SQRT_RATIO - 1)
    with pytest.raises(MathError, match="R"):
        get_tick_at_sqrt_ratio(MAX_SQRT_RATIO)


@given(st.integers(MIN_TICK + 1, MAX_TICK - 1))
def test_tick_round_trip_is_the_greatest_tick(tick: int) -> None:
    sqrt = get_sqrt_ratio_at_tick(tick)
    assert get_tick_at_sqrt_ratio(sqrt) == tick
    assert get_tick_at_sqrt_ratio(sqrt - 1) == tick - 1
    assert get_sqrt_ratio_at_tick(tick + 1) > sqrt


def test_add_delta_bounds() -> None:
    assert amm.add_delta(1, -1) == 0
    assert amm.add_delta(amm.U128_MAX - 1, 1) == amm.U128_MAX
    with pytest.raises(MathError, match="LS"):
        amm.add_delta(0, -1)
    with pytest.raises(MathError, match="LA"):
        amm.add_delta(amm.U128_MAX, 1)


def test_max_liquidity_per_tick_matches_v3_core() -> None:
    # v3-core Tick.spec.ts
    assert amm.max_liquidity_per_tick(10) == 1917569901783203986719870431555990
    assert amm.max_liquidity_per_tick(60) == 11505743598341114571880798222544994
    assert amm.max_liquidity_per_tick(200) == 38350317471085141830651933667504588
    assert amm.max_liquidity_per_tick(887272) == amm.U128_MAX // 3


def test_v3_swap_step_matches_v3_core_vector() -> None:
    # SwapMath.spec.ts: "exact amount in that gets capped at price target in one for zero"
    price = 79228162514264337593543950336
    target = 79623317895830914510639640423  # encodePriceSqrt(101, 100)
    sqrt_next, amount_in, amount_out, fee = amm.compute_swap_step_exact_in(
        price, target, 2 * 10**18, 10**18, 600
    )
    assert (amount_in, fee, amount_out) == (9975124224178055, 5988667735148, 9925619580021728)
    assert sqrt_next == target


def _evm_tickmath() -> tuple[Callable[[int], int], Callable[[int], int]]:
    pyrevm = pytest.importorskip("pyrevm")
    if not TICKMATH_ARTIFACT.exists():
        pytest.skip("npm package @uniswap/v4-core not installed (make node-deps)")
    from eth_abi.abi import decode, encode
    from eth_hash.auto import keccak

    code = json.loads(TICKMATH_ARTIFACT.read_text())["bytecode"]["object"]
    evm = pyrevm.EVM()
    me = "0x" + "11" * 20
    evm.set_balance(me, 10**20)
    addr = evm.deploy(me, bytes.fromhex(code.removeprefix("0x")))
    sel_sqrt = keccak(b"getSqrtPriceAtTick(int24)")[:4]
    sel_tick = keccak(b"getTickAtSqrtPrice(uint160)")[:4]

    def sqrt_at(tick: int) -> int:
        out = evm.message_call(me, addr, sel_sqrt + encode(["int24"], [tick]))
        return int(decode(["uint160"], bytes(out))[0])

    def tick_at(sqrt: int) -> int:
        out = evm.message_call(me, addr, sel_tick + encode(["uint160"], [sqrt]))
        return int(decode(["int24"], bytes(out))[0])

    return sqrt_at, tick_at


def test_tickmath_equals_the_contract_bytecode() -> None:
    """Uniswap's TickMath (v4-core's port, itself tested equal to v3-core) run in pyrevm."""
    sqrt_at, tick_at = _evm_tickmath()
    rng = random.Random(5)
    ticks = [MIN_TICK, MIN_TICK + 1, -1, 0, 1, MAX_TICK - 1, MAX_TICK]
    ticks += [rng.randint(MIN_TICK, MAX_TICK) for _ in range(1500)]
    ticks += [rng.randint(-1000, 1000) for _ in range(300)]
    for tick in ticks:
        assert get_sqrt_ratio_at_tick(tick) == sqrt_at(tick), tick
    prices = [MIN_SQRT_RATIO, MIN_SQRT_RATIO + 1, 1 << 96, MAX_SQRT_RATIO - 1]
    prices += [rng.randint(MIN_SQRT_RATIO, MAX_SQRT_RATIO - 1) for _ in range(500)]
    prices += [int(2 ** rng.uniform(33, 160)) for _ in range(1000)]
    for sqrt in prices:
        sqrt = min(max(sqrt, MIN_SQRT_RATIO), MAX_SQRT_RATIO - 1)
        assert get_tick_at_sqrt_ratio(sqrt) == tick_at(sqrt), sqrt
