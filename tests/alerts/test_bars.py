"""Alerts' bars on event time (shared/bars.py): an input joins the bar of its event time, even when
it arrives after the boundary, until the boundary is evaluated (its end plus the allowed lateness);
later it is counted as late, never put into the next bar. The open bars (prices, zone events,
trades) survive a kill -9: a new core on the same store builds the same jobs."""

from __future__ import annotations

from typing import Any

import msgspec

from services.alerts.bars import OLD_ROW_PREFIX, ROW_PREFIX, SeriesRow
from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts
from shared.config import convert
from shared.messages import AlertZoneEvent, Price, StrategyJob, Trade, Zone, ZoneTouched

S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M + M  # a bucket boundary: the bar [B - M, B) closes there
L = S  # the default allowed lateness

ZONES = {"id": "zones", "kind": "zone_event", "bucket": "1m", "universe": ["pm.*"]}
FLOW = {
    "id": "flow",
    "kind": "order_flow",
    "bucket": "1m",
    "universe": ["pm.*"],
    "flow_window": "2m",
    "params": {"metric": "delta", "op": ">", "value": 5},
}


def config(*strategies: dict[str, Any]) -> AlertsConfig:
    return convert({"strategies": list(strategies)}, AlertsConfig, "alerts")


def touch(symbol: str, event_ns: int, price: float = 0.55) -> ZoneTouched:
    zone = Zone(
        id=f"H1_{symbol}",
        symbol=symbol,
        timeframe="H1",
        kind="bsl",
        top=0.6,
        bottom=0.5,
        strength=1.0,
        created_ns=B - 10 * M,
        expires_ns=B + 10 * M,
    )
    return ZoneTouched(zone=zone, price=price, event_ns=event_ns)


def evaluate(core: Alerts, now_ns: int) -> list[StrategyJob]:
    """What the service's ticker does at wall clock ``now_ns``: the jobs of the boundaries closed."""
    core.boundary(core.close_point(now_ns))
    return core.dispatcher.ready(now_ns)


def start(cfg: AlertsConfig, store: Any) -> Alerts:
    core = Alerts(cfg, store)
    core.start()
    core.recover(B - 2 * M)
    core.boundary(B - M)  # the bar before: evaluated (nothing in it)
    return core


def test_a_touch_at_the_end_of_a_bar_arriving_after_the_boundary_joins_its_own_bar(
    store_factory: Any,
) -> None:
    core = start(config(ZONES), store_factory())
    core.on_message(Price(symbol="pm.a", price=0.5, event_ns=B - 30 * S), B - 30 * S)
    # published 1 ms before the boundary, arriving 0.6 s after it: the boundary is not closed yet
    core.on_message(touch("pm.a", B - 1_000_000), B + 600_000_000)
    assert evaluate(core, B + L - 1) == []
    # a touch of the next bar, arriving before the boundary is evaluated: the next bar's
    core.on_message(touch("pm.b", B + 100_000_000), B + 700_000_000)
    (job,) = evaluate(core, B + L)
    assert job.bucket_ns == B
    assert [z.event_ns for z in job.inputs["pm.a"].zones] == [B - 1_000_000]
    assert job.inputs["pm.a"].close == 0.5
    assert job.inputs.get("pm.b") is None or job.inputs["pm.b"].zones == []
    (nxt,) = evaluate(core, B + M + L)
    assert [z.event_ns for z in nxt.inputs["pm.b"].zones] == [B + 100_000_000]
    assert "pm.a" not in nxt.tickers or nxt.inputs["pm.a"].zones == []
    assert core.bars.late == {M: 0}


def test_an_input_later_than_the_lateness_is_counted_and_kept_out_of_the_next_bar(
    store_factory: Any,
) -> None:
    core = start(config(ZONES), store_factory())
    core.on_message(Price(symbol="pm.a", price=0.5, event_ns=B - 30 * S), B - 30 * S)
    (job,) = evaluate(core, B + L)
    assert job.inputs["pm.a"].zones == []
    core.on_message(touch("pm.a", B - 1_000_000), B + 2 * S)  # its bar was evaluated
    core.on_message(Price(symbol="pm.a", price=0.9, event_ns=B - 2 * S), B + 2 * S)
    assert core.bars.late == {M: 2}
    core.on_message(Price(symbol="pm.a", price=0.6, event_ns=B + 10 * S), B + 10 * S)
    (nxt,) = evaluate(core, B + M + L)
    bar = nxt.inputs["pm.a"]
    assert bar.zones == [] and (bar.open, bar.high, bar.low, bar.close, bar.prev_close) == (
        0.6,
        0.6,
        0.6,
        0.6,
        0.5,
    )


def test_the_open_bar_survives_a_kill_9(store_factory: Any) -> None:
    cfg = config(ZONES, FLOW)
    first = start(cfg, store_factory())
    first.on_message(Price(symbol="pm.a", price=0.5, event_ns=B - 40 * S), B - 40 * S)
    first.on_message(Trade(asset="a", price=0.5, size=10.0, side="buy", event_ns=B - 35 * S), B - 35 * S)
    first.flush(B - 35 * S)  # the periodic flush
    first.on_message(Price(symbol="pm.a", price=0.7, event_ns=B - 30 * S), B - 30 * S)
    first.on_message(touch("pm.a", B - 20 * S), B - 20 * S)
    assert first.urgent  # the service writes at once after a batch with a zone event
    first.flush_urgent()
    # kill -9: the core is abandoned without closing anything; a new one on the same store
    second = start(cfg, store_factory())
    jobs = {j.strategy: j for j in evaluate(second, B + L)}
    bar = jobs["zones"].inputs["pm.a"]
    assert (bar.open, bar.high, bar.low, bar.close) == (0.5, 0.7, 0.5, 0.7)
    assert [z.event_ns for z in bar.zones] == [B - 20 * S]
    flow = jobs["flow"].inputs["pm.a"].flow
    assert flow is not None and flow.delta == 10.0


def test_the_write_after_a_zone_event_holds_its_ticker_even_before_any_periodic_flush(
    store_factory: Any,
) -> None:
    """The urgent write takes the touched series and that ticker's update (a restart must count
    the ticker as changed), not the whole batch of the periodic flush."""
    cfg = config(ZONES)
    first = start(cfg, store_factory())
    first.on_message(touch("pm.c", B - 20 * S), B - 20 * S)  # pm.c's first input ever
    assert first.urgent
    first.flush_urgent()
    assert not first.urgent
    second = start(cfg, store_factory())
    (job,) = evaluate(second, B + L)
    assert job.tickers == ["pm.c"]
    assert [z.event_ns for z in job.inputs["pm.c"].zones] == [B - 20 * S]


def test_a_zone_event_no_bar_keeps_asks_for_no_write(store_factory: Any) -> None:
    """Only event-triggered strategies (no bucketed bars): a zone event costs no store write on
    the hot path (its alert's state is written by the sink, before it is published)."""
    event_only = {"id": "touch", "kind": "zone_event", "trigger": "event", "universe": ["pm.*"]}
    core = start(config(event_only), store_factory())
    fired = core.on_message(touch("pm.a", B - 20 * S), B - 20 * S)
    assert [a.strategy for a in fired] == ["touch"]
    assert not core.urgent


def test_open_bars_stored_one_row_per_bucket_size_are_taken_back_and_rewritten(store_factory: Any) -> None:
    """Before one row per ticker, each (bucket size, ticker) had its row: a restart after the
    upgrade takes them back, and its first flush replaces them with the ticker's one row."""
    zone = AlertZoneEvent(
        event="touched", zone_id="z", timeframe="H1", kind="bsl", top=0.6, bottom=0.5, price=0.55,
        event_ns=B - 20 * S,
    )  # fmt: skip
    old = SeriesRow(M, "pm.a", B - M, [(B - M, 0.5, 0.7, 0.5, 0.7, 2)], {B - M: [zone]}, 0.4, B - 20 * S)
    store = store_factory()
    store.save_inputs({f"{OLD_ROW_PREFIX}{M}:pm.a": msgspec.msgpack.encode(old)})
    store.record_updates({"pm.a": B - 20 * S})
    core = Alerts(config(ZONES), store)
    core.start()
    core.flush(B - 10 * S)
    assert [k for k in store.load_inputs() if k.startswith((OLD_ROW_PREFIX, ROW_PREFIX))] == [
        f"{ROW_PREFIX}pm.a"
    ]
    (job,) = evaluate(core, B + L)
    bar = job.inputs["pm.a"]
    assert (bar.open, bar.high, bar.low, bar.close, bar.prev_close) == (0.5, 0.7, 0.5, 0.7, 0.4)
    assert [z.event_ns for z in bar.zones] == [B - 20 * S]


def test_a_replay_of_history_is_evaluated_on_its_own_event_time(store_factory: Any) -> None:
    """Not live: the wall clock closes nothing, the inputs' event time does."""
    core = start(config(ZONES), store_factory())
    later = B + 86400 * S
    core.on_message(touch("pm.a", B - M + S), later)
    assert not core.watermark.live
    assert evaluate(core, later + M) == []
    core.on_message(Price(symbol="pm.a", price=0.5, event_ns=B + L - 1), later + M)
    assert evaluate(core, later + M) == []
    core.on_message(Price(symbol="pm.a", price=0.5, event_ns=B + L), later + M)
    (job,) = evaluate(core, later + M)
    assert job.bucket_ns == B and len(job.inputs["pm.a"].zones) == 1


def test_a_restart_slower_than_a_bar_still_evaluates_the_bar_open_at_the_kill(store_factory: Any) -> None:
    """The new process's first evaluation is bars later: the boundaries in between are evaluated
    in order from where the killed one stopped, so the bar open at the kill is not rolled away."""
    cfg = config(ZONES)
    first = start(cfg, store_factory())
    first.on_message(Price(symbol="pm.a", price=0.5, event_ns=B - 40 * S), B - 40 * S)
    first.on_message(touch("pm.a", B - 20 * S), B - 20 * S)
    first.flush(B - 20 * S)
    second = Alerts(cfg, store_factory())  # kill -9; back 3 bars later, no input since
    second.start()
    jobs = evaluate(second, B + 3 * M + L)
    assert [(j.bucket_ns, [z.event_ns for z in j.inputs["pm.a"].zones]) for j in jobs] == [(B, [B - 20 * S])]


def test_boundaries_evaluated_in_one_call_see_the_close_before_each_bar(store_factory: Any) -> None:
    """A replay whose next input is two boundaries on evaluates both at once, before the bar
    between them is rolled: the second bar's previous close is the first bar's, as live saw it."""
    move = {"id": "move", "kind": "percent_move", "bucket": "1m", "universe": ["pm.*"], "params": {"pct": 1}}
    core = start(config(move), store_factory())
    later = B + 86400 * S
    core.on_message(Price(symbol="pm.a", price=0.50, event_ns=B - M + S), later)
    core.on_message(Price(symbol="pm.a", price=0.60, event_ns=B + L // 2), later)  # the next bar
    core.on_message(Price(symbol="pm.a", price=0.61, event_ns=B + M + L), later)  # closes both
    jobs = {job.bucket_ns: job for job in evaluate(core, later)}
    assert set(jobs) == {B, B + M}
    assert jobs[B + M].inputs["pm.a"].close == 0.60
    assert jobs[B + M].inputs["pm.a"].prev_close == 0.50  # not 0.0: the bar before B was open still
