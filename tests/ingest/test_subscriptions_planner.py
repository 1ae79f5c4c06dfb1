from __future__ import annotations

import pytest

from services.ingest.planner import ConnView, Limits, plan, should_recycle, total_capacity
from services.ingest.subscriptions import Subscriptions

L = Limits()


def ids(n: int, prefix: str = "a") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def test_1000_pending_opens_400_400_200() -> None:
    p = plan([], 1000, L)
    assert p.fills == [] and p.opens == [400, 400, 200]


def test_below_minimum_waits_unless_forced() -> None:
    assert plan([], 49, L).opens == []
    assert plan([], 50, L).opens == [50]
    assert plan([], 3, L, force=True).opens == [3]


def test_spare_capacity_filled_before_opening() -> None:
    conns = [ConnView("c1", 390, True), ConnView("c2", 400, True), ConnView("c3", 100, False)]
    p = plan(conns, 20, L)  # below the minimum: still placed on live spare capacity
    assert p.fills == [("c1", 10)] and p.opens == []
    p = plan(conns, 460, L)
    assert p.fills == [("c1", 10)] and p.opens == [400, 50]
    p = plan(conns, 30, L)
    assert p.fills == [("c1", 10)] and p.opens == []  # the 20 left wait for the minimum


def test_many_assets_and_connection_cap() -> None:
    p = plan([], 5200, L)
    assert len(p.opens) == 13 and max(p.opens) == 400 and sum(p.opens) == 5200
    capped = plan([], 5200, Limits(max_connections=5))
    assert capped.opens == [400] * 5


def test_limits_validated() -> None:
    with pytest.raises(ValueError):
        Limits(per_connection=501)
    assert total_capacity([ConnView("a", 1, True), ConnView("b", 1, False)], L) == 400


def test_recycle_decision() -> None:
    assert should_recycle(400, 120, 300.0, L)  # 30 % and 5 min
    assert not should_recycle(400, 119, 3600.0, L)
    assert not should_recycle(400, 400, 299.9, L)  # too young
    assert not should_recycle(0, 0, 1e9, L)


def test_subscription_lifecycle_and_pollution() -> None:
    r = Subscriptions()
    assert r.add(ids(10)) == 10 and r.add(ids(10)) == 0
    assert r.pending_count() == 10
    r.add(["a7", "p1"], priority=True)
    batch = r.take_pending_batch(4)
    assert batch == ["a7", "p1", "a0", "a1"]
    r.mark_subscribed(batch, "c1")
    assert r.pending_count() == 7
    assert r.mark_expired(["a0", "a0", "zz"]) == ["a0"]
    s = r.connection_stats("c1")
    assert (s.total, s.expired, s.live) == (4, 1, 3) and s.pollution == 0.25
    assert sorted(r.live_assets("c1")) == ["a1", "a7", "p1"]
    # recycling: the live ones move, the old connection's expired slot is forgotten
    r.move(r.live_assets("c1"), "c2")
    r.release_connection("c1")
    assert r.connection_stats("c2").total == 3 and r.connection_stats("c1").total == 0
    # a connection lost: its live assets go back to the front of the queue
    back = r.release_connection("c2")
    assert sorted(back) == ["a1", "a7", "p1"]
    assert sorted(r.take_pending_batch(3)) == ["a1", "a7", "p1"]
    assert r.counts() == {"pending": 10, "subscribed": 0, "expired": 2}


def test_expired_slots_dropped_on_resubscribe() -> None:
    r = Subscriptions()
    r.add(ids(4))
    r.mark_subscribed(r.take_pending_batch(4), "c1")
    r.mark_expired(["a1", "a2"])
    assert r.connection_stats("c1").pollution == 0.5
    assert sorted(r.drop_expired("c1")) == ["a1", "a2"]
    assert r.connection_stats("c1").pollution == 0.0 and r.connection_stats("c1").total == 2
    assert r.add(["a1"]) == 0  # an expired asset is not queued again
