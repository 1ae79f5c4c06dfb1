"""Event-triggered strategies: checked on each message in the service, published at once."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts, event_strategy_of
from services.alerts.events import EventEvaluator, EventStrategy
from services.alerts.store_sqlite import SqliteStore
from services.alerts.throttle import StrategySpec
from shared.bus import Publisher, Subscriber
from shared.config import ConfigError, convert
from shared.messages import AlertFired, AlertZoneEvent, Price, Zone, ZoneCreated, ZoneTouched
from tests.alerts.test_service import stop, write_config
from tests.helpers import spawn
from tests.ports import tcp_endpoint

S = 1_000_000_000
T0 = 1_700_000_000 * S


def config(*strategies: dict[str, Any]) -> AlertsConfig:
    return convert({"strategies": list(strategies)}, AlertsConfig, "alerts")


def cross(id: str = "x", **kw: Any) -> dict[str, Any]:
    params = {"level": 0.5, **kw.pop("params", {})}
    return {"id": id, "kind": "price_cross", "trigger": "event", "universe": ["pm.*"], "params": params, **kw}


def touch(id: str = "t", **kw: Any) -> dict[str, Any]:
    return {"id": id, "kind": "zone_event", "trigger": "event", "universe": "discover", **kw}


def zone_event(event: str = "touched", tf: str = "H1", kind: str = "fvg_bullish") -> AlertZoneEvent:
    return AlertZoneEvent(
        event=event, zone_id="z1", timeframe=tf, kind=kind, top=0.6, bottom=0.4, price=0.5, event_ns=T0
    )


@pytest.mark.parametrize(
    ("strategy", "error"),
    [
        ({"id": "p", "kind": "percent_move", "trigger": "event", "params": {"pct": 1}}, "only price_cross"),
        (cross(frequency="once_per_bar_close"), "once_per_bar_close needs bar closes"),
        (cross(params={"level": "high"}), r"Expected `float`, got `str` - at `\$\.level`"),
        (cross(params={"level": True}), r"Expected `float`, got `bool` - at `\$\.level`"),
        (cross(params={"direction": "sideways"}), r"Invalid enum value 'sideways' - at `\$\.direction`"),
        (cross(params={"levle": 1}), "unknown field `levle`"),
        (touch(params={"events": ["poked"]}), r"Invalid enum value 'poked' - at `\$\.events\[0\]`"),
        (touch(params={"kinds": "bsl"}), r"Expected `array`, got `str` - at `\$\.kinds`"),
        # bucketed built-ins are checked at load too
        (
            {"id": "m", "kind": "percent_move", "params": {}},
            "strategy m: params: Object missing required field `pct`",
        ),
        ({"id": "f", "kind": "order_flow", "params": {"metric": "delta", "value": 1, "op": "!="}}, r"\$\.op"),
    ],
)
def test_event_strategies_validated_at_load(strategy: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        config(strategy)


def test_price_cross_fires_on_the_crossing_step_only() -> None:
    ev = EventEvaluator(
        [
            EventStrategy(
                "any", "price_cross", StrategySpec.from_universe("any", S, ["pm.a"]), {"level": 0.5}
            ),
            EventStrategy(
                "up",
                "price_cross",
                StrategySpec.from_universe("up", S, ["pm.*"]),
                {"level": 0.5, "direction": "up"},
            ),
        ]
    )
    assert ev.on_price("pm.a", 0.6) == []  # a first price crosses nothing
    assert ev.on_price("pm.a", 0.6) == []
    down = ev.on_price("pm.a", 0.5)
    assert [(s, sig.message) for s, sig in down] == [("any", "pm.a crossed below 0.5 at 0.5")]
    assert ev.on_price("pm.a", 0.45) == []  # at the level counted as crossed; below it is no news
    up = ev.on_price("pm.a", 0.51)
    assert sorted(s for s, _ in up) == ["any", "up"] and up[0][1].value == 0.51
    assert [s for s, _ in (ev.on_price("pm.b", 0.4) + ev.on_price("pm.b", 0.7))] == ["up"]  # glob only
    assert ev.on_price("dex.c", 0.1) == [] and ev.on_price("dex.c", 0.9) == []  # outside both universes
    assert ev.stats.signals == 4


def test_zone_event_filters() -> None:
    strategies = [
        EventStrategy("all", "zone_event", StrategySpec.from_universe("all", S, "discover"), {}),
        EventStrategy(
            "h4bsl",
            "zone_event",
            StrategySpec.from_universe("h4bsl", S, "discover"),
            {"events": ["touched", "created"], "timeframes": ["H4"], "kinds": ["bsl"]},
        ),
    ]
    ev = EventEvaluator(strategies)
    assert [s for s, _ in ev.on_zone("pm.a", zone_event())] == ["all"]
    assert [s for s, _ in ev.on_zone("pm.a", zone_event("created", "H4", "bsl"))] == ["h4bsl"]
    fired = ev.on_zone("pm.a", zone_event("touched", "H4", "bsl"))
    assert sorted(s for s, _ in fired) == ["all", "h4bsl"]
    assert fired[0][1].message == "pm.a touched H4 bsl zone 0.4-0.6"
    assert ev.on_zone("pm.a", zone_event("expired")) == []


def test_a_zone_event_stamped_with_its_cause_time_is_alerted_and_bucketed_by_it(tmp_path: Path) -> None:
    """registry stamps a zone event with its cause's event time (the price that touched the
    zone), earlier than it arrives: the event alert carries that time, and the bucketed bar it
    joins is the cause's, even when the event arrives after that bar's boundary."""
    minute = 60 * S
    b = T0 - T0 % minute + minute  # a boundary: the bar [b - 1m, b) closes there
    bucketed = {"id": "zones", "kind": "zone_event", "bucket": "1m", "universe": ["pm.*"]}
    a = Alerts(config(touch("z"), bucketed), SqliteStore(str(tmp_path / "alerts.sqlite3")))
    a.start()
    a.on_message(Price(symbol="pm.a", price=0.5, event_ns=b - 30 * S), b - 30 * S)
    zone = Zone(
        id="z1", symbol="pm.a", timeframe="H1", kind="bsl", top=0.6, bottom=0.4, strength=1,
        created_ns=T0, expires_ns=T0 + 3600 * S,
    )  # fmt: skip
    cause = b - 300_000_000  # the tick, 0.3 s before the boundary; the touch arrives 0.2 s after it
    (alert,) = a.on_message(ZoneTouched(zone=zone, price=0.45, event_ns=cause), b + 200_000_000)
    assert alert.event_ns == cause
    a.boundary(a.close_point(b + S))
    (job,) = a.dispatcher.ready(b + S)
    assert job.bucket_ns == b and [z.event_ns for z in job.inputs["pm.a"].zones] == [cause]


def test_alerts_core_publishes_at_once_with_frequency_control(tmp_path: Path) -> None:
    cfg = config(
        cross("every"),
        cross("limited", repeat_interval="10s"),
        cross("once", frequency="once"),
        touch("z", params={"events": ["touched"]}),
        {
            "id": "bucketed",
            "kind": "price_cross",
            "bucket": "1s",
            "universe": ["pm.*"],
            "params": {"level": 1},
        },
    )
    path = str(tmp_path / "alerts.sqlite3")
    store = SqliteStore(path)
    a = Alerts(cfg, store)
    a.start()
    assert list(a.throttle.strategies) == ["bucketed"]  # event strategies are not bucketed
    assert a.on_message(Price(symbol="pm.a", price=0.4, event_ns=T0), T0) == []
    first = a.on_message(Price(symbol="pm.a", price=0.6, event_ns=T0 + 5), T0 + 10)
    assert sorted(x.strategy for x in first) == ["every", "limited", "once"]
    assert all(x.event_ns == T0 + 5 and x.symbol == "pm.a" and x.value == 0.6 for x in first)
    ids = {x.bucket_ns for x in first}
    assert len(ids) == 1 and ids.pop() >= T0 + 10
    a.on_message(Price(symbol="pm.a", price=0.4), T0 + S)  # crosses back down: all three fire...
    again = a.on_message(Price(symbol="pm.a", price=0.6), T0 + 2 * S)  # ...and up: "every" only
    assert [x.strategy for x in again] == ["every"]
    later = a.on_message(Price(symbol="pm.a", price=0.4), T0 + 12 * S)
    assert sorted(x.strategy for x in later) == ["every", "limited"]
    zone = Zone(
        id="z1", symbol="pm.a", timeframe="H1", kind="fvg_bullish", top=0.6, bottom=0.4, strength=1,
        created_ns=T0, expires_ns=T0 + 3600 * S,
    )  # fmt: skip
    assert a.on_message(ZoneCreated(zone=zone), T0 + 13 * S) == []
    touched = a.on_message(ZoneTouched(zone=zone, price=0.45), T0 + 13 * S)
    assert [(x.strategy, x.value) for x in touched] == [("z", 0.45)]
    same_ns = a.on_message(ZoneTouched(zone=zone, price=0.46), T0 + 13 * S)  # another touch, same ns
    assert [x.value for x in same_ns] == [0.46] and same_ns[0].bucket_ns > touched[0].bucket_ns
    store.close()
    # a restart: "once" stays spent (its state was persisted before the alert was returned)
    store = SqliteStore(path)
    b = Alerts(cfg, store)
    b.start()
    b.on_message(Price(symbol="pm.a", price=0.4), T0 + 20 * S)
    assert sorted(x.strategy for x in b.on_message(Price(symbol="pm.a", price=0.6), T0 + 30 * S)) == [
        "every",
        "limited",
    ]
    store.close()


def test_event_strategy_keeps_its_universe() -> None:
    (s,) = config(cross(universe=["pm.a", "dex.*"])).strategies
    e = event_strategy_of(s)
    assert e.covers("pm.a") and e.covers("dex.x") and not e.covers("pm.b")


@pytest.mark.slow
async def test_zone_touch_alert_leaves_within_milliseconds_not_at_the_bucket(tmp_path: Path) -> None:
    source = tcp_endpoint()
    strategy = touch("touch", bucket="1h", universe=["pm.*"])
    path, cfg = write_config(tmp_path, source, [strategy], workers=0)
    zone = Zone(
        id="z1", symbol="pm.a", timeframe="H1", kind="fvg_bullish", top=0.6, bottom=0.4, strength=1,
        created_ns=T0, expires_ns=T0 + 3600 * S,
    )  # fmt: skip
    async with Publisher(source, service="registry", heartbeat_interval=0.1) as pub:
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            async with Subscriber(cfg["pub"], ["alert."]) as sub:
                await sub.wait_for_publisher("alerts", timeout=20)
                await pub.wait_for_subscriber("zone.touched.H1.pm.a", timeout=20)
                latencies = []
                for i in range(20):
                    sent = time.time_ns()
                    pub.publish("zone.touched.H1.pm.a", ZoneTouched(zone=zone, price=0.5 + i / 1000))
                    got = await sub.recv_batch(timeout=10)
                    assert [type(m) for _, m in got] == [AlertFired], got
                    topic, alert = got[0]
                    assert isinstance(alert, AlertFired)
                    assert topic == "alert.touch.pm.a" and alert.value == pytest.approx(0.5 + i / 1000)
                    latencies.append(time.time_ns() - sent)
                # one hop in, one out: milliseconds, where the 1 h bucket would have waited up to 1 h
                assert sorted(latencies)[len(latencies) // 2] < 50_000_000
            assert "1 event-triggered" in stop(proc)


async def test_a_service_of_zone_touch_strategies_subscribes_to_zone_touches_only(tmp_path: Path) -> None:
    """Nothing else crosses the socket: no prices, trades or other zone events wake the service."""
    source = tcp_endpoint()
    path, _ = write_config(tmp_path, source, [touch(universe=["pm.*"])], workers=0)
    async with Publisher(source, service="registry", heartbeat_interval=0.1) as pub:
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            await pub.wait_for_subscriber("zone.touched.H1.pm.a", timeout=20)
            assert not pub.has_subscriber("px.pm.a")
            assert not pub.has_subscriber("md.trade.0x1")
            assert not pub.has_subscriber("zone.created.H1.pm.a")
            assert pub.has_subscriber("registry.health")  # liveness is read whatever the strategies
            assert "inputs: zone.touched. (what the strategies read)" in stop(proc)
