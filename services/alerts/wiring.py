"""How the alerts service is put together from its config: the store, strategy specs, policies."""

from __future__ import annotations

import os
from collections.abc import Iterable

from services.alerts.config import AlertsConfig, StrategyConfig
from services.alerts.events import EventStrategy
from services.alerts.frequency import Policy
from services.alerts.params import ZoneEventRule, parse_as
from services.alerts.store import ThrottleStore
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from services.alerts.throttle import GLOB, StrategySpec, ThrottleStats, size_class
from shared.constants import ZONE, dex_swap_topic, md_topic, px_topic

NS = 1_000_000_000
# Every input alerts can read: prices, trades, swaps and zone events.
ALL_INPUTS = (px_topic(""), md_topic("trade", ""), dex_swap_topic(""), f"{ZONE}.")


def input_prefixes(strategies: Iterable[StrategyConfig]) -> tuple[str, ...]:
    """The topic prefixes alerts subscribes to: what its strategies read, so that nothing else
    crosses the socket or wakes the service. A bucketed strategy reads every input (each one moves
    its ticker and fills the bars). Event strategies read what they check: ``price_cross`` the
    prices of its universe (a listed ticker, or a glob's literal start: ``pm.*`` reads ``px.pm.``),
    ``zone_event`` the zone events it names (``zone.touched.``; ``zone.touched.H1.`` when it names
    its timeframes)."""
    out: list[str] = []
    for s in strategies:
        if s.trigger == "bucket":
            return ALL_INPUTS
        if s.kind == "price_cross":
            if s.universe == "discover":
                out.append(px_topic(""))
            else:
                out += [px_topic(_literal_start(u)) for u in s.universe]
        elif s.kind == "zone_event":
            rule = parse_as(ZoneEventRule, s.params)
            for event in sorted(rule.events):
                if rule.timeframes:
                    out += [f"{ZONE}.{event}.{tf}." for tf in sorted(rule.timeframes)]
                else:
                    out.append(f"{ZONE}.{event}.")
    return _widest(out)


def _literal_start(pattern: str) -> str:
    """What every ticker a universe entry matches starts with (the entry itself if not a glob)."""
    cut = min((i for i, c in enumerate(pattern) if c in GLOB), default=len(pattern))
    return pattern[:cut]


def _widest(prefixes: list[str]) -> tuple[str, ...]:
    """The prefixes, each once, without those a shorter one already covers; in order."""
    kept: list[str] = []
    for p in sorted(set(prefixes), key=len):
        if not any(p.startswith(k) for k in kept):
            kept.append(p)
    return tuple(sorted(kept))


def open_store(cfg: AlertsConfig, data_dir: str) -> ThrottleStore:
    if cfg.store == "redis":
        return RedisStore(
            cfg.redis_url,
            prefix=cfg.redis_prefix,
            large_universe=cfg.large_universe,
            lease_ns=int(cfg.job_lease * NS),
        )
    path = cfg.sqlite_path or os.path.join(data_dir, "alerts.sqlite3")
    return SqliteStore(path, large_universe=cfg.large_universe)


def spec_of(s: StrategyConfig) -> StrategySpec:
    return StrategySpec.from_universe(s.id, int(s.bucket * NS), s.universe)


def event_strategy_of(s: StrategyConfig) -> EventStrategy:
    return EventStrategy(s.id, s.kind, spec_of(s), s.params)


def policy_of(s: StrategyConfig) -> Policy:
    bar = s.bar if s.bar > 0 else s.bucket
    return Policy(s.frequency, int(bar * NS), int(s.repeat_interval * NS))


def workers_origin(cfg: AlertsConfig) -> str:
    """Where the workers come from, for the start-up log."""
    if cfg.workers == 0:
        return f"expecting external workers on {cfg.jobs} (alerts.workers 0: any number, none spawned)"
    if not cfg.spawn_workers:
        return (
            f"expecting {cfg.workers} external workers on {cfg.jobs} "
            "(alerts.spawn_workers false: `python -m services.alerts.worker` runs them)"
        )
    return f"spawned {cfg.workers} workers on {cfg.jobs}, restarted when they exit"


def summary_line(st: ThrottleStats, sizes: dict[str, int], tracked: int) -> str:
    """The periodic summary, in the seed's terms."""
    counts = {"small": 0, "medium": 0, "large": 0, "xlarge": 0}
    for n in sizes.values():
        counts[size_class(n)] += 1
    avg = sum(sizes.values()) / len(sizes) if sizes else 0.0
    return (
        f"ticker updates: {st.ticker_updates}, universe updates: {st.universe_updates}, "
        f"total tracked: {tracked} | strategy runs: {st.runs}, "
        f"skipped (no update): {st.skipped_no_update}, skipped (bucket dup): {st.skipped_duplicate} | "
        f"cleanup ops: {st.cleanups}, large intersections: {st.large_intersections}, "
        f"universe discoveries: {st.discoveries} | universe distribution: small (<=10): {counts['small']}, "
        f"medium (<=100): {counts['medium']}, large (<=1000): {counts['large']}, "
        f"xlarge (>1000): {counts['xlarge']} | average universe size: {avg:.0f} tickers "
        f"across {len(sizes)} strategies"
    )
