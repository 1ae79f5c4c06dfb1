"""Replay equals live: the same recorded ticks fed through the real registry process at different
paces give exactly the same zone events (created, touched, filled, expired by their TTL, removed
after their grace), with the same event times, and no tick is dropped as late.

The ticks are a generated stretch of history (several symbols, M1 and M5 candles, jumps that make
FVGs and pivots), stamped hours ago: a replay, not live, so only the ticks' own event time closes
candles. They go out one frame per M1 candle, tick by tick at about 1 kHz, and all at once. Each
zone event carries the event time of its cause (services/registry/README.md, "Event time"): a
touch or fill its price's, a creation its last candle's close, a TTL's end or a removal its
deadline; never the registry's clock, which differs with the pace. TTLs run on the stream's event
time (issue 14): those that end inside the stretch end at the same point of it at every pace, and
no price after a deadline touches its zone.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest

from services.registry.zones import BSL, FVG_BEARISH, FVG_BULLISH, SSL
from shared.bus import Publisher, Subscriber
from shared.messages import Heartbeat, Price, ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched
from tests.helpers import spawn
from tests.registry.test_service import metric, scrape, write_config

pytestmark = pytest.mark.slow

S = 1_000_000_000
M = 60 * S
SYMBOLS = [f"pm.r{i}" for i in range(5)]

Tick = tuple[str, int, float]
ZoneKey = tuple[str, str, str, str, float, float, int]
# (event, zone id, event_ns, state, touches, ended_ns, price or reason)
EventKey = tuple[str, str, int, str, int, int, object]
GRACE_NS = 5 * M  # grace_period_minutes' default
TTL_NS = {"M1": 15 * M, "M5": 40 * M}  # well inside the stretch (about 1.75 hours)
LATENESS_NS = 2 * S  # detectors.allowed_lateness' default


def recorded_ticks(seed: int = 11, n: int = 3000) -> list[Tick]:
    """Random walks with jumps, in event-time order across symbols, ending an hour ago (zones of
    the first hours are past their TTL when created: their expiry wakes the registry's timer)."""
    rng = random.Random(seed)
    start = (time.time_ns() - 4 * 3600 * S) // M * M
    prices = dict.fromkeys(SYMBOLS, 1.0)
    t = start
    ticks: list[Tick] = []
    for _ in range(n):
        t += rng.randrange(200, 4000) * 1_000_000
        sym = rng.choice(SYMBOLS)
        jump = rng.choice((-0.03, 0.03)) if rng.random() < 0.03 else 0.0
        prices[sym] = round(prices[sym] * (1 + rng.gauss(0, 0.004) + jump), 6)
        ticks.append((sym, t, prices[sym]))
    return ticks


TICKS = recorded_ticks()


async def feed(pub: Publisher, mode: str) -> None:
    if mode == "per_candle":  # one frame per M1 candle (and symbol run)
        bucket = None
        for sym, t, p in TICKS:
            if bucket is not None and t // M != bucket:
                pub.flush()
                await asyncio.sleep(0)
            bucket = t // M
            pub.publish(f"px.{sym}", Price(symbol=sym, price=p, event_ns=t))
    elif mode == "tick_1khz":  # one frame per tick, paced at about 1 kHz (a load generator's pace)
        for sym, t, p in TICKS:
            pub.publish(f"px.{sym}", Price(symbol=sym, price=p, event_ns=t))
            pub.flush()
            await asyncio.sleep(0.001)
    else:  # as fast as possible
        for sym, t, p in TICKS:
            pub.publish(f"px.{sym}", Price(symbol=sym, price=p, event_ns=t))
    await pub.drain()


def event_key(msg: ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved) -> EventKey:
    z = msg.zone
    extra: object = msg.price if isinstance(msg, ZoneTouched) else getattr(msg, "reason", None)
    return (type(msg).__name__, z.id, msg.event_ns, z.state, z.touches, z.ended_ns, extra)


async def replay(tmp_path: Path, mode: str) -> tuple[set[ZoneKey], list[EventKey], float]:
    """The zones the registry creates from TICKS fed in ``mode``, every zone event (sorted), and
    its late-tick count."""
    tmp_path.mkdir()
    path, cfg = write_config(
        tmp_path,
        store="",
        pools={"M1": {"ttl": "15m"}, "M5": {"ttl": "40m"}, "strength_threshold": 0.0},
        detectors={"timeframes": ["M1", "M5"], "swing_bars": 2},
    )
    created: set[ZoneKey] = set()
    events: list[EventKey] = []
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with (
            Subscriber(cfg["pub"], ("zone.", "registry.")) as sub,
            Publisher(cfg["prices"][0], service="replay", heartbeat_interval=0.2) as pub,
        ):
            await sub.wait_for_publisher("registry", timeout=15)
            await pub.wait_for_subscriber("px.", timeout=15)
            await feed(pub, mode)
            # Until every tick is handled (the metric, read at ``done_ns``), then until a heartbeat
            # sent after that: the zone events of the last ticks went out before it. Nothing comes
            # after: the stretch's time stops at its last tick (zones due later stay, at any pace).
            done_ns = 0
            beat = False
            late = -1.0
            deadline = time.monotonic() + 60
            while True:
                for _, msg in await sub.recv_batch(timeout=1.0):
                    if isinstance(msg, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved):
                        events.append(event_key(msg))
                    if isinstance(msg, ZoneCreated):
                        z = msg.zone
                        created.add((z.id, z.symbol, z.timeframe, z.kind, z.top, z.bottom, z.created_ns))
                    elif isinstance(msg, Heartbeat) and done_ns and msg.publish_ns > done_ns:
                        beat = True
                if beat:
                    break
                if not done_ns:
                    now = time.time_ns()
                    text = await asyncio.to_thread(scrape, cfg["metrics_port"])
                    if metric(text, "poolwire_registry_prices_total") >= len(TICKS):
                        done_ns = now
                        late = metric(text, "poolwire_registry_late_ticks_total")
                assert time.monotonic() < deadline, f"ticks not all handled in 60 s ({mode})"
            assert sub.stats.gaps == 0, sub.stats
        proc.terminate()
        assert proc.wait(timeout=15) == 0
    return created, sorted(events, key=repr), late


async def test_the_same_ticks_at_any_pace_give_the_same_zones(tmp_path: Path) -> None:
    results = {}
    for mode in ("per_candle", "tick_1khz", "max"):
        results[mode] = await replay(tmp_path / mode, mode)
    zones = {mode: z for mode, (z, _, _) in results.items()}
    assert {mode: late for mode, (_, _, late) in results.items()} == dict.fromkeys(results, 0.0)
    reference = zones["per_candle"]
    assert {k[3] for k in reference} >= {FVG_BULLISH, FVG_BEARISH, BSL, SSL}
    assert {k[2] for k in reference} == {"M1", "M5"}
    for mode, got in zones.items():
        assert got == reference, (mode, len(got ^ reference), sorted(got ^ reference)[:3])
    events = {mode: e for mode, (_, e, _) in results.items()}
    ref_events = events["per_candle"]
    kinds = {e[0] for e in ref_events}
    assert kinds == {"ZoneCreated", "ZoneTouched", "ZoneExpired", "ZoneRemoved"}
    for mode, got_events in events.items():  # event times included
        assert got_events == ref_events, (mode, sorted(set(got_events) ^ set(ref_events))[:3])
    # Each event's time is its cause's: a tick of its symbol, its grace's end.
    tick_times = {(sym, t) for sym, t, _ in TICKS}
    by_id = {k[0]: k for k in reference}
    for name, zid, event_ns, _, _, ended_ns, extra in ref_events:
        if name == "ZoneCreated":  # the tick that closed its last candle (which ends at created_ns)
            assert (by_id[zid][1], event_ns) in tick_times and event_ns >= by_id[zid][6] + LATENESS_NS
        elif name == "ZoneTouched" or extra == "filled":
            assert (by_id[zid][1], event_ns) in tick_times
        elif name == "ZoneRemoved":
            assert event_ns == ended_ns + GRACE_NS
        else:  # a TTL's end
            assert extra == "ttl" and event_ns == ended_ns == by_id[zid][6] + TTL_NS[by_id[zid][2]]
    assert {e[6] for e in ref_events if e[0] == "ZoneExpired"} == {"filled", "ttl"}
    # None touched at or after its TTL's end (a price that reached it found the zone expired), nor
    # after its fill (the filling price may touch it on its way through).
    ttl_end = {z: ev for name, z, ev, *_, extra in ref_events if name == "ZoneExpired" and extra == "ttl"}
    fill = {z: ev for name, z, ev, *_, extra in ref_events if name == "ZoneExpired" and extra == "filled"}
    touches = [(zid, event_ns) for name, zid, event_ns, *_ in ref_events if name == "ZoneTouched"]
    assert all(ev < ttl_end.get(zid, 2**63) and ev <= fill.get(zid, 2**63) for zid, ev in touches)
    assert len(ttl_end) > 20 and any(zid in ttl_end for zid, _ in touches)  # touched, then its TTL ended
    last_tick = TICKS[-1][1]
    assert all(event_ns <= last_tick for _, _, event_ns, *_ in ref_events)  # nothing past its time
    print(
        f"\nreplay: {len(TICKS)} ticks, {len(reference)} zones, {len(ref_events)} zone events, "
        "equal (with their event times) at every pace, no late tick"
    )
