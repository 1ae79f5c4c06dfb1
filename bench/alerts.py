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
    from tests.helpers import python_env, tcp_endpoint

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


if __name__ == "__main__":
    for key, fig in run().items():
        print(key, fig)
