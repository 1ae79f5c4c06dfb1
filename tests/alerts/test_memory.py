"""Bounded state per symbol: the order-flow rings, the persisted trades and the zone events of an
open bar stay within their configured bounds whatever the input rate, and what is bounded is
still exact (a restart rebuilds the same order-flow figures from the persisted trades)."""

from __future__ import annotations

import random
from typing import Any, Literal

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts
from services.alerts.dispatch import RECENT_TIMEOUTS, Dispatcher
from services.alerts.inputs import ROW_PREFIX
from shared.config import convert
from shared.messages import JobResult, StrategyJob, Swap, Trade, Zone, ZoneTouched

S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M + M
FLOW = {
    "id": "flow",
    "kind": "order_flow",
    "bucket": "1m",
    "universe": ["pm.*", "dex.*"],
    "flow_window": "1m",
    "params": {"metric": "delta", "op": ">", "value": 5},
}
ZONES = {"id": "zones", "kind": "zone_event", "bucket": "1m", "universe": ["pm.*"]}


def config(**extra: Any) -> AlertsConfig:
    return convert({"strategies": [FLOW, ZONES], "flow_tick_buffer": 50, **extra}, AlertsConfig, "alerts")


def feed_trades(core: Alerts, seconds: int, symbols: int, seed: int) -> None:
    """Four flushes a second, as the service's ticker; trades of every symbol between them."""
    rng = random.Random(seed)
    for q in range(seconds * 4):
        ev = B + q * S // 4
        for i in range(symbols):
            side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
            core.on_message(
                Trade(asset=str(i), price=0.5, size=float(rng.randint(0, 9)), side=side, event_ns=ev), ev
            )
        core.on_message(
            Swap(
                pool="0xp", protocol="v3", block=q, amount0=str(rng.randint(-9, 9)), amount1="1", event_ns=ev
            ),
            ev,
        )
        core.flush(ev)


def test_persisted_trades_are_one_row_a_flush_and_expire(store_factory: Any) -> None:
    core = Alerts(config(), store_factory())
    core.start()
    feed_trades(core, 300, 40, seed=1)  # 5 minutes of 40 symbols at 4 trades/s each
    rows = [k for k in core.store.load_inputs() if k.startswith(ROW_PREFIX)]
    keep_s = 120  # flow_window + bucket: what a job may still read
    assert keep_s * 4 <= len(rows) <= keep_s * 4 + 1  # not one per trade, and the older ones deleted
    assert max(len(e.ticks) for e in core.flow.engines.values()) == 50


def test_a_restart_rebuilds_the_same_order_flow(store_factory: Any) -> None:
    first = Alerts(config(), store_factory())
    first.start()
    feed_trades(first, 90, 5, seed=2)
    second = Alerts(config(), store_factory())  # kill -9: a new core on the same store
    second.start()
    now = B + 90 * S
    for symbol in ["dex.0xp", *(f"pm.{i}" for i in range(5))]:
        for window in (10.0, 60.0):
            before = first.flow.engines[symbol].metrics(window, now)
            after = second.flow.engines[symbol].metrics(window, now)
            # CVD restarts from what the store kept (the last keep window), the window's figures are exact
            assert (after.trades, after.buy_volume, after.sell_volume, after.delta) == (
                before.trades,
                before.buy_volume,
                before.sell_volume,
                before.delta,
            )


def test_zone_events_over_the_bound_are_counted_not_kept(store_factory: Any) -> None:
    core = Alerts(config(max_zone_events=3), store_factory())
    core.start()
    for i in range(5):
        zone = Zone(
            id=f"H1_{i}",
            symbol="pm.a",
            timeframe="H1",
            kind="bsl",
            top=0.6,
            bottom=0.5,
            strength=1.0,
            created_ns=B,
            expires_ns=B + M,
        )
        core.on_message(ZoneTouched(zone=zone, price=0.55, event_ns=B + i * S), B + i * S)
    bar = core.bars.inputs(M, ["pm.a"], B + M)["pm.a"]
    assert [z.zone_id for z in bar.zones] == ["H1_0", "H1_1", "H1_2"]
    assert core.bars.zones_dropped == 2


def test_without_a_strategy_reading_order_flow_trades_keep_no_flow_state(store_factory: Any) -> None:
    """Trades and swaps only stamp their tickers when no order_flow or python strategy reads order
    flow: no engine, no ring, no persisted trade (the soak's config grew ~2 MB/min of rings)."""
    cfg = convert({"strategies": [ZONES]}, AlertsConfig, "alerts")
    core = Alerts(cfg, store_factory())
    core.start()
    feed_trades(core, 30, 40, seed=3)
    assert core.flow.engines == {}
    assert not [k for k in core.store.load_inputs() if k.startswith(ROW_PREFIX)]
    assert {f"pm.{i}" for i in range(40)} | {"dex.0xp"} <= set(core.store.tickers())


def test_ids_of_finished_jobs_are_remembered_for_a_bounded_time() -> None:
    """The ids kept to tell a late result from a stranger stay within RECENT_TIMEOUTS job timeouts
    of jobs, not one per job ever (the soak's one job a second grew them by ~0.4 MB an hour)."""
    timeout = 10 * S
    d = Dispatcher(timeout_ns=timeout)
    n = 5000  # one job a second, each answered within it

    def answer(i: int, at: int) -> str:
        return d.complete(JobResult(job_id=f"j{i}", strategy="s", worker="w", ok=True), at)[0]

    for i in range(n):
        d.submit(StrategyJob(job_id=f"j{i}", strategy="s", kind="price_cross", bucket_ns=0, tickers=[]))
        d.ready(i * S)
        assert answer(i, i * S + S // 2) == "done"
    window_s = RECENT_TIMEOUTS * timeout // S
    assert len(d.recent) <= window_s + 1
    last = (n - 1) * S + S // 2
    assert answer(n - 1, last + (window_s - 1) * S) == "late"  # answered twice, within the window
    assert answer(0, last) == "refused" and d.refused["unknown_job"] == 1  # long gone: a stranger
    d.expire(last + (window_s + 1) * S)  # the ticker forgets them with time, without new jobs
    assert not d.recent
