"""The registry process killed with SIGKILL mid-stream: detections that straddle the restart."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from pathlib import Path

import msgspec

from services.registry.pair_state import CandleState, PairState
from services.registry.zones import NS
from shared.bus import Publisher, Pusher, Subscriber
from shared.messages import DetectorEvent, Price, ZoneCreated
from tests.helpers import spawn
from tests.registry.test_service import metric, scrape, stop, wait_for, write_config

S = NS

# One-second candles of pm.b (the config's S1 detector, swing_bars 2), as (second, price):
# c0 [1.00, 1.05], c1 [1.10, 1.20], c2 opens at 1.30 before the kill and goes on after it.
BEFORE_KILL = [(0.0, 1.00), (0.5, 1.05), (1.0, 1.10), (1.5, 1.20), (2.0, 1.30)]
# c2 then reaches 1.50 and closes at 1.40: a bullish FVG over c0..c2, [c0.high 1.05, c2.low 1.30]
# (without c2's first tick its low would be 1.40). c3 [1.30, 1.35], c4 [1.20, 1.25]; c5's first tick
# closes c4, which confirms c2 as a swing high: buy-side liquidity over [max(1.30, 1.40), 1.50].
AFTER_RESTART = [(2.5, 1.50), (2.7, 1.40), (3.0, 1.35), (3.5, 1.30), (4.0, 1.20), (4.5, 1.25), (5.0, 1.00)]


def stored_state(db_path: Path, symbol: str, timeframe: str) -> PairState | None:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        row = db.execute(
            "SELECT body FROM detector_state WHERE symbol = ? AND timeframe = ?", (symbol, timeframe)
        ).fetchone()
    finally:
        db.close()
    return None if row is None else msgspec.msgpack.decode(row[0], type=PairState)


async def wait_stored(db_path: Path, health: Subscriber, want: PairState, timeout: float = 10.0) -> None:
    """Until the registry has committed ``want``: checked after each of its heartbeats."""
    deadline = time.monotonic() + timeout
    while stored_state(db_path, want.symbol, want.timeframe) != want:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"stored: {stored_state(db_path, want.symbol, want.timeframe)}"
        await health.recv_batch(timeout=remaining)


async def send_prices(endpoint: str, base_ns: int, ticks: list[tuple[float, float]]) -> None:
    """A price source that starts, waits for the registry's SUB to join, sends, and stops."""
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0.2) as pub:
        await pub.wait_for_subscriber("px.pm.b", timeout=15)
        for sec, price in ticks:
            pub.publish("px.pm.b", Price(symbol="pm.b", price=price, event_ns=base_ns + int(sec * S)))


async def test_fvg_and_swing_pivot_straddling_a_kill_9_are_still_created(tmp_path: Path) -> None:
    # No lateness: each tick closes the candles before its own.
    detectors = {"timeframes": ["S1"], "swing_bars": 2, "allowed_lateness": "0s"}
    path, cfg = write_config(tmp_path, store_flush_interval="100ms", detectors=detectors)
    db_path = tmp_path / "data" / "registry.sqlite"
    # 1000 s ago: a replay, not live, so that the service's clock never closes these candles first.
    base = (time.time_ns() // S - 1000) * S
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("registry.",)) as health:
            await health.wait_for_publisher("registry", timeout=15)
            await send_prices(cfg["prices"][0], base, BEFORE_KILL)
            c0 = CandleState(base, base + S, 1.00, 1.05, 1.00, 1.05, ticks=2)
            c1 = CandleState(base + S, base + 2 * S, 1.10, 1.20, 1.10, 1.20, ticks=2)
            await wait_stored(
                db_path,
                health,
                PairState(
                    symbol="pm.b",
                    timeframe="S1",
                    tf_ns=S,
                    swing_bars=2,
                    last_closed_start=base + S,
                    current=CandleState(base + 2 * S, base + 3 * S, 1.30, 1.30, 1.30, 1.30),
                    closed=[c0, c1],
                    event_ns=base + 2 * S,  # the watermark: the latest event time, not live
                    live=False,
                    point_ns=base + 2 * S,
                ),
            )
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL

    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.",)) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            await send_prices(cfg["prices"][0], base, AFTER_RESTART)
            _, fvg = await wait_for(
                sub, ZoneCreated, symbol="pm.b", kind="fvg_bullish", created_ns=base + 3 * S
            )
            assert (fvg.zone.top, fvg.zone.bottom) == (1.30, 1.05)
            _, bsl = await wait_for(sub, ZoneCreated, symbol="pm.b", kind="bsl")
            assert (bsl.zone.top, bsl.zone.bottom, bsl.zone.created_ns) == (1.50, 1.40, base + 5 * S)
        rc, _ = stop(proc)
        assert rc == 0


async def test_a_detector_event_sets_its_own_ttl_and_a_bad_one_is_counted(tmp_path: Path) -> None:
    path, cfg = write_config(tmp_path, store="")
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.",)) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            pusher = Pusher(cfg["pull"], sender="test-detector")
            now = time.time_ns()
            event = dict(detector="t", symbol="pm.a", timeframe="H1", kind="custom", created_ns=now)
            try:
                await pusher.send(DetectorEvent(top=0.9, bottom=0.8, ttl_ns=-1, **event))  # type: ignore[arg-type]
                await pusher.send(DetectorEvent(top=0.9, bottom=0.8, ttl_ns=8 * 86400 * S, **event))  # type: ignore[arg-type]
                await pusher.send(DetectorEvent(top=0.7, bottom=0.6, ttl_ns=90 * S, **event))  # type: ignore[arg-type]
                await pusher.send(DetectorEvent(top=0.5, bottom=0.4, **event))  # type: ignore[arg-type]
                _, own = await wait_for(sub, ZoneCreated, top=0.7)
                _, configured = await wait_for(sub, ZoneCreated, top=0.5)
            finally:
                pusher.close()
            assert own.zone.expires_ns == now + 90 * S
            assert configured.zone.expires_ns == now + 7200 * S
            text = await asyncio.to_thread(scrape, cfg["metrics_port"])
            # a negative ttl_ns is outside the schema's bounds (a decode error); 8 days is registry's refusal
            assert metric(text, "poolwire_bus_decode_errors_total", socket="pull") == 1
            assert metric(text, "poolwire_registry_detector_events_rejected_total", reason="bad_ttl") == 1
            assert metric(text, "poolwire_registry_zones_created_total", timeframe="H1") == 2
        rc, _ = stop(proc)
        assert rc == 0
