"""Replay equals live: one generated stretch through the real alerts process (and its worker) at
real time, at a fixed high rate and as fast as possible gives the same alerts each time.

The stretch (several symbols: prices, trades, swaps, zone touches, each with its ``event_ns``) is
first published live: each message at the wall-clock time of its event time, so the stream is live
and the wall clock closes its buckets too. Then the very same messages (the same event times,
seconds old by then) go to a fresh alerts process at 2 000 messages/s, and to another all at once:
a replay of history, evaluated on its own event time. Bucketed alerts are compared by
(strategy, symbol, bucket_ns, value); event-triggered ones by their cause's ``event_ns`` (their
``bucket_ns`` is the moment of their evaluation).

Inputs sit in the first 600 ms of each second: a live boundary is evaluated when the wall clock
passes it plus the lateness (1 s), and an input still on its way then (published in the last
moments before that point) could not be in the evaluation; a replay has no wall clock to race.
"""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from shared.bus import Publisher, Subscriber
from shared.constants import dex_swap_topic, md_topic, px_topic, zone_topic
from shared.messages import AlertFired, Message, Price, Swap, Trade, Zone, ZoneTouched
from tests.alerts.test_service import scrape, write_config
from tests.helpers import spawn
from tests.ports import tcp_endpoint

pytestmark = pytest.mark.slow

S = 1_000_000_000
MS = 1_000_000
SECONDS = 8  # buckets in the stretch
UNIVERSE = ["pm.a", "pm.b", "dex.0xpool"]
STRATEGIES: list[dict[str, Any]] = [
    {"id": "cross", "kind": "price_cross", "bucket": "1s", "universe": UNIVERSE, "params": {"level": 0.5}},
    {"id": "move", "kind": "percent_move", "bucket": "2s", "universe": UNIVERSE, "params": {"pct": 1.0}},
    {"id": "zones", "kind": "zone_event", "bucket": "1s", "universe": ["pm.a", "pm.b"]},
    {
        "id": "flow",
        "kind": "order_flow",
        "bucket": "1s",
        "flow_window": "2s",
        "universe": UNIVERSE,
        "params": {"metric": "delta", "op": ">", "value": 0},
    },
    # The sentinel has the longest bucket: its boundary is the last with inputs, evaluated with them.
    {"id": "end", "kind": "price_cross", "bucket": "2s", "universe": ["pm.end"], "params": {"level": 0.5}},
    {"id": "now", "kind": "price_cross", "trigger": "event", "universe": ["pm.a"], "params": {"level": 0.5}},
]
EVENT_TRIGGERED = {"now"}

Stretch = list[tuple[int, str, Message]]  # (offset from the stretch's start, topic, message)


def touch(symbol: str, i: int, event_ns: int) -> ZoneTouched:
    zone = Zone(
        id=f"M1_{symbol}_{i}",
        symbol=symbol,
        timeframe="M1",
        kind="fvg_bullish",
        top=0.52,
        bottom=0.48,
        strength=1.0,
        created_ns=event_ns - 60 * S,
        expires_ns=event_ns + 3600 * S,
    )
    return ZoneTouched(zone=zone, price=0.5, event_ns=event_ns)


def generate(start_ns: int) -> Stretch:
    """Prices that cross 0.5 often, trades, swaps and touches, every 50 ms in [0, 600 ms) of each
    second; then the sentinel (pm.end crosses in the last bucket of the longest size) and one price
    past the last boundary plus the lateness, which closes every bucket on event time."""
    rng = random.Random(14)
    prices = {s: 0.5 for s in UNIVERSE}
    out: Stretch = []
    for second in range(SECONDS):
        for step in range(12):
            off = second * S + step * 50 * MS
            ev = start_ns + off
            for s in UNIVERSE:
                prices[s] = min(max(prices[s] + rng.uniform(-0.02, 0.02), 0.3), 0.7)
                out.append((off, px_topic(s), Price(symbol=s, price=round(prices[s], 4), event_ns=ev)))
            asset = rng.choice("ab")
            side: Literal["buy", "sell"] = rng.choice(("buy", "sell"))
            trade = Trade(asset=asset, price=0.5, size=float(rng.randint(1, 9)), side=side, event_ns=ev)
            out.append((off, md_topic("trade", asset), trade))
            if step % 3 == 0:
                a0 = rng.choice((-1, 1)) * rng.randint(1, 10**6)
                swap = Swap(
                    pool="0xpool", protocol="v3", block=off, amount0=str(a0), amount1="5", event_ns=ev
                )
                out.append((off, dex_swap_topic("0xpool"), swap))
            if step == 5 and second % 2 == 1:
                symbol = rng.choice(("pm.a", "pm.b"))
                out.append((off, zone_topic("touched", "M1", symbol), touch(symbol, second, ev)))
    last = (SECONDS - 1) * S
    for off, price in ((last + 100 * MS, 0.4), (last + 200 * MS, 0.6)):
        out.append((off, px_topic("pm.end"), Price(symbol="pm.end", price=price, event_ns=start_ns + off)))
    # Past the last boundary plus the lateness: a 2 s bucket holding the last second ends at most
    # one second after the stretch. (At SECONDS + 1.1 s, one alignment in two left that bucket to
    # the wall clock: evaluated when the stream still looked live, and not when it did not.)
    off = (SECONDS + 1) * S + S + 100 * MS
    out.append((off, px_topic("pm.clock"), Price(symbol="pm.clock", price=0.5, event_ns=start_ns + off)))
    return out


def key(a: AlertFired) -> tuple[str, str, int, float]:
    return (a.strategy, a.symbol, a.event_ns if a.strategy in EVENT_TRIGGERED else a.bucket_ns, a.value)


async def run(tmp_path: Path, stretch: Stretch, pace: str) -> list[tuple[str, str, int, float]]:
    """One fresh alerts process (one spawned worker) fed the stretch: ``live`` (each message at
    the wall-clock time of its event), ``rate`` (2 000 messages/s) or ``max`` (all at once)."""
    source = tcp_endpoint()
    run_dir = tmp_path / pace
    run_dir.mkdir()
    path, cfg = write_config(run_dir, source, STRATEGIES, workers=1, job_timeout="5s")
    got: list[AlertFired] = []
    async with (
        Publisher(source, service="replay", lossless=True, heartbeat_interval=0.2) as pub,
        Subscriber(cfg["pub"], ["alert."]) as sub,
    ):
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            await sub.wait_for_publisher("alerts", timeout=20)
            for prefix in ("px.", "md.trade.", "dex.swap.", "zone."):
                await pub.wait_for_subscriber(prefix, timeout=20)

            async def collect(timeout: float) -> None:
                got.extend(m for _, m in await sub.recv_batch(timeout=timeout) if isinstance(m, AlertFired))

            first_ns = stretch[0][2].event_ns
            for i, (off, topic, msg) in enumerate(stretch):
                if pace == "live":
                    while (wait := (first_ns + off - time.time_ns()) / S) > 0:
                        await collect(wait)  # paced by the wall clock, collecting meanwhile
                elif pace == "rate" and i % 20 == 0:
                    await asyncio.sleep(0.01)  # 20 messages every 10 ms: 2 000/s
                pub.publish(topic, msg)
            pub.flush()

            async def settled() -> bool:
                """The sentinel came, no job is left, and every alert published has arrived."""
                if not any(a.strategy == "end" for a in got):
                    return False
                m = await scrape(cfg["metrics_port"])
                published = m.get('poolwire_alerts_alerts_total{outcome="published"}', -1)
                idle = m["poolwire_alerts_jobs_in_flight"] == 0 and m["poolwire_alerts_jobs_queued"] == 0
                late = sum(v for k, v in m.items() if k.startswith("poolwire_alerts_late_inputs_total"))
                assert late == 0, f"{pace}: {late} inputs late"
                return idle and len(got) == published

            async with asyncio.timeout(60):
                while not await settled():
                    await collect(0.2)
            proc.terminate()
            assert proc.wait(timeout=15) == 0
    return sorted(key(a) for a in got)


async def test_replay_at_any_speed_gives_the_live_alerts(tmp_path: Path) -> None:
    now = time.time_ns()
    start = now - now % S + 2 * S  # a whole second, far enough ahead to publish it live
    stretch = generate(start)
    live = await run(tmp_path, stretch, "live")
    strategies = {k[0] for k in live}
    assert strategies == {s["id"] for s in STRATEGIES}, f"every strategy fired live: {strategies}"
    assert len(live) >= 30
    for pace in ("rate", "max"):
        replayed = await run(tmp_path, stretch, pace)
        missing = sorted(set(live) - set(replayed))
        extra = sorted(set(replayed) - set(live))
        assert replayed == live, (
            f"{pace}: {len(missing)} missing {missing[:6]}, {len(extra)} extra {extra[:6]}"
        )
    print(
        f"\nalerts replay = live: {len(stretch)} messages, {len(live)} alerts, at real time, 2 000/s and max"
    )
