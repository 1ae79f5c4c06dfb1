"""The registry's checks of what comes in from outside (services/registry/validate.py)."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.registry.registry import Registry
from services.registry.validate import (
    EVENT_REASONS,
    MAX_PRICE,
    MAX_TTL_NS,
    MIN_TIME_NS,
    Limits,
    check_event,
    check_price_input,
    check_stored,
)
from services.registry.zones import NS, Rules, TimeframeRules, ZoneError
from shared.messages import DetectorEvent, Price, Zone

NOW = 1_700_000_000 * NS
DAY = 86400 * NS
LIMITS = Limits(timeframes=frozenset({"H1", "M1"}), horizon_ns=DAY)
GOOD: dict[str, Any] = dict(
    detector="det", symbol="pm.a", timeframe="H1", kind="custom", top=0.9, bottom=0.5, created_ns=NOW
)


def event(**changes: Any) -> DetectorEvent:
    return DetectorEvent(**{**GOOD, **changes})


def reason(**changes: Any) -> str | None:
    refusal = check_event(event(**changes), NOW, LIMITS)
    return None if refusal is None else refusal.reason


def test_a_good_event_passes_and_zero_times_mean_now() -> None:
    assert reason() is None
    assert reason(created_ns=0, ttl_ns=0, event_ns=0) is None
    assert reason(top=0.5, bottom=0.5) is None  # a zone one price wide
    assert reason(strength=0.0) is None
    assert reason(top=MAX_PRICE, bottom=1e-300) is None


@pytest.mark.parametrize(
    ("changes", "want"),
    [
        # the finding: created_ns = 2**64 - 1 crashed the service, 2**63 - 1 made a zone that never expired
        ({"created_ns": 2**64 - 1}, "bad_time"),
        ({"created_ns": 2**63 - 1}, "bad_time"),
        ({"created_ns": NOW + DAY}, None),
        ({"created_ns": NOW + DAY + 1}, "bad_time"),
        ({"created_ns": MIN_TIME_NS}, None),
        ({"created_ns": MIN_TIME_NS - 1}, "bad_time"),
        ({"created_ns": -1}, "bad_time"),
        ({"created_ns": 1.5}, "bad_time"),
        ({"event_ns": 2**63 - 1}, "bad_time"),
        ({"event_ns": 5}, "bad_time"),
        ({"ttl_ns": MAX_TTL_NS}, None),
        ({"ttl_ns": MAX_TTL_NS + 1}, "bad_ttl"),
        ({"ttl_ns": -1}, "bad_ttl"),
        ({"top": -0.5, "bottom": -0.9}, "bad_price"),
        ({"bottom": 0.0}, "bad_price"),
        ({"top": 1e308}, "bad_price"),
        ({"bottom": -1e308}, "bad_price"),
        ({"top": math.inf}, "bad_price"),
        ({"top": math.nan}, "bad_price"),
        ({"top": True}, "bad_price"),
        ({"top": 10**400}, "bad_price"),
        ({"strength": 10**400}, None),
        ({"top": "1"}, "bad_price"),
        ({"top": 0.5, "bottom": 0.9}, "bad_range"),  # refused, not swapped
        ({"strength": -0.1}, "bad_strength"),
        ({"strength": math.nan}, "bad_strength"),
        ({"timeframe": "H4"}, "unknown_timeframe"),
        ({"timeframe": "x" * 200}, "bad_name"),
        ({"symbol": "s" * 128}, None),
        ({"symbol": "s" * 129}, "bad_name"),
        ({"symbol": "€" * 42}, None),  # 126 bytes
        ({"symbol": "€" * 43}, "bad_name"),  # 43 characters, 129 bytes
        ({"symbol": "s" * 1_000_000}, "bad_name"),  # the finding: a 1 MB symbol (and topic)
        ({"kind": "k" * 100_000}, "bad_name"),  # and a 100 kB kind
        ({"kind": ""}, "bad_name"),
        ({"detector": ""}, "bad_name"),
        ({"symbol": "pm.a\nfake log line"}, "bad_name"),
        ({"symbol": "pm\x00a"}, "bad_name"),
        ({"kind": "\x8d"}, "bad_name"),
        ({"kind": "a\u2028b"}, "bad_name"),
        ({"kind": "zone é ✓"}, None),
        ({"symbol": "\ud800"}, "bad_name"),
        ({"symbol": 7}, "bad_name"),
    ],
)
def test_each_bad_field_is_refused_with_its_reason(changes: dict[str, Any], want: str | None) -> None:
    assert reason(**changes) == want


def test_other_types_are_refused_and_every_reason_is_known() -> None:
    refusal = check_event(Price(symbol="pm.a", price=1.0), NOW, LIMITS)
    assert refusal is not None and refusal.reason == "wrong_type"
    assert {"wrong_type", "bad_name", "bad_time", "bad_ttl", "bad_price", "bad_range", "internal"} <= set(
        EVENT_REASONS
    )


def test_prices_for_the_detectors() -> None:
    assert check_price_input("pm.a", 0, NOW, LIMITS) is None
    assert check_price_input("pm.a", NOW + DAY, NOW, LIMITS) is None
    bad_time = check_price_input("pm.a", 2**64 - 1, NOW, LIMITS)
    assert bad_time is not None and bad_time.reason == "bad_time"
    bad_symbol = check_price_input("x" * 129, 0, NOW, LIMITS)
    assert bad_symbol is not None and bad_symbol.reason == "bad_symbol"


def stored(**changes: Any) -> Zone:
    fields: dict[str, Any] = dict(
        id="H1_x", symbol="pm.a", timeframe="H1", kind="custom", top=0.9, bottom=0.5, strength=1.0
    )
    fields.update(created_ns=NOW - DAY, expires_ns=NOW - DAY + 7200 * NS)
    fields.update(changes)
    return Zone(**fields)


def test_stored_zones_an_event_could_not_have_made_are_refused() -> None:
    assert check_stored(stored(), NOW, LIMITS) is None
    forever = stored(created_ns=2**63 - 1, expires_ns=2**63 - 1 + 7200 * NS)  # stored by an older version
    assert check_stored(forever, NOW, LIMITS) == ("bad_time", forever_detail(forever))
    assert check_stored(stored(expires_ns=NOW + 30 * DAY), NOW, LIMITS).reason == "bad_ttl"  # type: ignore[union-attr]
    long_ttl = Limits(LIMITS.timeframes, LIMITS.horizon_ns, max_ttl_ns=60 * DAY)  # a configured W1 of 60 days
    assert check_stored(stored(expires_ns=NOW + 30 * DAY), NOW, long_ttl) is None
    assert check_stored(stored(top=math.nan), NOW, LIMITS).reason == "bad_price"  # type: ignore[union-attr]
    assert check_stored(stored(symbol="s" * 200), NOW, LIMITS).reason == "bad_name"  # type: ignore[union-attr]


def forever_detail(zone: Zone) -> str:
    return f"created_ns {zone.created_ns} is outside [2000-01-01, now + 86400 s]"


valid_times = st.integers(min_value=MIN_TIME_NS, max_value=NOW + DAY)
prices = st.floats(min_value=1e-9, max_value=1e9)
# A plausible event (still refused when top < bottom)...
VALID: dict[str, st.SearchStrategy[Any]] = dict(
    symbol=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=40),
    timeframe=st.sampled_from(["H1", "M1"]),
    kind=st.sampled_from(["custom", "fvg_bullish", "bsl"]),
    top=prices,
    bottom=prices,
    strength=st.floats(min_value=0.0, max_value=1.0),
    created_ns=st.one_of(st.just(0), valid_times),
    event_ns=st.one_of(st.just(0), valid_times),
    ttl_ns=st.integers(min_value=0, max_value=MAX_TTL_NS),
)
# ...with up to three fields replaced by anything of their wire type.
names = st.one_of(st.text(max_size=140), st.text(alphabet="€", min_size=40, max_size=45))
numbers = st.one_of(st.floats(), st.integers(min_value=-(2**64), max_value=2**64), st.just(1e308))
ints = st.one_of(
    st.integers(min_value=-(2**64), max_value=2**64), st.integers(MIN_TIME_NS - NS, NOW + 2 * DAY)
)
HOSTILE: dict[str, st.SearchStrategy[Any]] = dict(
    symbol=names,
    timeframe=st.one_of(names, st.sampled_from(["H4", "h1", "H1 "])),
    kind=names,
    top=numbers,
    bottom=numbers,
    strength=numbers,
    created_ns=ints,
    event_ns=ints,
    ttl_ns=st.one_of(ints, st.integers(MAX_TTL_NS - NS, MAX_TTL_NS + NS)),
)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_an_accepted_event_always_makes_a_zone_that_expires(data: st.DataObject) -> None:
    fields = data.draw(st.fixed_dictionaries(VALID))
    for key in data.draw(st.lists(st.sampled_from(sorted(HOSTILE)), max_size=3, unique=True)):
        fields[key] = data.draw(HOSTILE[key], label=key)
    ev = DetectorEvent(detector="fuzz", **fields)
    refusal = check_event(ev, NOW, LIMITS)
    if refusal is not None:
        assert refusal.reason in EVENT_REASONS
        return
    reg = Registry(Rules({"H1": TimeframeRules(2 * 3600 * NS), "M1": TimeframeRules(3600 * NS)}), NOW)
    try:
        zone = reg.create(ev.symbol, ev.timeframe, ev.kind, ev.top, ev.bottom, ev.strength, ev.created_ns, NOW,
                          ttl_ns=ev.ttl_ns)  # fmt: skip
    except ZoneError as exc:  # pragma: no cover - the checks cover the core's refusals
        raise AssertionError(f"accepted, then refused by the core: {exc}") from exc
    if zone is None:  # weaker than strength_threshold
        return
    assert zone.expires_ns <= NOW + DAY + MAX_TTL_NS
    assert len(zone.id.encode()) < 64
    reg.advance(NOW + DAY + MAX_TTL_NS)
    assert zone.id not in {z.id for z in reg.active()}
