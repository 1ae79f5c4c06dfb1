"""The ``registry`` config section. ``pools:`` is seed 000's block as written::

registry:
  pools:
    H1: {ttl: 120m, hit_tolerance: 0.0}
    H4: {ttl: 6h, hit_tolerance: 0.0}
    D1: {ttl: 2d, hit_tolerance: 0.0}
    strength_threshold: 0.1
    grace_period_minutes: 5
    max_pools_per_tf: 10000
    auto_expire_interval: 30s
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from services.registry.patterns import FvgRule
from services.registry.zones import NS, Rules, TimeframeRules, timeframe_ns
from shared.config import Duration, Endpoint, Port, convert
from shared.constants import PORTS, tcp

_GLOBAL_KEYS = {"strength_threshold", "grace_period_minutes", "max_pools_per_tf", "auto_expire_interval"}


class TimeframePools(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ttl: Duration
    hit_tolerance: Annotated[float, msgspec.Meta(ge=0)] = 0.0


class PoolsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    timeframes: dict[str, TimeframePools]
    strength_threshold: float = 0.1
    grace_period_minutes: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    max_pools_per_tf: Annotated[int, msgspec.Meta(ge=1)] = 10_000
    auto_expire_interval: Duration = Duration(30.0)

    def rules(self) -> Rules:
        return Rules(
            timeframes={
                tf: TimeframeRules(ttl_ns=int(p.ttl * NS), hit_tolerance=p.hit_tolerance)
                for tf, p in self.timeframes.items()
            },
            strength_threshold=self.strength_threshold,
            grace_ns=int(self.grace_period_minutes * 60 * NS),
            max_per_tf=self.max_pools_per_tf,
        )


DEFAULT_POOLS: dict[str, Any] = {
    "H1": {"ttl": "120m", "hit_tolerance": 0.0},
    "H4": {"ttl": "6h", "hit_tolerance": 0.0},
    "D1": {"ttl": "2d", "hit_tolerance": 0.0},
    "strength_threshold": 0.1,
    "grace_period_minutes": 5,
    "max_pools_per_tf": 10000,
    "auto_expire_interval": "30s",
}


def parse_pools(raw: dict[str, Any], where: str = "pools") -> PoolsConfig:
    """Split seed 000's flat ``pools:`` mapping into global keys and per-timeframe entries."""
    flat: dict[str, Any] = {}
    tfs: dict[str, Any] = {}
    for key, value in raw.items():
        if key in _GLOBAL_KEYS:
            flat[key] = value
            continue
        try:
            timeframe_ns(key)
        except ValueError as exc:
            raise ValueError(
                f"{where}.{key}: unknown key; expected a timeframe (e.g. H1) or one of "
                f"{', '.join(sorted(_GLOBAL_KEYS))} ({exc})"
            ) from None
        tfs[key] = value
    if not tfs:
        raise ValueError(f"{where}: no timeframe configured (e.g. H1: {{ttl: 120m}})")
    flat["timeframes"] = tfs
    try:
        return convert(flat, PoolsConfig, where)
    except Exception as exc:  # ConfigError: re-raised as ValueError so msgspec reports it
        raise ValueError(str(exc).replace(f"{where}.timeframes.", f"{where}.")) from None


class DetectorsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    enabled: bool = True
    timeframes: list[str] = []  # default: every timeframe in pools
    swing_bars: Annotated[int, msgspec.Meta(ge=1, le=50)] = 2  # N bars each side of a pivot
    fvg_min_gap: Annotated[float, msgspec.Meta(ge=0)] = 0.0  # smallest gap, fraction of price
    # "gap": c3 clears c1 (the default); "body": c2's body must also point in the gap's direction
    fvg_rule: FvgRule = "gap"
    # A candle closes when its symbol's event time passes its end plus this; a tick later than that
    # is counted as late. A live symbol that goes quiet closes its candles when the wall clock does.
    allowed_lateness: Duration = Duration(2.0)
    # Symbols whose candles are kept; one more drops the least recently ticked (0: no limit).
    max_symbols: Annotated[int, msgspec.Meta(ge=0)] = 100_000


class RegistryConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = tcp("registry", "pub")
    pull: Endpoint = tcp("registry", "pull")
    snapshot: Endpoint = tcp("registry", "snapshot")
    prices: list[Endpoint] = msgspec.field(default_factory=lambda: [tcp("ingest", "pub"), tcp("sync", "pub")])
    metrics_port: Port = PORTS["registry"]["metrics"]
    metrics_host: str = "127.0.0.1"
    store: str = "registry.sqlite"  # under common.data_dir; "" keeps zones in memory only
    store_flush_interval: Duration = Duration(1.0)
    # The detectors' candles are written a few symbols at a time (closed candles first), so that a
    # second's worth of ticks on thousands of symbols never stalls the loop in one transaction.
    detector_state_interval: Duration = Duration(0.1)
    detector_state_batch: Annotated[int, msgspec.Meta(ge=1)] = 25  # symbols per write
    restore_expire_delay: Duration = Duration(2.0)  # after a restart, before overdue zones expire
    # How far past now a detector event's (or a price's) time may lie: clock skew, not the future.
    future_horizon: Duration = Duration(86400.0)
    pools: dict[str, Any] = msgspec.field(default_factory=lambda: dict(DEFAULT_POOLS))
    detectors: DetectorsConfig = msgspec.field(default_factory=DetectorsConfig)

    def __post_init__(self) -> None:
        parsed = parse_pools(self.pools)
        if self.future_horizon > 7 * 86400:
            raise ValueError("future_horizon: at most 7d (the timing wheel's horizon)")
        for tf in self.detectors.timeframes:
            if tf not in parsed.timeframes:
                raise ValueError(f"detectors.timeframes: {tf!r} is not a timeframe in pools")

    def parsed_pools(self) -> PoolsConfig:
        return parse_pools(self.pools)
