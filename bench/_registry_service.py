"""The registry service over ZeroMQ, as a real process: prices in, zone events out."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from services.registry.detectors import Detectors
from services.registry.registry import Registry
from services.registry.zones import Rules, TimeframeRules, ZoneError, timeframe_ns
from shared.bus import Publisher, Pusher, Subscriber
from shared.constants import ZONE, health_topic, px_topic
from shared.messages import DetectorEvent, Heartbeat, Price, ZoneCreated, ZoneTouched
from shared.snapshot import request_snapshot
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
ZONE_PREFIX = f"{ZONE}."  # every zone event
N_PRICES = 200_000
N_ZONES = 1_000


async def _measure(cfg: dict[str, Any]) -> dict[str, float]:
    async with (
        Subscriber(cfg["pub"], (ZONE_PREFIX,)) as sub,
        Publisher(cfg["prices"][0], service="ingest", heartbeat_interval=0.5) as pub,
    ):
        await sub.wait_for_publisher("registry", timeout=30)
        pusher = Pusher(cfg["pull"], sender="bench")
        try:
            for i in range(N_ZONES):
                await pusher.send(
                    DetectorEvent(
                        detector="bench",
                        symbol="pm.x",
                        timeframe="H1",
                        kind="other",
                        top=i + 1.5,
                        bottom=i + 1.0,  # prices > 0: a zone at 0 is refused at decode
                    )
                )
            await pusher.send(
                DetectorEvent(
                    detector="bench", symbol="pm.m", timeframe="H1", kind="other", top=2.0, bottom=1.0
                )
            )
            created = 0
            while created < N_ZONES + 1:
                batch = await sub.recv_batch(timeout=30)
                if not batch:
                    raise TimeoutError("zones not created")
                created += sum(isinstance(m, ZoneCreated) for _, m in batch)
            # Warm up: make sure the service's SUB has joined our PUB.
            for _ in range(100):
                pub.publish(px_topic("pm.m"), Price(symbol="pm.m", price=0.5))
                pub.publish(px_topic("pm.m"), Price(symbol="pm.m", price=1.5))
                batch = await sub.recv_batch(timeout=0.2)
                if any(isinstance(m, ZoneTouched) for _, m in batch):
                    break
            while await sub.recv_batch(timeout=0.2):
                pass
            # A sawtooth over the zones: about one touch per two prices.
            prices = [((k % (2 * N_ZONES)) * 0.5 + 0.25) for k in range(N_PRICES)]
            t0 = time.perf_counter()
            touches = 0
            for k, p in enumerate(prices):
                pub.publish(px_topic("pm.x"), Price(symbol="pm.x", price=p))
                if k % 5000 == 4999:
                    await asyncio.sleep(0)
                    for _, msgs in sub._drain():  # (topic, the frame's messages)
                        touches += sum(isinstance(m, ZoneTouched) for m in msgs)
            pub.publish(px_topic("pm.m"), Price(symbol="pm.m", price=0.5))
            pub.publish(px_topic("pm.m"), Price(symbol="pm.m", price=1.5))
            done = False
            while not done:
                batch = await sub.recv_batch(timeout=60)
                if not batch:
                    raise TimeoutError("marker not seen")
                for _, m in batch:
                    if isinstance(m, ZoneTouched):
                        if m.zone.symbol == "pm.m":
                            done = True
                        else:
                            touches += 1
            elapsed = time.perf_counter() - t0
            return {
                "prices_per_s": N_PRICES / elapsed,
                "events_per_s": touches / elapsed,
                "events": touches,
                "gaps": sub.stats.missed,
            }
        finally:
            pusher.close()


def service_figures() -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "pub": f"tcp://127.0.0.1:{free_port()}",
            "pull": f"tcp://127.0.0.1:{free_port()}",
            "snapshot": f"tcp://127.0.0.1:{free_port()}",
            "prices": [f"tcp://127.0.0.1:{free_port()}"],
            "metrics_port": 0,
        }
        path = Path(tmp) / "poolwire.yaml"
        path.write_text(
            yaml.safe_dump({"common": {"data_dir": tmp, "log_level": "WARNING"}, "registry": cfg})
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.registry", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            res = asyncio.run(_measure(cfg))
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return {
        "registry.service_prices_per_s": {
            "value": res["prices_per_s"],
            "unit": "prices/s",
            "note": f"one symbol, {N_ZONES} zones, detectors on, SQLite store; {res['gaps']:.0f} events lost",
        },
        "registry.service_events_per_s": {
            "value": res["events_per_s"],
            "unit": "events/s",
            "events": res["events"],
        },
    }


# -- replay: a recorded stretch as fast as possible ---------------------------------------------

REPLAY_SYMBOLS = 2_000
REPLAY_TIMEFRAMES = ["M1", "M5", "M15", "H1", "H4", "D1"]
REPLAY_TICKS = 200_000
REPLAY_SPAN_NS = 30 * 60 * 1_000_000_000  # half an hour: about 3 ticks per symbol and M1 candle
REPLAY_MAX_ZONES = 1_000_000  # per timeframe: no eviction, so that the zones compare one to one
MINUTE = 60 * 1_000_000_000


def _recorded(seed: int = 5) -> list[tuple[str, int, float]]:
    """Random walks with jumps over 2 000 symbols, in event-time order, three days ago."""
    rng = random.Random(seed)
    start = (time.time_ns() - 3 * 86400 * 1_000_000_000) // MINUTE * MINUTE
    symbols = [f"pm.s{i}" for i in range(REPLAY_SYMBOLS)]
    prices = dict.fromkeys(symbols, 1.0)
    step = REPLAY_SPAN_NS // REPLAY_TICKS
    out = []
    for k in range(REPLAY_TICKS):
        sym = symbols[rng.randrange(REPLAY_SYMBOLS)]
        jump = rng.choice((-0.03, 0.03)) if rng.random() < 0.03 else 0.0
        prices[sym] = round(prices[sym] * (1 + rng.gauss(0, 0.004) + jump), 6)
        out.append((sym, start + k * step, prices[sym]))
    return out


def _core(now: int) -> tuple[Detectors, Registry]:
    """The replay's detectors and registry core in-process, configured as the service's."""
    det = Detectors({tf: timeframe_ns(tf) for tf in REPLAY_TIMEFRAMES}, lateness_ns=2_000_000_000)
    rules = Rules(
        timeframes={
            tf: TimeframeRules(ttl_ns=7 * 86400 * 1_000_000_000) for tf in ["H1", *REPLAY_TIMEFRAMES]
        },
        strength_threshold=0.1,
        max_per_tf=REPLAY_MAX_ZONES,
    )
    return det, Registry(rules, now)


def _tick(det: Detectors, reg: Registry, sym: str, t: int, p: float, now: int) -> None:
    """One tick as the service's price loop handles it: detections first, then the zones' touches."""
    for d in det.on_price(sym, t, p, now):
        try:
            reg.create(d.symbol, d.timeframe, d.kind, d.top, d.bottom, d.strength, d.created_ns, now)
        except ZoneError:  # refused (counted by the service too)
            continue
    reg.on_price(sym, p, now)


def _reference(ticks: list[tuple[str, int, float]]) -> set[tuple[str, str, str, float, float, int]]:
    """The zones the registry's core holds after the ticks, in-process (what the live run holds)."""
    now = time.time_ns()
    det, reg = _core(now)
    for sym, t, p in ticks:
        _tick(det, reg, sym, t, p, now)
    return {(z.symbol, z.timeframe, z.kind, z.top, z.bottom, z.created_ns) for z in reg.active()}


def _cpu_s(pid: int) -> float:
    """A process's CPU time (user + system), from /proc: steadier than wall time on a busy machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU time (s) per thread name of a process: the loop, the store's, ZeroMQ's I/O threads."""
    out: dict[str, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            name, rest = task.joinpath("stat").read_text().split("(", 1)[1].rsplit(")", 1)
        except OSError:  # the thread ended meanwhile
            continue
        fields = rest.split()
        name = "loop" if task.name == str(pid) else name  # the main thread; "python": the others
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def _metric(text: str, name: str) -> float:
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def _heartbeat_gaps(endpoint: str, gaps: list[float], stop: asyncio.Event) -> None:
    """The registry's heartbeats by their publish time: a gap over the interval is its loop blocked."""
    async with Subscriber(endpoint, (health_topic("registry"),)) as sub:
        last = 0
        while not stop.is_set():
            for _, m in await sub.recv_batch(timeout=0.2):
                if isinstance(m, Heartbeat):
                    if last:
                        gaps.append((m.publish_ns - last) / 1e9)
                    last = m.publish_ns


async def _replay(cfg: dict[str, Any], ticks: list[tuple[str, int, float]], pid: int) -> dict[str, Any]:
    zones: set[tuple[str, str, str, float, float, int]] = set()
    marked = False
    gaps: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(_heartbeat_gaps(cfg["pub"], gaps, stop))

    def take(batch: list[tuple[str, Any]]) -> None:
        nonlocal marked
        for _, m in batch:
            if isinstance(m, ZoneTouched) and m.zone.symbol == "pm.marker":
                marked = True

    async with (
        Subscriber(cfg["pub"], (ZONE_PREFIX,)) as sub,
        # lossless, as `poolwire replay`: past the high-water mark it waits instead of dropping
        Publisher(cfg["prices"][0], service="replay", heartbeat_interval=0.5, lossless=True) as pub,
    ):
        await sub.wait_for_publisher("registry", timeout=30)
        await pub.wait_for_subscriber(px_topic(""), timeout=30)
        # A marker zone: its touch, sent after the last tick, comes back after every tick is handled.
        pusher = Pusher(cfg["pull"], sender="bench")
        try:
            marker = dict(detector="bench", symbol="pm.marker", timeframe="H1", kind="other")
            await pusher.send(DetectorEvent(top=2.0, bottom=1.0, **marker))  # type: ignore[arg-type]
        finally:
            pusher.close()
        while not any(isinstance(m, ZoneCreated) for _, m in await sub.recv_batch(timeout=30)):
            pass
        # The marker's prices carry the recording's event times too: a price on the clock would
        # make the registry take the whole stream for live (TTLs on the clock), not a replay.
        first_ns, last_ns = ticks[0][1], ticks[-1][1]
        pub.publish(px_topic("pm.marker"), Price(symbol="pm.marker", price=3.0, event_ns=first_ns))
        profile = os.environ.get("BENCH_REGISTRY_PYSPY")  # a path: py-spy's raw stacks of the registry
        spy = None
        if profile:
            spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--threads", "-r", "250", "-f", "raw", "-o", profile, "--pid", str(pid)])  # fmt: skip
            await asyncio.sleep(1.0)
        t0 = time.perf_counter()
        cpu0, own0, threads0 = _cpu_s(pid), time.process_time(), _thread_cpu_s(pid)
        for k, (sym, t, p) in enumerate(ticks):
            pub.publish(px_topic(sym), Price(symbol=sym, price=p, event_ns=t))
            if k % 5000 == 4999:
                await pub.drain()
                take([(topic, m) for topic, msgs in sub._drain() for m in msgs])
        pub.publish(px_topic("pm.marker"), Price(symbol="pm.marker", price=1.5, event_ns=last_ns))
        await pub.drain()
        while not marked:
            batch = await sub.recv_batch(timeout=120)
            if not batch:
                raise TimeoutError("the marker's touch never came")
            take(batch)
        elapsed = time.perf_counter() - t0
        cpu, own = _cpu_s(pid) - cpu0, time.process_time() - own0
        threads = {k: v - threads0.get(k, 0.0) for k, v in _thread_cpu_s(pid).items()}
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait)
        await asyncio.sleep(1.5)  # one more heartbeat after the burst
        stop.set()
        await watcher
        url = f"http://127.0.0.1:{cfg['metrics_port']}/metrics"
        text = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=60).read().decode())
        late = _metric(text, "poolwire_registry_late_ticks_total")
        lag_max = _metric(text, "poolwire_registry_wheel_lag_max_seconds")
        lost = _metric(text, 'poolwire_bus_messages_missed_total{socket="sub"}')
        # The zones held (none expire or are evicted here), from the Clone snapshot: the events,
        # 3-4 per tick, would overrun this reader's SUB queue.
        _, items = await request_snapshot(cfg["snapshot"], ZONE_PREFIX, timeout=120)
        for item in items:
            z = item.zone  # type: ignore[attr-defined]
            if z.symbol != "pm.marker":
                zones.add((z.symbol, z.timeframe, z.kind, z.top, z.bottom, z.created_ns))
    return {
        "ticks_per_s": len(ticks) / elapsed,
        "cpu_us_per_tick": cpu / len(ticks) * 1e6,
        "replayer_cpu_us_per_tick": own / len(ticks) * 1e6,
        "thread_us_per_tick": {k: round(v / len(ticks) * 1e6, 2) for k, v in threads.items() if v},
        "late": late,
        "lost": lost,
        "zones": zones,
        "heartbeat_gap_max_s": max(gaps, default=0.0),
        "heartbeats": len(gaps) + 1,
        "wheel_lag_max_s": lag_max,
    }


def replay_figures() -> dict[str, dict[str, Any]]:
    ticks = _recorded()
    reference = _reference(ticks)
    with tempfile.TemporaryDirectory() as tmp:
        cfg: dict[str, Any] = {
            "pub": f"tcp://127.0.0.1:{free_port()}",
            "pull": f"tcp://127.0.0.1:{free_port()}",
            "snapshot": f"tcp://127.0.0.1:{free_port()}",
            "prices": [f"tcp://127.0.0.1:{free_port()}"],
            "metrics_port": free_port(),
            "pools": {
                **{tf: {"ttl": "7d"} for tf in ["H1", *REPLAY_TIMEFRAMES]},
                "max_pools_per_tf": REPLAY_MAX_ZONES,
            },
            "detectors": {"timeframes": REPLAY_TIMEFRAMES},
        }
        path = Path(tmp) / "poolwire.yaml"
        path.write_text(
            yaml.safe_dump({"common": {"data_dir": tmp, "log_level": "WARNING"}, "registry": cfg})
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.registry", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            res = asyncio.run(_replay(cfg, ticks, proc.pid))
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    equal = res["zones"] == reference
    return {
        "registry.replay_ticks_per_s": {
            "value": res["ticks_per_s"],
            "unit": "ticks/s",
            "goal": ">= 100000",
            "zones_equal_to_live": equal,  # the active zones, snapshot vs the core in-process
            "zones": len(reference),
            "zones_differing": len(res["zones"] ^ reference),
            "late_ticks": res["late"],
            "ticks_lost": res["lost"],  # the registry's SUB saw gaps
            # CPU time per tick, the registry's and the replayer's (this process): steadier figures
            "registry_cpu_us_per_tick": round(res["cpu_us_per_tick"], 2),
            "replayer_cpu_us_per_tick": round(res["replayer_cpu_us_per_tick"], 2),
            "registry_cpu_us_per_tick_by_thread": res["thread_us_per_tick"],
            "heartbeat_gap_max_s": round(res["heartbeat_gap_max_s"], 3),  # interval 1 s; 3 s is a miss
            "wheel_lag_max_s": res["wheel_lag_max_s"],
            "note": f"{REPLAY_TICKS} recorded ticks of {REPLAY_SYMBOLS} symbols x "
            f"{len(REPLAY_TIMEFRAMES)} timeframes as fast as possible, SQLite store",
        }
    }


if __name__ == "__main__":
    if sys.argv[1:] != ["replay"]:
        print(service_figures())
    print(replay_figures())
