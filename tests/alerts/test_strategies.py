"""Built-in strategy kinds on crafted jobs, and the service core (no sockets) end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts
from services.alerts.store_sqlite import SqliteStore
from services.alerts.strategies import execute
from shared.clock import FakeClock
from shared.config import ConfigError, convert
from shared.messages import (
    AlertFired,
    AlertZoneEvent,
    JobResult,
    OrderFlowMetrics,
    Price,
    StrategyJob,
    TickerInput,
    Trade,
    Zone,
    ZoneTouched,
)

S = 1_000_000_000
M = 60 * S


def job(kind: str, inputs: dict[str, TickerInput], **params: object) -> StrategyJob:
    return StrategyJob(
        job_id="j", strategy="s", kind=kind, bucket_ns=M, tickers=sorted(inputs), params=params, inputs=inputs
    )


def symbols(j: StrategyJob) -> list[str]:
    return [s.symbol for s in execute(j).signals]


def test_price_cross() -> None:
    inputs = {
        "up": TickerInput(open=0.45, close=0.55, prev_close=0.45),
        "down": TickerInput(open=0.55, close=0.45, prev_close=0.55),
        "flat": TickerInput(open=0.55, close=0.56, prev_close=0.55),
        "first": TickerInput(open=0.40, close=0.60),  # no previous bar: from the open
    }
    assert symbols(job("price_cross", inputs, level=0.5)) == ["down", "first", "up"]
    assert symbols(job("price_cross", inputs, level=0.5, direction="up")) == ["first", "up"]


def test_percent_move() -> None:
    inputs = {"a": TickerInput(close=1.05, prev_close=1.0), "b": TickerInput(close=0.9, prev_close=1.0),
              "c": TickerInput(close=1.01, prev_close=1.0)}  # fmt: skip
    out = execute(job("percent_move", inputs, pct=5)).signals
    assert [s.symbol for s in out] == ["a", "b"]
    assert out[0].value == pytest.approx(5.0) and out[1].value == pytest.approx(-10.0)


def test_zone_event_and_order_flow() -> None:
    ev = AlertZoneEvent(
        event="touched", zone_id="z", timeframe="H1", kind="bsl", top=1, bottom=0.9, price=0.95
    )
    inputs = {"z": TickerInput(zones=[ev]), "n": TickerInput()}
    assert symbols(job("zone_event", inputs)) == ["z"]
    assert symbols(job("zone_event", inputs, timeframes=["M5"])) == []
    flows = {
        "buyers": TickerInput(flow=OrderFlowMetrics(symbol="buyers", window_s=60, imbalance=0.7)),
        "sellers": TickerInput(flow=OrderFlowMetrics(symbol="sellers", window_s=60, imbalance=-0.7)),
        "none": TickerInput(),
    }
    assert symbols(job("order_flow", flows, metric="imbalance", op=">=", value=0.5)) == ["buyers"]
    with pytest.raises(ValueError, match=r"Invalid enum value .nope. - at `\$\.metric`"):
        execute(job("order_flow", flows, metric="nope", value=1))


def config(**kw: object) -> AlertsConfig:
    return convert(kw, AlertsConfig, "alerts")


def test_bad_config_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"alerts.strategies.0"):
        config(strategies=[{"id": "x", "kind": "python"}])
    with pytest.raises(ConfigError, match=r"alerts.strategies.0.bucket"):
        config(strategies=[{"id": "x", "kind": "price_cross", "bucket": "soon"}])


def test_service_core_end_to_end(tmp_path: Path) -> None:
    clock = FakeClock(start_ns=1_700_000_000 * S // M * M)
    cfg = config(
        strategies=[
            {"id": "cross", "kind": "price_cross", "bucket": "1m", "universe": ["pm.a"], "params": {"level": 0.5}},
            {"id": "flow", "kind": "order_flow", "bucket": "1m", "universe": ["pm.a"], "flow_window": "2m",
             "params": {"metric": "delta", "op": ">", "value": 5}},
            {"id": "zones", "kind": "zone_event", "bucket": "1m", "universe": ["pm.*"], "frequency": "once"},
        ]
    )  # fmt: skip
    store = SqliteStore(str(tmp_path / "a.sqlite3"))
    try:
        core = Alerts(cfg, store)
        core.start()
        now = clock.time_ns() + S
        core.on_message(Price(symbol="pm.a", price=0.45), now)
        core.on_message(Price(symbol="pm.a", price=0.55), now)
        core.on_message(Trade(asset="a", price=0.55, size=8.0, side="buy", event_ns=now), now)
        zone = Zone(id="z1", symbol="pm.b", timeframe="H1", kind="bsl", top=1, bottom=0.9, strength=1,
                    created_ns=0, expires_ns=0)  # fmt: skip
        core.on_message(ZoneTouched(zone=zone, price=0.95), now)
        due = core.boundary(clock.time_ns() + M)
        assert sorted(d.strategy for d in due) == ["cross", "flow", "zones"]
        jobs = {j.strategy: j for j in core.dispatcher.ready(clock.time_ns() + M)}
        assert jobs["cross"].inputs["pm.a"].close == 0.55
        flow = jobs["flow"].inputs["pm.a"].flow
        assert flow is not None and flow.delta == 8.0 and flow.window_s == 120.0
        assert jobs["zones"].tickers == ["pm.a", "pm.b"]  # pm.* moved; only pm.b had a zone event
        published = []
        for j in jobs.values():
            out = execute(j)
            result = JobResult(job_id=j.job_id, strategy=j.strategy, worker="w", ok=True,
                               alerts=[_alert(j, s.symbol) for s in out.signals])  # fmt: skip
            status, alerts, _ = core.on_result(result, clock.time_ns() + M)
            assert status == "done"
            published += [(a.strategy, a.symbol) for a in alerts]
        assert sorted(published) == [("cross", "pm.a"), ("flow", "pm.a"), ("zones", "pm.b")]
        assert "strategy runs: 3" in core.summary()
    finally:
        store.close()


def _alert(j: StrategyJob, symbol: str) -> AlertFired:
    return AlertFired(strategy=j.strategy, symbol=symbol, message="m", bucket_ns=j.bucket_ns)
