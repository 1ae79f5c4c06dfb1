"""The registry core's plain counters: bumped on the hot path, read by the metrics collector when
Prometheus scrapes (on the HTTP server's thread: counts, never walks of the zone dicts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Upper bounds (le) of the wheel-lag histogram's buckets, in ns: fine around the goals (p99 5 ms,
# max 50 ms); the wheel's tick is 1 ms.
LAG_BOUNDS_NS: Final = tuple(
    int(ms * 1_000_000)
    for ms in (0.5, 1, 2, 3, 4, 5, 7.5, 10, 15, 20, 30, 50, 75, 100, 250, 500, 1000, 2500, 10_000)
)


@dataclass(slots=True)
class TimeframeStats:
    created: int = 0
    touched: int = 0
    expired_ttl: int = 0
    expired_filled: int = 0
    expired_evicted: int = 0
    removed: int = 0
    active: int = 0  # active + touched, now
    touched_now: int = 0  # of which touched
    grace: int = 0  # expired, kept for the grace period, now


@dataclass(slots=True)
class RegistryStats:
    by_tf: dict[str, TimeframeStats] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)  # reason -> count
    duplicates: int = 0
    prices: int = 0
    bad_prices: int = 0
    expiry_errors: int = 0  # zones whose expiry (or removal) raised: skipped, the others handled
    last_lag_ns: int = 0  # how late the last advance fired its most overdue timer
    max_lag_ns: int = 0
    # How late each timer fired (TTL or grace end), by LAG_BOUNDS_NS bucket (the last: beyond).
    lag_counts: list[int] = field(default_factory=lambda: [0] * (len(LAG_BOUNDS_NS) + 1))
    lag_sum_ns: int = 0

    def tf(self, timeframe: str) -> TimeframeStats:
        st = self.by_tf.get(timeframe)
        if st is None:
            st = self.by_tf[timeframe] = TimeframeStats()
        return st
