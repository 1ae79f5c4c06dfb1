"""How the alerts service is put together from its config: the store, strategy specs, policies."""

from __future__ import annotations

import os

from services.alerts.config import AlertsConfig, StrategyConfig
from services.alerts.events import EventStrategy
from services.alerts.frequency import Policy
from services.alerts.store import ThrottleStore
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from services.alerts.throttle import StrategySpec, ThrottleStats, size_class

NS = 1_000_000_000


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
