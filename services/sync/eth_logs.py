"""Uniswap V2/V3/V4 logs as eth_getLogs returns them, decoded into :class:`PoolUpdate`: V2
Sync/Mint/Burn/Swap, V3 Initialize/Mint/Burn/Swap, V4 Initialize/ModifyLiquidity/Swap (V4 logs
come from the PoolManager, the pool id in the first indexed topic)."""

from __future__ import annotations

from typing import Any

from eth_hash.auto import keccak

from services.sync.rpc import U64_MAX, hex_bytes, hex_int
from shared.exex import PoolUpdate


def topic(signature: str) -> str:
    return "0x" + bytes(keccak(signature.encode())).hex()


V2_SYNC = topic("Sync(uint112,uint112)")
V2_MINT = topic("Mint(address,uint256,uint256)")
V2_BURN = topic("Burn(address,uint256,uint256,address)")
V2_SWAP = topic("Swap(address,uint256,uint256,uint256,uint256,address)")
V3_INIT = topic("Initialize(uint160,int24)")
V3_MINT = topic("Mint(address,address,int24,int24,uint128,uint256,uint256)")
V3_BURN = topic("Burn(address,int24,int24,uint128,uint256,uint256)")
V3_SWAP = topic("Swap(address,address,int256,int256,uint160,uint128,int24)")
V4_INIT = topic("Initialize(bytes32,address,address,uint24,int24,address,uint160,int24)")
V4_MODIFY = topic("ModifyLiquidity(bytes32,address,int24,int24,int256,bytes32)")
V4_SWAP = topic("Swap(bytes32,address,int128,int128,uint160,uint128,int24,uint24)")
TOPICS = [V2_SYNC, V2_MINT, V2_BURN, V2_SWAP, V3_INIT, V3_MINT, V3_BURN, V3_SWAP, V4_INIT, V4_MODIFY, V4_SWAP]
V4_TOPICS = {V4_INIT, V4_MODIFY, V4_SWAP}


def _signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


def _data(raw: str, n: int) -> list[int]:
    if len(raw) < 2 + 64 * n:
        raise ValueError(f"log data too short for {n} words")
    return [int(raw[2 + 64 * i : 66 + 64 * i], 16) for i in range(n)]


def decode_log(entry: dict[str, Any]) -> PoolUpdate | None:
    """One eth_getLogs entry -> PoolUpdate (None: not one of ours). Raises ValueError on garbage."""
    topics = entry["topics"]
    if not topics:
        return None
    t0 = topics[0]
    base: dict[str, Any] = {
        "seq": 0,
        "block": hex_int(entry["blockNumber"]),
        "tx": hex_int(entry["transactionIndex"]),
        "log": hex_int(entry["logIndex"]),
    }
    if not all(0 <= base[k] <= U64_MAX for k in ("block", "tx", "log")):
        raise ValueError("block number, transaction or log index out of uint64")
    data = entry["data"]
    if t0 in V4_TOPICS:
        base["pool"] = hex_bytes(topics[1])
        if t0 == V4_SWAP:
            a0, a1, sqrt, liq, tick, fee = _data(data, 6)
            return PoolUpdate(
                **base, protocol="v4", kind="Swap", amount0=_signed(a0, 128), amount1=_signed(a1, 128),
                sqrt_price_x96=sqrt, liquidity=liq, tick=_signed(tick, 24), fee=fee,
            )  # fmt: skip
        if t0 == V4_MODIFY:
            lower, upper, delta, _salt = _data(data, 4)
            return PoolUpdate(
                **base, protocol="v4", kind="ModifyLiquidity", tick_lower=_signed(lower, 24),
                tick_upper=_signed(upper, 24), liquidity_delta=_signed(delta, 256),
            )  # fmt: skip
        fee, spacing, _hooks, sqrt, tick = _data(data, 5)
        return PoolUpdate(
            **base, protocol="v4", kind="Initialize", fee=fee, tick_spacing=_signed(spacing, 24),
            sqrt_price_x96=sqrt, tick=_signed(tick, 24),
        )  # fmt: skip
    base["pool"] = hex_bytes(entry["address"])
    if t0 == V2_SYNC:
        r0, r1 = _data(data, 2)
        return PoolUpdate(**base, protocol="v2", kind="Sync", reserve0=r0, reserve1=r1)
    if t0 == V3_SWAP:
        a0, a1, sqrt, liq, tick = _data(data, 5)
        return PoolUpdate(
            **base, protocol="v3", kind="Swap", amount0=_signed(a0, 256), amount1=_signed(a1, 256),
            sqrt_price_x96=sqrt, liquidity=liq, tick=_signed(tick, 24),
        )  # fmt: skip
    if t0 in (V3_MINT, V3_BURN):
        lower, upper = _signed(int(topics[2], 16), 24), _signed(int(topics[3], 16), 24)
        if t0 == V3_MINT:
            _sender, amount, a0, a1 = _data(data, 4)
            delta = amount
        else:
            amount, a0, a1 = _data(data, 3)
            delta = -amount
        return PoolUpdate(
            **base, protocol="v3", kind="Mint" if t0 == V3_MINT else "Burn", tick_lower=lower, tick_upper=upper, liquidity_delta=delta,
            amount0=a0, amount1=a1,
        )  # fmt: skip
    if t0 == V2_SWAP:
        in0, in1, out0, out1 = _data(data, 4)
        return PoolUpdate(**base, protocol="v2", kind="Swap", amount0=in0 - out0, amount1=in1 - out1)
    if t0 in (V2_MINT, V2_BURN):
        a0, a1 = _data(data, 2)
        return PoolUpdate(
            **base, protocol="v2", kind="Mint" if t0 == V2_MINT else "Burn", amount0=a0, amount1=a1
        )
    if t0 == V3_INIT:
        sqrt, tick = _data(data, 2)
        return PoolUpdate(
            **base, protocol="v3", kind="Initialize", sqrt_price_x96=sqrt, tick=_signed(tick, 24)
        )
    return None
