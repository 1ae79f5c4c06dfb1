"""Does the alerts core keep anything that grows with time or inputs? (issue 19)

Drives one :class:`services.alerts.core.Alerts` in-process, as the service does, with a soak-like
stream on event time: ``--symbols`` Polymarket symbols and six pools, the demo's strategies
(deploy/demo.yaml), at the proportions a 30-minute soak delivered to alerts (the run before bench/soak-60min.json:
per second 576 prices, 847 trades, 1 005 zone events: 270 created, 215 touched, 260 expired, 260
removed; 3 swaps). Inputs come in batches of 10 ms, the shell's ticker every ``flush_every``;
jobs run in-process through the worker's own ``run_one`` and their results come back through
``on_result`` in one store transaction per batch, as service.py does; the metrics collector is
read every minute as by a scrape.

Every ``--every`` seconds of event time it prints the RSS, the heap tracemalloc sees, SQLite's own
memory, glibc's arenas, and the length of every container of the core; with ``--trace`` it also
compares tracemalloc snapshots taken after ``--warmup`` (grouped by ``--group``).

    python -m bench._alerts_memory [--seconds 3600] [--symbols 2000] [--trace] [--group lineno]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import gc
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from prometheus_client.registry import CollectorRegistry

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts, open_store
from services.alerts.metrics import AlertsCollector
from services.alerts.strategies import StrategyTable
from services.alerts.worker import run_one
from shared.config import convert
from shared.messages import (
    JobResult,
    Message,
    Price,
    Swap,
    Trade,
    Zone,
    ZoneCreated,
    ZoneExpired,
    ZoneRemoved,
    ZoneTouched,
)

S = 1_000_000_000
ROOT = Path(__file__).resolve().parent.parent
# per second of event time, what alerts received in the 30-minute soak
RATES = {
    "price": 576,
    "trade": 847,
    "created": 270,
    "touched": 215,
    "expired": 260,
    "removed": 260,
    "swap": 3,
}
TIMEFRAMES = ("S5", "S15", "M1")
KINDS = ("bsl", "ssl", "fvg_bullish", "fvg_bearish")


def _sqlite_memory() -> Callable[[], int]:
    """SQLite's own heap (sqlite3_memory_used of the library the sqlite3 module loaded), or -1."""
    import _sqlite3

    try:
        lib = ctypes.CDLL(_sqlite3.__file__)
        fn = lib.sqlite3_memory_used
    except (OSError, AttributeError):
        return lambda: -1
    fn.restype = ctypes.c_int64
    return lambda: int(fn())


_MALLINFO2 = (
    "arena",
    "ordblks",
    "smblks",
    "hblks",
    "hblkhd",
    "usmblks",
    "fsmblks",
    "uordblks",
    "fordblks",
    "keepcost",
)


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _MALLINFO2]


def _mallinfo() -> Callable[[], dict[str, int]]:
    """glibc's mallinfo2: bytes in the main arena (``arena``), in use, free, mmapped."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        fn = libc.mallinfo2
    except (OSError, AttributeError, TypeError):
        return lambda: {}
    fn.restype = _MallInfo2

    def read() -> dict[str, int]:
        m = fn()
        return {"arena": m.arena, "used": m.uordblks, "free": m.fordblks, "mmap": m.hblkhd}

    return read


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def containers(a: Alerts) -> dict[str, int]:
    """The length of every container of the core that an input, a job or a result can add to."""
    st: Any = a.store
    th: Any = a.throttle
    bars: Any = a.bars
    d: Any = a.dispatcher
    series = sum(len(by) for by in bars._series.values())
    zone_events = sum(
        len(evs) for by in bars._series.values() for s in by.values() for evs in s.zones.values()
    )
    open_bars = sum(len(s.builder.bars) for by in bars._series.values() for s in by.values())
    return {
        "store.updates": len(st._updates),
        "store.alert_states": len(st._alerts),
        "store.universe_members": sum(len(u) for u in st._universes.values()),
        "store.pending_jobs": len(st._job_batch),
        "store.batches": len(st._batch_left),
        "store.groups": len(st._groups),
        "store.retry": len(st._retry),
        "throttle.pending": len(th._pending),
        "throttle.known": len(th._known),
        "bars.series": series,
        "bars.open_bars": open_bars,
        "bars.zone_events": zone_events,
        "bars.dirty": len(bars._dirty),
        "dispatch.queue": len(d.queue),
        "dispatch.in_flight": len(d.in_flight),
        "dispatch.recent": len(d.recent),
        "flow.engines": len(a.flow.engines),
        "events": sum(len(getattr(a.events, n)) for n in ("_crosses", "_zones", "_last")),
        "ratelog": len(a.ratelog._windows),
        "deferred": len(a.deferred),
        "unsaved": len(a._unsaved) + len(a._unsaved_deletes),
        "evaluation_seconds": len(a.evaluation_seconds),
        "gc.objects": len(gc.get_objects()),
    }


class Stream:
    """The soak's inputs, in event time: prices, trades and swaps, and each symbol's zones from
    created (then touched) to expired or removed."""

    def __init__(self, symbols: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.assets = [f"{10**76 + i * 7919}" for i in range(symbols)]
        self.pools = [f"0x{i:040x}" for i in range(1, 7)]
        self.active: list[Zone] = []
        self.touched: list[Zone] = []
        self.block = 0

    def _zone(self, ev: int) -> Zone:
        rng = self.rng
        tf = rng.choice(TIMEFRAMES)
        symbol = f"pm.{rng.choice(self.assets)}"
        digest = f"{rng.getrandbits(48):012x}"
        iso = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(ev // S))
        top = rng.random()
        return Zone(id=f"{tf}_{iso}_{digest}", symbol=symbol, timeframe=tf, kind=rng.choice(KINDS),
                    top=top, bottom=top * 0.98, strength=1.0, created_ns=ev, expires_ns=ev + 60 * S)  # fmt: skip

    def one(self, kind: str, ev: int) -> Message:
        rng = self.rng
        if kind == "price":
            return Price(
                symbol=f"pm.{rng.choice(self.assets)}", price=rng.random(), event_ns=ev, source="book"
            )
        if kind == "trade":
            side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
            return Trade(asset=rng.choice(self.assets), price=rng.random(), size=rng.random() * 100, side=side,
                         event_ns=ev)  # fmt: skip
        if kind == "swap":
            self.block += 1
            return Swap(pool=rng.choice(self.pools), protocol="v3", block=self.block,
                        amount0=str(rng.randint(-10**18, 10**18)), amount1="1000", event_ns=ev)  # fmt: skip
        if kind == "created" or not self.active:
            z = self._zone(ev)
            self.active.append(z)
            return ZoneCreated(zone=z, event_ns=ev)
        if kind == "touched":
            z = self.active[rng.randrange(len(self.active))]
            self.touched.append(z)
            if len(self.touched) > 5000:
                del self.touched[:1000]
            return ZoneTouched(zone=z, price=(z.top + z.bottom) / 2, event_ns=ev)
        i = rng.randrange(len(self.active))
        z = self.active[i]
        self.active[i] = self.active[-1]
        self.active.pop()
        if kind == "expired":
            return ZoneExpired(zone=z, reason="ttl", event_ns=ev)
        return ZoneRemoved(zone=z, event_ns=ev)

    def second(self, t0: int) -> list[Message]:
        """One second of inputs from ``t0``, in event-time order."""
        out: list[tuple[int, str]] = []
        for kind, n in RATES.items():
            out += [(t0 + self.rng.randrange(S), kind) for _ in range(n)]
        out.sort()
        return [self.one(kind, ev) for ev, kind in out]


def config(path: str, extra: dict[str, Any]) -> AlertsConfig:
    demo = yaml.safe_load((ROOT / "deploy" / "demo.yaml").read_text())["alerts"]
    return convert({**demo, "sqlite_path": path, **extra}, AlertsConfig, "alerts")


def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="poolwire-alerts-memory-"))
    cfg = config(str(tmp / "alerts.sqlite3"), yaml.safe_load(args.config) if args.config else {})
    if args.trace:
        tracemalloc.start(args.frames)
    store = open_store(cfg, str(tmp))
    if args.cache_size is not None:
        store._db.execute(f"PRAGMA cache_size={int(args.cache_size)}")  # type: ignore[attr-defined]
    alerts = Alerts(cfg, store)
    alerts.start()
    gc.freeze()
    table = StrategyTable((s.id, s.kind, s.function) for s in cfg.strategies if s.trigger == "bucket")
    registry = CollectorRegistry()
    registry.register(AlertsCollector(alerts, None))
    sqlite_mem, mallinfo = _sqlite_memory(), _mallinfo()
    stream = Stream(args.symbols, seed=1)
    flush_ns = int(cfg.flush_every * S)
    t0 = (int(time.time()) - args.seconds - 10) * S  # a live-looking stream, in the past
    next_tick = t0 + flush_ns
    inputs = fired = jobs = 0
    snaps: list[tuple[int, tracemalloc.Snapshot]] = []
    first: dict[str, int] | None = None
    wall = time.perf_counter()
    print("  t_s   inputs   rss_kb  traced_kb  sqlite_kb  arena_kb  free_kb  mmap_kb  jobs  containers")
    for sec in range(args.seconds):
        msgs = stream.second(t0 + sec * S)
        batch_end = t0 + sec * S + 10_000_000
        for msg in msgs:
            while msg.event_ns >= next_tick or msg.event_ns >= batch_end:
                if msg.event_ns >= batch_end:  # the loop turns: the shell's after-batch work
                    now = batch_end
                    if alerts.dispatcher.queue:
                        jobs += _work(alerts, table, now)
                    alerts.evaluation_seconds.clear()
                    if alerts.urgent:
                        alerts.flush_urgent()
                    batch_end += 10_000_000
                if msg.event_ns >= next_tick:  # the ticker
                    now = next_tick
                    alerts.recover(now)
                    alerts.retry_deferred(now)
                    alerts.boundary(alerts.close_point(now))
                    alerts.flush(now)
                    alerts.expire(now)
                    jobs += _work(alerts, table, now)
                    alerts.evaluation_seconds.clear()
                    alerts.ratelog.flush()
                    next_tick += flush_ns
            fired += len(alerts.on_message(msg, msg.event_ns + 1_000_000))
            inputs += 1
        if sec % 60 == 59:
            for _ in registry.collect():  # a scrape
                pass
        if sec % args.every == args.every - 1:
            gc.collect()
            sizes = containers(alerts)
            if first is None and sec >= args.warmup:
                first = sizes
            traced = tracemalloc.get_traced_memory()[0] // 1024 if args.trace else -1
            m = mallinfo()
            print(
                f"{sec + 1:5d} {inputs:8d} {rss_kb():8d} {traced:10d} {sqlite_mem() // 1024:10d} "
                f"{m.get('arena', 0) // 1024:9d} {m.get('free', 0) // 1024:8d} {m.get('mmap', 0) // 1024:8d} "
                f"{jobs:5d}  "
                + " ".join(f"{k}={v}" for k, v in sizes.items() if first is None or v != first[k]),
                flush=True,
            )
            if args.trace and sec >= args.warmup:  # the first and the latest: each is megabytes
                snaps[1:] = [(sec + 1, tracemalloc.take_snapshot())]
    print(f"{inputs} inputs, {jobs} jobs, {fired} event alerts in {time.perf_counter() - wall:.0f} s wall")
    if first is not None:
        last = containers(alerts)
        print("containers after warm-up -> end:", {k: (first[k], v) for k, v in last.items()})
    if len(snaps) >= 2:
        filters = [tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen *>")]
        (ta, a), (tb, b) = snaps[0], snaps[-1]
        a, b = a.filter_traces(filters), b.filter_traces(filters)
        print(f"top growth from {ta} s to {tb} s of event time (by {args.group}):")
        total = 0
        for stat in b.compare_to(a, args.group)[: args.top]:
            total += stat.size_diff
            print(
                f"  {stat.size_diff / 1024:+9.1f} kB {stat.count_diff:+7d} blocks  {stat.traceback.format()[-1].strip()}"
            )
            if args.group == "traceback":
                for line in stat.traceback.format()[-12:-1]:
                    print(f"      {line.strip()}")
        all_diff = sum(s.size_diff for s in b.compare_to(a, "filename"))
        print(f"heap traced: {all_diff / 1024:+.1f} kB in all between the snapshots")
    store.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _work(alerts: Alerts, table: StrategyTable, now: int) -> int:
    """The workers: every job there is room for runs here; their results handled as one batch."""
    jobs = alerts.dispatcher.ready(now)
    results: list[JobResult] = [run_one(job, table, "w1", 5.0) for job in jobs]
    with alerts.store.transaction():
        for r in results:
            alerts.on_result(r, now + 2_000_000)
    return len(jobs)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench._alerts_memory")
    p.add_argument("--seconds", type=int, default=3600, help="event time to feed")
    p.add_argument("--symbols", type=int, default=2000)
    p.add_argument("--every", type=int, default=300, help="seconds of event time between samples")
    p.add_argument("--warmup", type=int, default=600, help="seconds of event time before the first snapshot")
    p.add_argument("--trace", action="store_true")
    p.add_argument("--frames", type=int, default=1)
    p.add_argument("--group", default="lineno", choices=("lineno", "traceback", "filename"))
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--cache-size", type=int, default=None, help="PRAGMA cache_size for the store")
    p.add_argument("--config", default="", help="YAML of alerts keys over the demo's")
    run(p.parse_args(argv))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
