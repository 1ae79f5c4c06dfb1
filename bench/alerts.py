"""alerts: one bucket of 10 000 strategies, trades into the order-flow engines, jobs through workers.

- ``alerts.bucket_10k_ms``: evaluate one bucket boundary (claim, intersect, classify) for 10 000
  strategies (9 000 universes of <= 10 tickers, 900 of <= 100, 90 of <= 1 000, 10 of 5 000, drawn
  from 10 000 tickers) against 5 000 updated tickers, on the embedded store (median of 7).
- ``alerts.bucket_10k_with_jobs_ms``: the same bucket as the service evaluates it: the jobs of what
  is due (9 000+, with their tickers' closed bars) built and persisted with the claim in one SQLite
  transaction (median of 3; no goal: this is the whole cost the 20 ms goal leaves out).
- ``alerts.bucket_10k_redis_ms``: the same on a local redis-server (if installed; no goal: a
  network store pays a round trip per pipeline and parses every member in Python).
- ``alerts.trades_per_s``: trades into the per-symbol order-flow engines (200 symbols).
- ``alerts.flow_metrics_us``: one uncached metrics computation over a full 1 000-trade buffer.
- ``alerts.jobs_per_s``: strategy jobs through 2 real worker processes (push, run, result back).
- ``alerts.bytes_per_symbol``: Python heap per symbol (tracemalloc, the slope between 50 and 150
  symbols) of a core at the default config with a price_cross, an order_flow and an event-triggered
  zone_event strategy, every order-flow buffer full; ``alerts.bytes_per_zone_event``: each zone
  event held in an open bar on top of that.
"""

from __future__ import annotations

import asyncio
import gc
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

from bench._soak_stats import slope_per_hour
from services.alerts.config import AlertsConfig, StrategyConfig
from services.alerts.orderflow import FlowBook
from services.alerts.service import Alerts
from services.alerts.store import ThrottleStore
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from services.alerts.throttle import StrategySpec, Throttle
from shared.messages import Price
from tests.helpers import find_redis_server
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
M = 60_000_000_000
S = 1_000_000_000


def _strategies(rng: random.Random, pool: list[str]) -> list[StrategySpec]:
    sizes = (
        [rng.randint(1, 10) for _ in range(9000)]
        + [rng.randint(11, 100) for _ in range(900)]
        + [rng.randint(101, 1000) for _ in range(90)]
        + [5000] * 10
    )
    return [StrategySpec.from_universe(f"s{i}", M, rng.sample(pool, n)) for i, n in enumerate(sizes)]


def _bucket(store: ThrottleStore, specs: list[StrategySpec], updated: list[str], rounds: int) -> float:
    t = Throttle(store, specs)
    t.start()
    gc.collect()
    gc.freeze()  # as the service does after loading its state
    ids = [s.id for s in specs]
    boundary = 1_700_000_000 * S // M * M
    times = []
    runs = 0
    for _ in range(rounds):
        boundary += M
        for x in updated:
            t.note_update(x, boundary - S)
        t.flush()
        t0 = time.perf_counter()
        due = t.evaluate(boundary, ids, M)
        times.append((time.perf_counter() - t0) * 1000)
        runs += len(due)
    gc.unfreeze()
    assert runs > 0
    return statistics.median(times)


def _bucket_sqlite(path: str, specs: list[StrategySpec], updated: list[str]) -> tuple[float, float]:
    """The embedded store, one service core for both figures: boundaries evaluated alone (median of
    7), then as the service evaluates them, jobs built and persisted with the claim (median of 3)."""
    cfg = AlertsConfig(
        strategies=[
            StrategyConfig(id=s.id, kind="price_cross", universe=sorted(s.tickers), params={"level": 0.5})
            for s in specs
        ]
    )
    core = Alerts(cfg, SqliteStore(path))
    try:
        with core.store.transaction():  # one commit for the 10 000 universes, not one each
            core.start()
        gc.collect()
        gc.freeze()  # as the service does after loading its state
        ids = [s.id for s in specs]
        boundary = 1_700_000_000 * S // M * M
        alone: list[float] = []
        with_jobs: list[float] = []
        for r in range(10):
            boundary += M
            for x in updated:  # ticker updates and the bars the jobs carry
                core.on_message(Price(symbol=x, price=0.4 + r / 100), boundary - S)
            core.throttle.flush()
            build = None if r < 7 else core._jobs
            t0 = time.perf_counter()
            due = core.throttle.evaluate(boundary, ids, M, build)
            (alone if build is None else with_jobs).append((time.perf_counter() - t0) * 1000)
            assert due
            core.bars.roll(M, boundary)
            with core.store.transaction():  # their results, as the service finishes them
                for d in due:
                    if d.job is not None:
                        core.store.finish_job(d.job.job_id, {})
        gc.unfreeze()
        return statistics.median(alone), statistics.median(with_jobs)
    finally:
        core.store.close()


def _redis(binary: str) -> tuple[subprocess.Popen[str], str]:
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "Ready to accept connections" in line:
            break
    return proc, f"redis://127.0.0.1:{port}/0"


def bench_bucket() -> dict[str, dict[str, Any]]:
    rng = random.Random(7)
    pool = [f"pm.{i}" for i in range(10_000)]
    specs = _strategies(rng, pool)
    updated = rng.sample(pool, 5000)
    out: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as d:
        ms, with_jobs = _bucket_sqlite(str(Path(d) / "alerts.sqlite3"), specs, updated)
    out["alerts.bucket_10k_ms"] = {"value": round(ms, 2), "unit": "ms", "goal": "<= 20"}
    out["alerts.bucket_10k_with_jobs_ms"] = {"value": round(with_jobs, 2), "unit": "ms", "goal": ""}
    binary = find_redis_server()
    if binary:
        proc, url = _redis(binary)
        try:
            rstore = RedisStore(url)
            try:
                ms = _bucket(rstore, specs, updated, 3)
            finally:
                rstore.close()
        finally:
            proc.terminate()
            proc.communicate(timeout=10)
        out["alerts.bucket_10k_redis_ms"] = {"value": round(ms, 2), "unit": "ms", "goal": ""}
    return out


def bench_trades() -> dict[str, dict[str, Any]]:
    rng = random.Random(3)
    symbols = [f"pm.{i}" for i in range(200)]
    n = 500_000
    trades = [
        (
            symbols[rng.randrange(200)],
            1_700_000_000 * S + i * 100_000,
            rng.random() * 10,
            rng.random() < 0.5,
        )
        for i in range(n)
    ]
    best = 0.0
    for _ in range(3):
        book = FlowBook()
        add = book.add
        t0 = time.perf_counter()
        for sym, ns, size, buy in trades:
            add(sym, ns, size, buy)
        best = max(best, n / (time.perf_counter() - t0))
    eng = book.engines[symbols[0]]
    now = eng.last_ns
    k = 2000
    t0 = time.perf_counter()
    for _ in range(k):
        eng.metrics(3600.0, now)
    us = (time.perf_counter() - t0) / k * 1e6
    return {
        "alerts.trades_per_s": {"value": round(best), "unit": "trades/s", "goal": ">= 500000"},
        "alerts.flow_metrics_us": {"value": round(us, 1), "unit": "us", "goal": "<= 1000"},
    }


async def _jobs(n: int, workers: int) -> float:
    from shared.bus import Puller, Pusher
    from shared.messages import StrategyJob, TickerInput
    from tests.helpers import python_env
    from tests.ports import tcp_endpoint

    jobs_ep, results_ep = tcp_endpoint(), tcp_endpoint()
    # workers run only the strategies of their config: the bench's one strategy
    config = Path(tempfile.mkdtemp()) / "alerts.yaml"
    config.write_text(
        "alerts:\n  strategies:\n    - {id: b, kind: price_cross, universe: ['pm.a'], params: {level: 0.5}}\n"
    )
    pusher = Pusher(jobs_ep, bind=True, hwm=100_000, linger_ms=0)
    puller = Puller(results_ep, bind=True, hwm=100_000)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.alerts.worker",
                "--jobs",
                jobs_ep,
                "--results",
                results_ep,
                "--name",
                f"bench-{i}",
                "--config",
                str(config),
            ],
            cwd=ROOT,
            env=python_env(),
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    try:
        bar = TickerInput(open=0.4, high=0.6, low=0.4, close=0.6, prev_close=0.4)

        def job(i: int) -> StrategyJob:
            return StrategyJob(
                job_id=str(i),
                strategy="b",
                kind="price_cross",
                bucket_ns=0,
                tickers=["pm.a"],
                params={"level": 0.5},
                inputs={"pm.a": bar},
            )

        # warm-up: every worker connected and answering
        for i in range(workers * 20):
            await pusher.send(job(-1 - i))
        got = 0
        while got < workers * 20:
            got += len(await puller.recv_batch(timeout=30))
        t0 = time.perf_counter()
        for i in range(n):
            await pusher.send(job(i))
            if i % 500 == 0:
                await asyncio.sleep(0)
        got = 0
        while got < n:
            batch = await puller.recv_batch(timeout=30)
            if not batch:
                raise TimeoutError("workers stopped answering")
            got += len(batch)
        return n / (time.perf_counter() - t0)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=10)
        pusher.close(0)
        puller.close()


def bench_jobs() -> dict[str, dict[str, Any]]:
    rate = asyncio.run(_jobs(20_000, 2))
    return {"alerts.jobs_per_s": {"value": round(rate), "unit": "jobs/s", "goal": ">= 5000"}}


MEMORY_STRATEGIES = [
    StrategyConfig(id="cross", kind="price_cross", universe=["pm.*"], params={"level": 0.5}),
    StrategyConfig(
        id="flow", kind="order_flow", universe=["pm.*"], params={"metric": "delta", "op": ">", "value": 1e9}
    ),
    StrategyConfig(id="touch", kind="zone_event", trigger="event", universe=["pm.*"]),
]


def _state_bytes(symbols: int, seconds: int, trades_per_s: int, zones_per_bar: int, path: str) -> int:
    """Python heap held by one Alerts core after ``seconds`` of event time over ``symbols`` symbols
    (each second: a price and ``trades_per_s`` trades per symbol; ``zones_per_bar`` zone touches
    in every symbol's last bar), flushed every 250 ms and evaluated every second as the shell does."""
    import tracemalloc

    from shared.messages import Trade, Zone, ZoneTouched

    cfg = AlertsConfig(strategies=MEMORY_STRATEGIES, workers=0, sqlite_path=path)
    t0 = 1_700_000_000 * S - 1_700_000_000 * S % M
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    alerts = Alerts(cfg, SqliteStore(path))
    alerts.start()
    assets = [f"{10**76 + i * 7919}" for i in range(symbols)]  # Polymarket-sized asset ids
    rng = random.Random(5)
    for sec in range(seconds):
        for q in range(4):
            ev = t0 + sec * S + q * S // 4
            for asset in assets:
                for k in range(trades_per_s // 4 + (q < trades_per_s % 4)):
                    side: Literal["buy", "sell"] = "buy" if rng.random() < 0.5 else "sell"
                    alerts.on_message(Trade(asset=asset, price=0.5, size=1.0 + k, side=side, event_ns=ev), ev)
                if q == 0:
                    alerts.on_message(
                        Price(symbol=f"pm.{asset}", price=0.4 + rng.random() / 5, event_ns=ev), ev
                    )
            alerts.flush(ev)
        now = t0 + (sec + 1) * S
        alerts.boundary(alerts.close_point(now))
        alerts.dispatcher.queue.clear()  # no workers: what the jobs hold is not per-symbol state
    ev = t0 + seconds * S
    for asset in assets:
        for i in range(zones_per_bar):
            zone = Zone(
                id=f"M1_2023-11-14T22:13:00_{i:08x}",
                symbol=f"pm.{asset}",
                timeframe="M1",
                kind="fvg_bullish",
                top=0.6,
                bottom=0.5,
                strength=1.0,
                created_ns=ev,
                expires_ns=ev + 3600 * S,
            )
            alerts.on_message(ZoneTouched(zone=zone, price=0.55, event_ns=ev), ev)
    alerts.flush(ev)
    for asset in assets[:1]:
        alerts.flow.metrics(f"pm.{asset}", 60.0, ev)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    alerts.store.close()
    return used


def bench_memory() -> dict[str, dict[str, Any]]:
    """Bytes of state per symbol with every order-flow buffer full (tick buffer, delta and CVD
    histories: 410 s at 3 trades/s), the persisted trades' window, the open bar with one zone
    touch: the slope between 50 and 150 symbols (what the service grows by per symbol). And what
    each further zone event held in an open bar costs (up to alerts.max_zone_events a bar)."""
    with tempfile.TemporaryDirectory() as d:
        small = _state_bytes(50, 410, 3, 1, f"{d}/a.sqlite3")
        large = _state_bytes(150, 410, 3, 1, f"{d}/b.sqlite3")
        one = _state_bytes(100, 5, 3, 1, f"{d}/c.sqlite3")
        many = _state_bytes(100, 5, 3, 33, f"{d}/d.sqlite3")
    return {
        "alerts.bytes_per_symbol": {"value": round((large - small) / 100), "unit": "B", "goal": "<= 30000"},
        "alerts.bytes_per_zone_event": {"value": round((many - one) / (100 * 32)), "unit": "B", "goal": ""},
    }


def run() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    out.update(bench_bucket())
    out.update(bench_trades())
    out.update(bench_jobs())
    out.update(bench_memory())
    return out


# -- the real service under load: ``python -m bench.alerts load`` ---------------------------------

# Started in place of ``python -m services.alerts``: with tracemalloc on, SIGUSR1 dumps a snapshot
# to the file named by the next SIGUSR1's path file (LOAD_SNAP), so two snapshots of the live
# process can be compared (compare_to, grouped by traceback).
_TRACED_ENTRY = """
import os, signal, runpy, sys, tracemalloc
tracemalloc.start(int(os.environ.get("LOAD_FRAMES", "12")))
def _dump(*_):
    path = open(os.environ["LOAD_SNAP"]).read().strip()
    tracemalloc.take_snapshot().dump(path)
    open(path + ".done", "w").close()
signal.signal(signal.SIGUSR1, _dump)
sys.argv = ["services.alerts", *sys.argv[1:]]
runpy.run_module("services.alerts", run_name="__main__")
"""

LOAD_STRATEGIES: list[dict[str, Any]] = [
    # deploy/demo.yaml's (what the soak runs), plus the pipeline bench's event-triggered touch
    {"id": "zone_touch", "kind": "zone_event", "bucket": "5s", "universe": ["pm.*"], "frequency": "once_per_bar"},
    {"id": "first_zone", "kind": "zone_event", "bucket": "2s", "universe": ["pm.*"],
     "params": {"events": ["created"]}, "frequency": "once"},
    {"id": "sweep", "kind": "zone_event", "bucket": "5s", "universe": ["pm.*"],
     "params": {"kinds": ["bsl", "ssl"]}, "frequency": "every", "repeat_interval": "30s"},
    {"id": "touch", "kind": "zone_event", "trigger": "event", "universe": ["pm.*"],
     "params": {"events": ["touched"], "kinds": ["probe"]}},
]  # fmt: skip
FLOW_STRATEGY = {"id": "flow", "kind": "order_flow", "bucket": "1m", "universe": ["pm.*"],
                 "params": {"metric": "delta", "op": ">", "value": 1e9}}  # fmt: skip


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def _load(args: Any) -> None:
    import os
    import signal
    import tracemalloc

    import yaml

    from shared.bus import Publisher, Subscriber
    from shared.constants import md_topic, px_topic, zone_topic
    from shared.messages import AlertFired, Trade, Zone, ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched

    tmp = Path(tempfile.mkdtemp(prefix="poolwire-alerts-load-"))
    ep = {k: f"tcp://127.0.0.1:{free_port()}" for k in ("feed", "pub", "jobs", "results")}
    strategies = [LOAD_STRATEGIES[-1]] if args.event_only else LOAD_STRATEGIES
    strategies = strategies + ([FLOW_STRATEGY] if args.flow else [])
    cfg = {
        "common": {"data_dir": str(tmp / "data"), "log_level": "WARNING"},
        "alerts": {"sub": [ep["feed"]], "pub": ep["pub"], "jobs": ep["jobs"], "results": ep["results"],
                   "metrics_port": free_port(), "workers": 2, "flush_every": "100ms",
                   "strategies": strategies},
    }  # fmt: skip
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    snap_name = tmp / "snap-path"
    root = Path(args.root or ROOT)  # another tree (git archive) to compare with, side by side
    env = {**os.environ, "PYTHONPATH": str(root), "LOAD_SNAP": str(snap_name)}
    cmd = ["-c", _TRACED_ENTRY] if args.trace else ["-m", "services.alerts"]
    err = (tmp / "alerts.err").open("w")
    proc = subprocess.Popen(
        [sys.executable, *cmd, "--config", str(tmp / "cfg.yaml")], cwd=root, env=env, stderr=err
    )
    pub = Publisher(ep["feed"], service="feed", hwm=1_000_000).start()
    alerts = Subscriber(ep["pub"], ["alert.touch."])
    sent: dict[int, int] = {}  # probe event_ns -> send time
    lat_ms: list[float] = []

    async def collect() -> None:
        while True:
            for _, msg in await alerts.recv_batch():
                if isinstance(msg, AlertFired) and msg.event_ns in sent:
                    lat_ms.append((msg.publish_ns - sent.pop(msg.event_ns)) / 1e6)

    rng = random.Random(1)
    assets = [str(10**20 + i) for i in range(args.symbols)]
    zones: dict[str, Zone] = {}
    n_zone = 0
    try:
        await alerts.wait_for_publisher("alerts", timeout=60)
        # the probes' topic: read in every configuration (alerts reads only what its strategies do)
        await pub.wait_for_subscriber(zone_topic("touched", "H1", "pm."), timeout=30)
        task = asyncio.get_running_loop().create_task(collect())
        t0 = time.monotonic()
        per_tick = args.rate / 1000  # 1 ms ticks
        due = 0.0
        samples: list[tuple[float, float]] = []
        snaps = [float(x) for x in args.snapshots.split(",")] if args.trace else []
        next_sample = 0.0
        probe_every = 1 / args.probes
        next_probe = 1.0
        while (t := time.monotonic() - t0) < args.seconds:
            due += per_tick
            while due >= 1:
                due -= 1
                now = time.time_ns()
                asset = rng.choice(assets)
                r = rng.random()
                if r >= args.zone_share + 0.3:
                    pub.publish(
                        px_topic(f"pm.{asset}"), Price(symbol=f"pm.{asset}", price=rng.random(), event_ns=now)
                    )
                elif r >= args.zone_share:
                    side: Literal["buy", "sell"] = "buy" if r < args.zone_share + 0.15 else "sell"
                    trade = Trade(asset=asset, price=0.5, size=rng.random() * 10, side=side, event_ns=now)
                    pub.publish(md_topic("trade", asset), trade)
                else:
                    symbol = f"pm.{asset}"
                    z = zones.get(symbol)
                    r = rng.random()
                    if z is None:
                        n_zone += 1
                        z = zones[symbol] = Zone(id=f"M1_{n_zone}", symbol=symbol, timeframe="M1",
                                                 kind=rng.choice(("bsl", "ssl", "fvg_bullish")), top=0.6,
                                                 bottom=0.4, strength=1.0, created_ns=now, expires_ns=now + 600 * S)  # fmt: skip
                        pub.publish(zone_topic("created", "M1", symbol), ZoneCreated(zone=z, event_ns=now))
                    elif r < 0.8:
                        touched = ZoneTouched(zone=z, price=0.5, event_ns=now)
                        pub.publish(zone_topic("touched", "M1", symbol), touched)
                    elif r < 0.9:
                        del zones[symbol]
                        pub.publish(
                            zone_topic("expired", "M1", symbol),
                            ZoneExpired(zone=z, reason="ttl", event_ns=now),
                        )
                    else:
                        del zones[symbol]
                        pub.publish(zone_topic("removed", "M1", symbol), ZoneRemoved(zone=z, event_ns=now))
            if t >= next_probe:
                next_probe += probe_every
                now = time.time_ns()
                symbol = f"pm.{rng.choice(assets)}"
                z = Zone(id="probe", symbol=symbol, timeframe="H1", kind="probe", top=0.6, bottom=0.4,
                         strength=1.0, created_ns=now, expires_ns=now + 3600 * S)  # fmt: skip
                pub.publish(zone_topic("touched", "H1", symbol), ZoneTouched(zone=z, price=0.5, event_ns=now))
                pub.flush()
                sent[now] = time.time_ns()
            pub.flush()
            if t >= next_sample:
                next_sample += 10
                samples.append((t, _rss_mb(proc.pid)))
                print(
                    f"  {t:6.0f} s: alerts RSS {samples[-1][1]:.1f} MB, probes {len(lat_ms)}", file=sys.stderr
                )
            if snaps and t >= snaps[0]:
                path = tmp / f"snap-{len(snaps)}.bin"
                snap_name.write_text(str(path))
                proc.send_signal(signal.SIGUSR1)
                snaps.pop(0)
            await asyncio.sleep(max(0.0, t0 + t + 0.001 - time.monotonic()))
        task.cancel()
    finally:
        await pub.close()
        alerts.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        err.close()
    lat_ms.sort()
    if lat_ms:
        q = [lat_ms[min(len(lat_ms) - 1, int(p * len(lat_ms)))] for p in (0.5, 0.99)]
        print(f"touch -> alert (publish to publish): p50 {q[0]:.2f} ms, p99 {q[1]:.2f} ms, max {lat_ms[-1]:.2f} ms, {len(lat_ms)} probes, {len(sent)} lost or late")  # fmt: skip
    half = [x for x in samples if x[0] >= args.seconds / 2]
    if len(half) >= 2:
        slope = slope_per_hour(half)  # least squares, as make soak reports it
        print(f"RSS {samples[-1][1]:.1f} MB at the end; slope over the second half {slope:.1f} MB/hour")
    if args.trace:
        files = sorted(tmp.glob("snap-*.bin"), reverse=True)
        if len(files) >= 2:
            a, b = (tracemalloc.Snapshot.load(str(f)) for f in files[:2])
            print("top growth between the snapshots (by traceback):")
            for stat in b.compare_to(a, "traceback")[: args.top]:
                print(f"{stat.size_diff / 1024:9.1f} kB {stat.count_diff:+8d} blocks")
                for line in stat.traceback.format()[-8:]:
                    print("      " + line)
    print(f"logs and snapshots in {tmp}", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.alerts")
    sub = parser.add_subparsers(dest="cmd")
    load = sub.add_parser("load", help="the real alerts process fed px/trade/zone messages")
    load.add_argument("--symbols", type=int, default=2000)
    load.add_argument("--rate", type=float, default=13_000, help="messages/s")
    load.add_argument("--seconds", type=float, default=180)
    load.add_argument("--probes", type=float, default=100, help="timed zone touches/s")
    load.add_argument("--flow", action="store_true", help="add a bucketed order_flow strategy")
    load.add_argument(
        "--event-only",
        action="store_true",
        help="only the event-triggered touch (the pipeline bench's config)",
    )
    load.add_argument(
        "--zone-share",
        type=float,
        default=0.02,
        help="of the messages: zone events (trades 0.3, the rest prices)",
    )
    load.add_argument("--root", help="run the service from this tree (a git archive of another commit)")
    load.add_argument("--trace", action="store_true", help="tracemalloc snapshots (slows the service)")
    load.add_argument("--snapshots", default="60,170", help="seconds at which to take them")
    load.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    if args.cmd == "load":
        import uvloop

        uvloop.run(_load(args))
        return
    for key, fig in run().items():
        print(key, fig)


if __name__ == "__main__":
    main()
