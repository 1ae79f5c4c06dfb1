"""The connection-capacity planner: how to place pending assets, and when to recycle. Pure.

Rules (ENG-001 and beyond):

- a connection carries ``per_connection`` (400) subscriptions, never more than ``hard_limit`` (500);
- spare capacity on live connections is filled first, with a dynamic ``subscribe`` (no new socket);
- a new connection opens only for at least ``min_pending`` (50) assets, unless forced;
- a connection is recycled when expired / total >= 30 % and it is at least 5 minutes old.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Limits:
    per_connection: int = 400
    hard_limit: int = 500
    min_pending: int = 50
    max_connections: int = 100
    pollution_threshold: float = 0.30
    min_recycle_age: float = 300.0

    def __post_init__(self) -> None:
        if not 0 < self.per_connection <= self.hard_limit:
            raise ValueError(
                f"per_connection must be in 1..hard_limit ({self.hard_limit}); got {self.per_connection}"
            )
        if self.min_pending < 1:
            raise ValueError("min_pending must be at least 1")


@dataclass(slots=True, frozen=True)
class ConnView:
    conn_id: str
    total: int  # subscriptions held (expired included)
    accepting: bool  # connected and not draining: can take a dynamic subscribe


@dataclass(slots=True)
class Plan:
    fills: list[tuple[str, int]] = field(default_factory=list)  # (connection, how many to add)
    opens: list[int] = field(default_factory=list)  # sizes of new connections

    @property
    def assigned(self) -> int:
        return sum(n for _, n in self.fills) + sum(self.opens)


def plan(conns: list[ConnView], pending: int, limits: Limits, *, force: bool = False) -> Plan:
    """Where ``pending`` assets go now. ``force`` skips the minimum for a new connection."""
    out = Plan()
    remaining = pending
    for c in conns:
        if remaining <= 0:
            break
        if not c.accepting:
            continue
        spare = min(limits.per_connection, limits.hard_limit) - c.total
        if spare > 0:
            n = min(spare, remaining)
            out.fills.append((c.conn_id, n))
            remaining -= n
    room = limits.max_connections - len(conns)
    while remaining > 0 and room > 0 and (remaining >= limits.min_pending or force):
        n = min(limits.per_connection, remaining)
        out.opens.append(n)
        remaining -= n
        room -= 1
    return out


def should_recycle(total: int, expired: int, age: float, limits: Limits) -> bool:
    """Pollution at or above the threshold, and old enough to be worth replacing."""
    if total <= 0 or age < limits.min_recycle_age:
        return False
    return expired / total >= limits.pollution_threshold


def total_capacity(conns: list[ConnView], limits: Limits) -> int:
    return limits.per_connection * sum(1 for c in conns if c.accepting)
