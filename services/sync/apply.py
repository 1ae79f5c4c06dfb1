"""Per-protocol event application: V2 Sync/Swap/Mint/Burn, V3 Initialize/Swap/Mint/Burn, V4
Initialize/Swap/ModifyLiquidity, as the contracts change state, with the undo of each change.

Every value is checked before any write (uint112 reserves, uint128 liquidity, int128 net, the
ticks' range and spacing, the sqrt price's range), so a skipped event leaves the pool exact; each
skip is counted and logged rate-limited. An event of a pool being added is held (pools.py).
"""

from __future__ import annotations

from typing import Any

from services.sync import amm
from services.sync.amm import MathError
from services.sync.pool import Pool
from services.sync.pools import PoolBook
from shared.exex import PoolUpdate

# Undo entry tags: (tag, pool, old values...)
RESERVES = 0
PRICE = 1
TICK = 2


class ResyncNeeded(Exception):
    """The journal cannot bring the state to the new chain: too deep a revert, or a gap; or more
    events arrived for pools being added than can be held."""


class EventApplier(PoolBook):
    """Applies one event to its pool, recording the undo; restores an undo list."""

    def undo(self, undo: list[tuple[Any, ...]], changed: set[Pool]) -> None:
        """Restore the state before ``undo`` was recorded (newest change first)."""
        for item in reversed(undo):
            tag = item[0]
            pool: Pool = item[1]
            if tag == RESERVES:
                pool.reserve0, pool.reserve1 = item[2], item[3]
            elif tag == PRICE:
                pool.sqrt_price_x96, pool.tick, pool.liquidity = item[2], item[3], item[4]
            else:
                tick, old = item[2], item[3]
                if (old is None) != (tick not in pool.ticks):
                    pool._flip(tick)
                if old is None:
                    del pool.ticks[tick]
                else:
                    pool.ticks[tick] = old
            changed.add(pool)

    def _skip(self, kind: str, ev: PoolUpdate, why: str) -> None:
        stats = self.stats
        stats.errors += 1
        if kind == "overflow":
            stats.overflows += 1
        else:
            stats.invalid_events += 1
        self.last_error = f"block {ev.block} tx {ev.tx} log {ev.log} pool 0x{ev.pool.hex()}: {why}"
        self.skip_log(kind, "skipped %s event (%s): %s", ev.kind, kind, self.last_error)

    def apply_event(self, ev: PoolUpdate, undo: list[tuple[Any, ...]], block_hash: bytes) -> Pool | None:
        """Apply one event outside apply_block (replay of held events), recording undo into ``undo``."""
        return self._apply(ev, undo, block_hash)

    def _apply(self, ev: PoolUpdate, undo: list[tuple[Any, ...]], block_hash: bytes) -> Pool | None:
        pool = self.pools.get(ev.pool)
        stats = self.stats
        if pool is None:
            held = self.pending.get(ev.pool)
            if held is not None:
                if self._pending_count >= self.pending_capacity:
                    raise ResyncNeeded(f"more than {self.pending_capacity} events held for pools being added")
                held.append((block_hash, ev))
                self._pending_count += 1
                stats.pending_buffered += 1
                return None
            stats.pool_not_found += 1
            stats.errors += 1
            return None
        if ev.block <= pool.snapshot_block or pool.stale:
            stats.stale_skipped += 1
            return None
        if ev.protocol != pool.protocol:
            self._skip("invalid", ev, f"a {ev.protocol} event for a {pool.protocol} pool")
            return None
        kind = ev.kind
        if pool.protocol == "v2":
            if kind == "Sync":
                r0 = ev.reserve0
                r1 = ev.reserve1
                if not (0 <= r0 <= amm.U112_MAX and 0 <= r1 <= amm.U112_MAX):
                    self._skip("overflow", ev, "reserves out of uint112")
                    return None
                undo.append((RESERVES, pool, pool.reserve0, pool.reserve1))
                pool.reserve0 = r0
                pool.reserve1 = r1
                stats.v2_syncs_processed += 1
                return pool
            if kind == "Swap":
                stats.v2_swaps_processed += 1
            elif kind == "Mint":
                stats.v2_mints_processed += 1
            elif kind == "Burn":
                stats.v2_burns_processed += 1
            else:
                self._skip("invalid", ev, f"V2 has no {kind} event")
            return None  # Sync carries the reserves
        v3 = pool.protocol == "v3"
        if kind == "Swap" or kind == "Initialize":
            sqrt_price = ev.sqrt_price_x96
            tick = ev.tick
            liquidity = ev.liquidity if kind == "Swap" else pool.liquidity
            if not amm.MIN_SQRT_RATIO <= sqrt_price < amm.MAX_SQRT_RATIO:
                self._skip("overflow", ev, f"sqrt price {sqrt_price} out of range")
                return None
            if not (amm.MIN_TICK <= tick <= amm.MAX_TICK and 0 <= liquidity <= amm.U128_MAX):
                self._skip("overflow", ev, "tick out of int24 range or liquidity out of uint128")
                return None
            undo.append((PRICE, pool, pool.sqrt_price_x96, pool.tick, pool.liquidity))
            pool.sqrt_price_x96 = sqrt_price
            pool.tick = tick
            pool.liquidity = liquidity
            if kind == "Swap":
                if v3:
                    stats.v3_swaps_processed += 1
                else:
                    stats.v4_swaps_processed += 1
            elif v3:
                stats.v3_initializes_processed += 1
            else:
                stats.v4_initializes_processed += 1
            return pool
        if (v3 and kind in ("Mint", "Burn")) or (not v3 and kind == "ModifyLiquidity"):
            delta = ev.liquidity_delta
            if (kind == "Mint" and delta <= 0) or (kind == "Burn" and delta > 0):
                self._skip("invalid", ev, f"{kind} with liquidity_delta {delta}")
                return None
            try:
                self._modify(pool, ev.tick_lower, ev.tick_upper, delta, undo)
            except MathError as exc:
                self._skip("overflow", ev, str(exc))
                return None
            except ValueError as exc:
                self._skip("invalid", ev, str(exc))
                return None
            if kind == "Mint":
                stats.v3_mints_processed += 1
            elif kind == "Burn":
                stats.v3_burns_processed += 1
            else:
                stats.v4_modify_liquidity_processed += 1
            return pool
        self._skip("invalid", ev, f"{pool.protocol.upper()} has no {kind} event")
        return None

    def _modify(self, pool: Pool, lower: int, upper: int, delta: int, undo: list[tuple[Any, ...]]) -> None:
        """Pool._modifyPosition's tick and in-range liquidity updates, all checked before any write."""
        spacing = pool.tick_spacing
        if spacing <= 0:
            raise ValueError("pool has no tick spacing")
        if not (amm.MIN_TICK <= lower < upper <= amm.MAX_TICK):
            raise ValueError(f"bad tick range [{lower}, {upper})")
        if lower % spacing or upper % spacing:
            raise ValueError(f"ticks [{lower}, {upper}) not multiples of the spacing {spacing}")
        amm.check_int128(delta, "liquidity delta")
        if delta == 0:
            return
        ticks = pool.ticks
        old_lower = ticks.get(lower)
        old_upper = ticks.get(upper)
        gross_l, net_l = old_lower or (0, 0)
        gross_u, net_u = old_upper or (0, 0)
        new_gross_l = amm.add_delta(gross_l, delta)
        new_gross_u = amm.add_delta(gross_u, delta)
        if delta > 0 and max(new_gross_l, new_gross_u) > pool.max_liquidity_per_tick:
            raise MathError("LO: tick liquidity above the maximum per tick")
        new_net_l = amm.check_int128(net_l + delta, "liquidity net")
        new_net_u = amm.check_int128(net_u - delta, "liquidity net")
        in_range = lower <= pool.tick < upper
        new_liquidity = amm.add_delta(pool.liquidity, delta) if in_range else pool.liquidity
        # all checks passed: write
        undo.append((TICK, pool, lower, old_lower))
        undo.append((TICK, pool, upper, old_upper))
        for tick, old, gross, net in (
            (lower, old_lower, new_gross_l, new_net_l),
            (upper, old_upper, new_gross_u, new_net_u),
        ):
            if gross == 0:
                del ticks[tick]
            else:
                ticks[tick] = (gross, net)
            if (old is None) != (gross == 0):
                pool._flip(tick)
        if in_range:
            undo.append((PRICE, pool, pool.sqrt_price_x96, pool.tick, pool.liquidity))
            pool.liquidity = new_liquidity
