from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.registry.registry import Registry
from services.registry.zones import (
    BSL,
    FVG_BEARISH,
    FVG_BULLISH,
    SSL,
    Rules,
    TimeframeRules,
    ZoneError,
    timeframe_ns,
    zone_id,
)
from shared.clock import FakeClock
from shared.messages import Message, Zone, ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched

S = 1_000_000_000
T0 = 1_700_000_000 * S


def rules(**kw: object) -> Rules:
    tfs = {
        "S1": TimeframeRules(ttl_ns=1 * S),
        "H1": TimeframeRules(ttl_ns=7200 * S),
        "H4": TimeframeRules(ttl_ns=6 * 3600 * S),
        "D1": TimeframeRules(ttl_ns=2 * 86400 * S),
    }
    base: dict[str, object] = {"timeframes": tfs, "strength_threshold": 0.1, "grace_ns": 300 * S}
    base.update(kw)
    return Rules(**base)  # type: ignore[arg-type]


def state_of(zone: Zone) -> str:
    """A zone's state now (its type narrows to the last state asserted; the core changes it)."""
    return zone.state


def kinds(events: list[Message]) -> list[str]:
    out = []
    for e in events:
        if isinstance(e, ZoneExpired):
            out.append(f"expired:{e.reason}")
        else:
            out.append(type(e).__name__.removeprefix("Zone").lower())
    return out


def test_one_second_ttl_expires_exactly_after_one_second_of_fake_time() -> None:
    clock = FakeClock(T0 + 123_456)
    reg = Registry(rules(), clock.time_ns())
    zones = [
        reg.create("pm.a", "S1", FVG_BULLISH, 1.0 + i, 0.5 + i, 0.8, clock.time_ns(), clock.time_ns())
        for i in range(100)
    ]
    assert all(z is not None for z in zones)
    assert kinds(reg.drain()) == ["created"] * 100
    clock.advance(0.999999999)
    reg.advance(clock.time_ns())
    assert reg.drain() == []
    clock.advance(1e-9)
    assert reg.advance(clock.time_ns()) == 100
    events = reg.drain()
    assert kinds(events) == ["expired:ttl"] * 100
    assert all(e.event_ns == T0 + 123_456 + S for e in events)
    assert reg.query_active("pm.a", "S1") == []
    assert len(reg) == 100  # in grace
    clock.advance(300)
    reg.advance(clock.time_ns())
    assert kinds(reg.drain()) == ["removed"] * 100
    assert len(reg) == 0


def test_multi_tf_isolation() -> None:
    reg = Registry(rules(), T0)
    h1 = reg.create("pm.a", "H1", "custom", 0.6, 0.4, 1.0, T0, T0)
    h4 = reg.create("pm.a", "H4", "custom", 0.6, 0.4, 1.0, T0, T0)
    assert h1 is not None and h4 is not None
    reg.drain()
    reg.advance(T0 + 7200 * S)
    events = reg.drain()
    assert [(type(e).__name__, e.zone.id) for e in events] == [("ZoneExpired", h1.id)]  # type: ignore[attr-defined]
    assert reg.query_active("pm.a", "H4") == [h4]
    assert h4.state == "active"
    reg.on_price("pm.a", 0.9, T0 + 7200 * S)
    reg.on_price("pm.a", 0.5, T0 + 7201 * S)
    assert [(type(e).__name__, e.zone.id) for e in reg.drain()] == [("ZoneTouched", h4.id)]  # type: ignore[attr-defined]


def test_out_of_order_created_at_still_scheduled() -> None:
    reg = Registry(rules(), T0)
    now = T0 + 3600 * S
    reg.advance(now)
    z = reg.create("pm.a", "H1", "custom", 1.0, 0.9, 1.0, T0, now)  # created an hour ago, ttl 2h
    assert z is not None and z.expires_ns == T0 + 7200 * S
    reg.advance(T0 + 7200 * S - 1)
    assert kinds(reg.drain()) == ["created"]
    reg.advance(T0 + 7200 * S)
    assert kinds(reg.drain()) == ["expired:ttl"]
    # Already past its TTL when it arrives: expires on the next advance.
    old = reg.create("pm.a", "H1", "custom", 1.0, 0.9, 1.0, T0 - 86400 * S, now + 7200 * S)
    assert old is not None
    reg.advance(T0 + 7200 * S)  # its grace ended a day ago too: removed in the same pass
    assert kinds(reg.drain()) == ["created", "expired:ttl", "removed"]


def test_ids_are_deterministic() -> None:
    a = zone_id("H1", T0, "pm.a", FVG_BULLISH, 1.0, 0.5)
    assert a == zone_id("H1", T0, "pm.a", FVG_BULLISH, 1.0, 0.5)
    # The same value in every version: zones kept in the store are found again by the id of their
    # re-detection after an upgrade (48 bits of BLAKE2b over the packed range, time, symbol, kind).
    assert a == "H1_20231114T221320Z_82c2c428c969"
    assert zone_id("H1", T0, "pm.a", FVG_BULLISH, 1.0, 0.5) == a  # a second id hashes a fresh copy
    assert a != zone_id("H1", T0, "pm.a", FVG_BULLISH, 1.0, 0.50001)
    reg = Registry(rules(), T0)
    z1 = reg.create("pm.a", "H1", FVG_BULLISH, 1.0, 0.5, 1.0, T0, T0)
    z2 = reg.create("pm.a", "H1", FVG_BULLISH, 1.0, 0.5, 1.0, T0, T0)
    assert z1 is z2 and len(reg) == 1 and reg.stats.duplicates == 1


def test_touch_rules() -> None:
    reg = Registry(rules(), T0)
    reg.on_price("pm.a", 0.50, T0)
    z = reg.create("pm.a", "H1", "custom", 0.70, 0.60, 1.0, T0, T0)
    assert z is not None
    reg.drain()
    reg.on_price("pm.a", 0.59, T0)  # below still
    assert reg.drain() == []
    reg.on_price("pm.a", 0.60, T0)  # enters at the edge (tolerance 0)
    ev = reg.drain()
    assert kinds(ev) == ["touched"] and isinstance(ev[0], ZoneTouched) and ev[0].price == 0.60
    assert ev[0].zone.touches == 1 and ev[0].zone.state == "touched"
    reg.on_price("pm.a", 0.65, T0)  # stays inside: no new touch
    assert reg.drain() == []
    reg.on_price("pm.a", 0.75, T0)  # leaves above
    reg.on_price("pm.a", 0.69, T0)  # comes back: second touch
    reg.on_price("pm.a", 0.90, T0)
    reg.on_price("pm.a", 0.10, T0)  # jumps over it: third touch
    ev = reg.drain()
    assert kinds(ev) == ["touched", "touched"] and [e.zone.touches for e in ev] == [2, 3]  # type: ignore[attr-defined]
    assert z.touches == 3


def test_hit_tolerance_widens_reach() -> None:
    r = rules()
    r.timeframes["H1"] = TimeframeRules(ttl_ns=7200 * S, hit_tolerance=0.01)  # 1 % of top
    reg = Registry(r, T0)
    reg.on_price("pm.a", 50.0, T0)
    reg.create("pm.a", "H1", "custom", 100.0, 90.0, 1.0, T0, T0)
    reg.drain()
    reg.on_price("pm.a", 88.99, T0)
    assert reg.drain() == []
    reg.on_price("pm.a", 89.0, T0)  # 90 - 1 % of 100
    assert kinds(reg.drain()) == ["touched"]


@pytest.mark.parametrize(
    ("kind", "start", "path", "expected"),
    [
        (FVG_BULLISH, 0.9, [0.65, 0.55], ["touched", "expired:filled"]),  # down through bottom
        (FVG_BULLISH, 0.9, [0.65, 0.9], ["touched"]),  # back up: not filled
        (FVG_BULLISH, 0.9, [0.1], ["touched", "expired:filled"]),  # one jump across
        (FVG_BEARISH, 0.3, [0.65, 0.75], ["touched", "expired:filled"]),  # up through top
        (FVG_BEARISH, 0.3, [0.65, 0.3], ["touched"]),
        (BSL, 0.3, [0.65, 0.71], ["touched", "expired:filled"]),  # swept above the high
        (SSL, 0.9, [0.61, 0.59], ["touched", "expired:filled"]),  # swept below the low
        ("outside", 0.9, [0.65, 0.1, 0.65], ["touched", "touched"]),  # no far edge: never filled
    ],
)
def test_fill_rules(kind: str, start: float, path: list[float], expected: list[str]) -> None:
    reg = Registry(rules(), T0)
    reg.on_price("pm.a", start, T0)
    z = reg.create("pm.a", "H1", kind, 0.70, 0.60, 1.0, T0, T0)
    assert z is not None
    reg.drain()
    for p in path:
        reg.on_price("pm.a", p, T0 + S)
    assert kinds(reg.drain()) == expected
    if expected[-1] == "expired:filled":
        assert z.state == "grace" and z.ended_ns == T0 + S
        assert reg.query_active("pm.a", "H1") == []


def test_zones_created_before_first_price_are_placed_by_it() -> None:
    reg = Registry(rules(), T0)
    reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    reg.create("pm.a", "H1", "custom", 0.4, 0.3, 1.0, T0, T0)
    reg.drain()
    reg.on_price("pm.a", 0.65, T0)  # placed: inside the first (no touch), above the second
    assert reg.drain() == []
    reg.on_price("pm.a", 0.35, T0)
    assert kinds(reg.drain()) == ["touched"]


def test_grace_then_removed_and_lifecycle_states() -> None:
    reg = Registry(rules(grace_ns=60 * S), T0)
    z = reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    assert z is not None and z.state == "active"
    reg.on_price("pm.a", 0.5, T0)
    reg.on_price("pm.a", 0.65, T0)
    assert state_of(z) == "touched"
    reg.advance(T0 + 7200 * S)
    assert state_of(z) == "grace" and z.id in reg
    reg.advance(T0 + 7260 * S - 1)
    reg.advance(T0 + 7260 * S)
    ev = reg.drain()
    assert kinds(ev) == ["created", "touched", "expired:ttl", "removed"]
    assert [e.zone.state for e in ev] == ["active", "touched", "expired", "grace"]  # type: ignore[attr-defined]
    assert z.id not in reg


def test_zero_grace_removes_at_once() -> None:
    reg = Registry(rules(grace_ns=0), T0)
    reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    reg.advance(T0 + 7200 * S)
    assert kinds(reg.drain()) == ["created", "expired:ttl", "removed"]
    assert len(reg) == 0


def test_capacity_evicts_weakest_then_oldest() -> None:
    reg = Registry(rules(max_per_tf=3), T0)
    a = reg.create("pm.a", "H1", "custom", 1.0, 0.9, 0.5, T0, T0)
    b = reg.create("pm.b", "H1", "custom", 1.0, 0.9, 0.3, T0 + 1, T0)
    c = reg.create("pm.a", "H1", "custom", 2.0, 1.9, 0.3, T0 + 2, T0)
    other_tf = reg.create("pm.a", "H4", "custom", 1.0, 0.9, 0.2, T0, T0)
    assert a and b and c and other_tf
    reg.drain()
    d = reg.create("pm.a", "H1", "custom", 3.0, 2.9, 0.9, T0 + 3, T0)
    ev = reg.drain()
    assert kinds(ev) == ["expired:evicted", "created"]
    assert isinstance(ev[0], ZoneExpired) and ev[0].zone.id == b.id
    e = reg.create("pm.a", "H1", "custom", 4.0, 3.9, 0.9, T0 + 4, T0)
    ev = reg.drain()
    assert isinstance(ev[0], ZoneExpired) and ev[0].zone.id == c.id
    assert d and e and reg.active_count("H1") == 3 and reg.active_count("H4") == 1
    assert reg.stats.by_tf["H1"].expired_evicted == 2


def test_strength_threshold_and_bad_input() -> None:
    reg = Registry(rules(), T0)
    assert reg.create("pm.a", "H1", "custom", 1.0, 0.9, 0.05, T0, T0) is None
    with pytest.raises(ZoneError):
        reg.create("pm.a", "H1", "custom", 0.5, 0.9, 1.0, T0, T0)
    with pytest.raises(ZoneError):
        reg.create("pm.a", "H1", "custom", math.nan, 0.9, 1.0, T0, T0)
    with pytest.raises(ZoneError):
        reg.create("pm.a", "M7", "custom", 1.0, 0.9, 1.0, T0, T0)
    with pytest.raises(ZoneError):
        reg.create("", "H1", "custom", 1.0, 0.9, 1.0, T0, T0)
    assert reg.stats.rejected == {"weak": 1, "bad_range": 2, "unknown_timeframe": 1, "bad_symbol": 1}
    reg.on_price("pm.a", math.nan, T0)
    reg.on_price("pm.a", 0.5, T0)
    reg.on_price("pm.a", math.inf, T0)
    reg.on_price("pm.a", math.nan, T0)
    assert reg.stats.bad_prices == 3 and reg.last_price("pm.a") == 0.5
    assert len(reg) == 0 and reg.drain() == []


def test_confluence_lists_overlapping_zones_of_other_timeframes() -> None:
    reg = Registry(rules(), T0)
    h4 = reg.create("pm.a", "H4", "custom", 0.70, 0.60, 1.0, T0, T0)
    d1 = reg.create("pm.a", "D1", "custom", 0.62, 0.55, 1.0, T0, T0)
    reg.create("pm.a", "D1", "custom", 0.90, 0.80, 1.0, T0, T0)  # no overlap
    reg.create("pm.b", "D1", "custom", 0.66, 0.64, 1.0, T0, T0)  # other symbol
    h1_same = reg.create("pm.a", "H1", "custom", 0.61, 0.58, 1.0, T0 - 1, T0)  # same tf: not listed
    assert h4 and d1 and h1_same
    reg.drain()
    reg.create("pm.a", "H1", "custom", 0.65, 0.61, 1.0, T0, T0)
    (ev,) = reg.drain()
    assert isinstance(ev, ZoneCreated) and sorted(ev.confluence) == sorted([h4.id, d1.id])
    # Many zones: the sorted span list answers the same.
    for i in range(200):
        reg.create("pm.a", "D1", "custom", 10.0 + i + 0.5, 10.0 + i, 1.0, T0 + i, T0)
    reg.drain()
    reg.create("pm.a", "H1", "custom", 20.6, 19.4, 1.0, T0, T0)
    (ev,) = reg.drain()
    assert isinstance(ev, ZoneCreated) and len(ev.confluence) == 2  # [19, 19.5] and [20, 20.5]


def test_update_and_delete() -> None:
    reg = Registry(rules(), T0)
    reg.on_price("pm.a", 0.5, T0)
    z = reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    assert z is not None
    reg.update(z.id, top=0.45, bottom=0.40, strength=0.7)
    assert (z.top, z.bottom, z.strength) == (0.45, 0.40, 0.7)
    reg.drain()
    reg.on_price("pm.a", 0.44, T0)
    assert kinds(reg.drain()) == ["touched"]
    with pytest.raises(KeyError):
        reg.update("nope", strength=1.0)
    with pytest.raises(ZoneError):
        reg.update(z.id, top=0.1)
    assert reg.delete(z.id, T0)
    assert not reg.delete(z.id, T0)
    assert kinds(reg.drain()) == ["removed"]
    reg.advance(T0 + 30 * 86400 * S)
    assert reg.drain() == [] and len(reg) == 0


def test_restore_expires_what_expired_while_down() -> None:
    reg = Registry(rules(), T0)
    keep = reg.create("pm.a", "H4", "custom", 0.7, 0.6, 1.0, T0, T0)
    gone = reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    reg.on_price("pm.a", 0.5, T0)
    reg.on_price("pm.a", 0.65, T0)
    assert keep and gone
    saved = [z.__copy__() for z in reg.zones()]  # type: ignore[attr-defined]
    later = T0 + 3 * 3600 * S
    fresh = Registry(rules(), later)
    assert fresh.restore(saved, later) == 2
    assert fresh.drain() == []
    fresh.advance(later)
    ev = fresh.drain()
    # its TTL ended an hour ago, and its grace period after it: removed in the same pass
    assert [(type(e).__name__, e.zone.id) for e in ev] == [("ZoneExpired", gone.id), ("ZoneRemoved", gone.id)]  # type: ignore[attr-defined]
    restored = fresh.get(keep.id)
    assert restored is not None and restored.touches == 1 and restored.state == "touched"


def test_metrics_counters_follow_transitions() -> None:
    reg = Registry(rules(grace_ns=10 * S), T0)
    reg.on_price("pm.a", 0.5, T0)
    reg.create("pm.a", "H1", FVG_BEARISH, 0.7, 0.6, 1.0, T0, T0)
    reg.create("pm.a", "H1", "custom", 0.9, 0.8, 1.0, T0, T0)
    reg.on_price("pm.a", 0.75, T0)  # touches + fills the bearish FVG
    reg.advance(T0 + 7200 * S)
    reg.advance(T0 + 7300 * S)
    st_h1 = reg.stats.by_tf["H1"]
    assert (st_h1.created, st_h1.touched, st_h1.expired_filled, st_h1.expired_ttl, st_h1.removed) == (
        2,
        1,
        1,
        1,
        2,
    )
    assert st_h1.active == 0 and len(reg) == 0


def test_timeframe_names() -> None:
    assert timeframe_ns("M15") == 900 * S and timeframe_ns("D1") == 86400 * S
    with pytest.raises(ValueError):
        timeframe_ns("h1")


# ----------------------------------------------------------------------------------------------
# The price index against a brute-force reference of the same rules.


def reference_run(zones: list[tuple[str, float, float]], prices: list[float]) -> list[tuple[int, int, str]]:
    out = []
    fill_side = {FVG_BULLISH: -1, SSL: -1, FVG_BEARISH: 1, BSL: 1}
    pos: dict[int, str] = {}
    alive = set(range(len(zones)))
    last = prices[0]
    for i, (_, lo, hi) in enumerate(zones):
        pos[i] = "above" if lo > last else "below" if hi < last else "inside"
    for step, p in enumerate(prices[1:]):
        lo_p, hi_p = min(last, p), max(last, p)
        for i in sorted(alive):
            kind, lo, hi = zones[i]
            was = pos[i]
            if was != "inside" and lo <= hi_p and hi >= lo_p and p != last:
                out.append((step, i, "touched"))
            now = "above" if lo > p else "below" if hi < p else "inside"
            side = fill_side.get(kind, 0)
            if (side == 1 and now == "below" and was != "below") or (
                side == -1 and now == "above" and was != "above"
            ):
                out.append((step, i, "filled"))
                alive.discard(i)
            pos[i] = now
        last = p
    return out


@settings(max_examples=200, deadline=None)
@given(
    zones=st.lists(
        st.tuples(
            st.sampled_from([FVG_BULLISH, FVG_BEARISH, BSL, SSL, "other"]),
            st.integers(0, 20),
            st.integers(0, 5),
        ),
        min_size=1,
        max_size=25,
    ),
    prices=st.lists(st.integers(-2, 28), min_size=2, max_size=40),
)
def test_price_index_matches_brute_force(zones: list[tuple[str, int, int]], prices: list[int]) -> None:
    reg = Registry(rules(), T0)
    reg.on_price("pm.x", float(prices[0]), T0)
    ids: dict[str, int] = {}
    spec: list[tuple[str, float, float]] = []
    for i, (kind, bottom, height) in enumerate(zones):
        z = reg.create("pm.x", "H1", kind, float(bottom + height), float(bottom), 1.0, T0 + i, T0)
        assert z is not None
        ids[z.id] = i
        spec.append((kind, float(bottom), float(bottom + height)))
    reg.drain()
    got = []
    for step, p in enumerate(prices[1:]):
        reg.on_price("pm.x", float(p), T0 + S)
        for e in reg.drain():
            if isinstance(e, ZoneTouched):
                got.append((step, ids[e.zone.id], "touched"))
            elif isinstance(e, ZoneExpired):
                got.append((step, ids[e.zone.id], "filled"))
    assert sorted(got) == sorted(reference_run(spec, [float(p) for p in prices]))


def test_price_index_compacts_and_stays_correct_under_churn() -> None:
    rng = random.Random(7)
    reg = Registry(rules(grace_ns=0), T0)
    now = T0
    reg.on_price("pm.x", 50.0, now)
    for _ in range(20):
        for _ in range(500):
            b = rng.uniform(0, 100)
            reg.create("pm.x", "S1", "other", b + 0.5, b, 1.0, now, now)
        for _ in range(50):
            reg.on_price("pm.x", rng.uniform(0, 100), now)
        now += 2 * S
        reg.advance(now)
    idx = reg._prices.by_symbol["pm.x"]
    assert reg.active_count("S1") == 0 and len(reg) == 0
    assert idx.live == 0
    assert sum(map(len, (idx.above, idx.below, idx.in_hi, idx.in_lo))) <= 2 * 1024 + 2000
    events = reg.drain()
    assert sum(isinstance(e, ZoneRemoved) for e in events) == 10_000
