"""Zone events carry their cause's event time, never the time the registry handled it: a creation
its detection's time, a touch or fill its price's, a TTL or grace end its deadline, an eviction the
evicting zone's creation. The same input handled at other wall times gives the same events."""

from __future__ import annotations

from services.registry.registry import Registry
from services.registry.zones import FVG_BULLISH, Rules, TimeframeRules
from shared.messages import Message, ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched

S = 1_000_000_000
T0 = 1_700_000_000 * S
GRACE = 300 * S
LATER = 3 * 3600 * S  # how far behind the wall clock the input is handled (a replay of history)


def rules(max_per_tf: int = 10_000) -> Rules:
    return Rules(
        timeframes={"H1": TimeframeRules(ttl_ns=3600 * S)},
        grace_ns=GRACE,
        max_per_tf=max_per_tf,
        strength_threshold=0.0,
    )


def stamps(events: list[Message]) -> list[tuple[str, str, int]]:
    out = []
    for e in events:
        assert isinstance(e, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved)
        label = type(e).__name__ + (f":{e.reason}" if isinstance(e, ZoneExpired) else "")
        out.append((label, e.zone.id, e.event_ns))
    return out


def test_each_event_carries_its_cause_time() -> None:
    reg = Registry(rules(), T0)
    wall = T0 + LATER  # every call runs hours after the input's event times
    reg.on_price("pm.a", 0.50, T0)
    filled = reg.create("pm.a", "H1", FVG_BULLISH, 0.70, 0.60, 1.0, T0 + S, wall)
    lasting = reg.create("pm.a", "H1", FVG_BULLISH, 0.40, 0.30, 1.0, T0 + 2 * S, wall)
    assert filled is not None and lasting is not None
    reg.on_price("pm.a", 0.65, T0 + 10 * S)  # touches the first
    reg.on_price("pm.a", 0.55, T0 + 11 * S)  # leaves it below: filled
    assert stamps(reg.drain()) == [
        ("ZoneCreated", filled.id, T0 + S),
        ("ZoneCreated", lasting.id, T0 + 2 * S),
        ("ZoneTouched", filled.id, T0 + 10 * S),
        ("ZoneExpired:filled", filled.id, T0 + 11 * S),
    ]
    assert filled.ended_ns == T0 + 11 * S  # its grace counts from the fill, not from the handling
    reg.advance(wall + 7200 * S)  # one pass long after every deadline, the grace ends too
    assert sorted(stamps(reg.drain()), key=lambda s: s[2]) == [
        ("ZoneRemoved", filled.id, T0 + 11 * S + GRACE),
        ("ZoneExpired:ttl", lasting.id, T0 + 2 * S + 3600 * S),
        ("ZoneRemoved", lasting.id, T0 + 2 * S + 3600 * S + GRACE),  # its grace ended too: same pass
    ]
    reg.advance(wall + 9000 * S)
    assert stamps(reg.drain()) == []


def test_an_eviction_carries_the_evicting_zone_creation_time() -> None:
    reg = Registry(rules(max_per_tf=1), T0)
    weak = reg.create("pm.a", "H1", FVG_BULLISH, 0.70, 0.60, 0.2, T0, T0 + LATER)
    strong = reg.create("pm.a", "H1", FVG_BULLISH, 0.40, 0.30, 0.9, T0 + 5 * S, T0 + LATER)
    assert weak is not None and strong is not None
    assert stamps(reg.drain())[1:] == [
        ("ZoneExpired:evicted", weak.id, T0 + 5 * S),
        ("ZoneCreated", strong.id, T0 + 5 * S),
    ]


def test_a_price_stamped_before_the_zone_touches_it_at_its_creation() -> None:
    """A source whose clock lags: its touch is not dated before the zone existed."""
    reg = Registry(rules(), T0)
    reg.on_price("pm.a", 0.50, T0 - 10 * S)
    zone = reg.create("pm.a", "H1", FVG_BULLISH, 0.70, 0.60, 1.0, T0, T0)
    assert zone is not None
    reg.on_price("pm.a", 0.65, T0 - 5 * S)
    assert stamps(reg.drain())[-1] == ("ZoneTouched", zone.id, T0)


def test_the_same_input_handled_at_other_wall_times_gives_the_same_events() -> None:
    """Live (the wheel advanced at each step) and a replay (one pass hours after): equal. The zones
    end by fills here: a TTL runs on the wall clock (README, "Event time")."""
    prices = [(0.5 + 0.3 * ((k * 7919) % 13) / 13, T0 + k * 40 * S) for k in range(200)]

    def run(advance_each_step: bool, wall_offset: int) -> list[tuple[str, str, int]]:
        reg = Registry(rules(), T0)
        out: list[tuple[str, str, int]] = []
        for k, (price, ev) in enumerate(prices):
            if k % 20 == 0:
                reg.create("pm.a", "H1", FVG_BULLISH, price + 0.05, price + 0.01, 1.0, ev, ev + wall_offset)
            reg.on_price("pm.a", price, ev)
            if advance_each_step:
                reg.advance(ev + wall_offset)
            out += stamps(reg.drain())
        reg.advance(T0 + 30 * 3600 * S + wall_offset)
        out += stamps(reg.drain())
        return sorted(out, key=repr)

    live = run(True, 0)
    assert {s[0] for s in live} >= {"ZoneCreated", "ZoneTouched", "ZoneExpired:filled", "ZoneRemoved"}
    assert run(False, LATER) == live
