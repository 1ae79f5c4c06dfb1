"""ingest benchmarks: end to end through processes, the router in-process, a 400-asset subscribe,
20 000 assets over 50 connections in one process.

- ``msgs_per_s`` (end to end): three processes besides this one (``bench/_ingest_sim.py``): the
  exchange replays pre-framed real-protocol frames (MarketSim's price_changes with the server's
  hashes, trades) flat out over a real WebSocket; ``python -m services.ingest`` (hash checks on, its
  default config but for the endpoints) routes them; a consumer process decodes every message on
  ingest's PUB and counts holes in ``seq``. The figure is the consumer's updates (BookChange + Trade)
  over the time from its first update to its last; ``e2e_gaps`` the holes (messages lost);
  ``e2e_cpu_pct`` ingest's CPU over the run (``_other_threads``: beside its event loop, mostly
  ZeroMQ's I/O thread). 400 assets on one connection, ~215 k updates.
  ``BENCH_INGEST_PYSPY=path`` records py-spy's collapsed stacks of ingest during the run.

- ``router_msgs_per_s`` / ``router_frames_per_s`` / ``published_per_s``: the Router in this process
  over recorded simulator frames (400 assets), publishing on a real PUB socket; best of 3 passes.
  An update is a ``price_change`` entry or a trade (~1.9 a frame), a frame one WebSocket message.
  ``router_msgs_per_cpu_s``, ``hash_check_cpu_us`` and ``e2e_cpu_us_per_update`` are on CPU time
  (what other jobs take from the wall clock is not in them): read these on a shared machine.
- ``subscribe_400_ms``: the pool against the simulator (in this process, no market events): from
  ``ConnectionPool.force_subscribe(400 assets)``, which opens a ``Connection`` (connect, handshake,
  subscribe frame), to the 400th initial book routed; median of 7. ``subscribe_400_live_ms``: the
  same from ``Connection.subscribe(400 assets)`` on a connection already live.
- 20 000 assets: ``python -m services.ingest`` as its own process, against the simulator in
  another (``bench/_ingest_sim.py``, niced). The asset ids come from the simulator's Gamma; ``ForceSubscribe``
  commands of 1 000 (20 000 in all) make the pool open 50 connections of 400. ``bytes_per_asset`` is
  the ingest process's RSS growth from idle to every book routed, / 20 000 (the allocator keeps
  what the transient frames used: what the process really holds). ``cpu_pct_at_5k_updates_s`` is
  its CPU time (utime + stime, /proc) over 4 s while the simulator sends 5 000 updates/s over the
  20 000 assets (default config: hashes checked), after 1.5 s of warm-up; the rate reached is
  reported beside it.

"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
from aiohttp import web

from bench._ingest_sim import BOOKS, Processes, cpu_s, ingest_metrics, read_line, rss
from services.ingest.book import LocalBook
from services.ingest.connection import Connection
from services.ingest.discovery import discover
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions
from services.simulator.market import MarketSim
from services.simulator.polymarket import PolymarketServer
from shared.bus import Publisher, Pusher
from shared.messages import MAX_IDS, ForceSubscribe
from tests.ports import free_port, tcp_endpoint

SCALE_ASSETS = 20_000  # 50 connections of 400
REALISTIC_RATE = 5_000.0  # updates/s over 20 000 assets: a busy day on Polymarket
WARMUP_S = 1.5
CPU_WINDOW_S = 4.0
E2E_ASSETS = 400  # one connection
E2E_STEPS = 100_000  # ~2.15 updates a step: ~2 s of flow at 100 k/s; made beforehand, ~45 us CPU a step
E2E_SEED = 11

Figures = dict[str, dict[str, Any]]
Rates = tuple[float, float, float, float]


# -- decode + normalize + publish rate ---------------------------------------------------------


def _frames(n_assets: int, steps: int) -> tuple[MarketSim, str, list[str]]:
    sim = MarketSim(n_assets, seed=5)
    dump = json.dumps([a.book_event() for a in sim.assets.values()], separators=(",", ":"))
    frames = []
    for i in range(steps):
        for ev in sim.step(1_700_000_000_000 + i):
            frames.append(json.dumps(ev, separators=(",", ":")))
    return sim, dump, frames


def router_rig(sim: MarketSim, dump: str, verify: bool) -> tuple[Publisher, Router]:
    """A router publishing on a real PUB, following ``sim``'s assets, their books routed."""
    pub = Publisher(tcp_endpoint(), service="ingest", heartbeat_interval=0)
    router = Router(pub.publish, verify_hashes=verify)
    router.assign(sim.assets, "c1")
    for m in sim.markets:  # what Gamma discovery gives: the fields the WebSocket books lack
        router.set_params([a.asset_id for a in m.assets], m.min_order_size, m.neg_risk)
    router.handle_frame("c1", dump)
    return pub, router


def route(pub: Publisher, router: Router, frames: list[str]) -> None:
    """Route ``frames``, flushing every 64 and at the end (the service flushes once a loop turn)."""
    handle = router.handle_frame
    for i, text in enumerate(frames):
        handle("c1", text)
        if i % 64 == 0:
            pub.flush()
    pub.flush()


async def _rate(verify: bool, frames: list[str], sim: MarketSim, dump: str) -> Rates:
    """Best of 3 passes: (updates/s, frames/s, messages published/s, updates per CPU second)."""
    pub, router = router_rig(sim, dump, verify)
    best = (0.0, 0.0, 0.0, 0.0)
    for _ in range(3):
        updates0, frames0, pub0 = router.stats.updates, router.stats.frames, router.stats.published
        t0, c0 = time.perf_counter(), time.process_time()
        route(pub, router, frames)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        updates = router.stats.updates - updates0
        rate = updates / dt
        if rate > best[0]:
            best = (rate, (router.stats.frames - frames0) / dt, (router.stats.published - pub0) / dt, best[3])
        best = (*best[:3], max(best[3], updates / cpu))
    await pub.close()
    if verify and router.hashes.stats.unverifiable:
        raise RuntimeError(f"hash checks did not run: {router.hashes.stats}")
    return best


def _hash_check_us(n: int = 200_000) -> tuple[float, float]:
    """One verification of a 20+20-level book after a change (the local book's cached levels):
    best of 3, (wall us, CPU us)."""
    book = LocalBook()
    book.reset(
        [(f"0.{i:02d}", f"{100 + i}.5") for i in range(1, 21)], [(f"0.{i}", "77") for i in range(50, 70)]
    )
    book.min_order_size, book.tick_size, book.last_trade_price = "5", "0.01", "0.45"
    market, asset = "0x" + "ab" * 32, "7" * 77
    best, best_cpu = float("inf"), float("inf")
    for _ in range(3):
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(n):
            book.apply(True, "0.05", "12" if i & 1 else "13")  # one level resized, as most changes do
            book.hash(market, asset, "1757908892351")
        best = min(best, (time.perf_counter() - t0) / n * 1e6)
        best_cpu = min(best_cpu, (time.process_time() - c0) / n * 1e6)
    return best, best_cpu


# -- a 400-asset subscribe through the pool's own connection code ------------------------------


class _Rig:
    """The subscription table, router and pool wired as the service wires them, counting routed books."""

    def __init__(self, url: str, session: aiohttp.ClientSession, pub: Publisher, target: int) -> None:
        self.subscriptions = Subscriptions()
        self.router = Router(pub.publish)
        self.target = target
        self.done = asyncio.Event()
        self.done_at = 0.0
        self.pool = ConnectionPool(self.subscriptions, self.router, Limits(), self.connection)
        self.url = url
        self.session = session

    def on_frame(self, conn_id: str, data: str | bytes) -> int:
        n = self.router.handle_frame(conn_id, data)
        if not self.done.is_set() and self.router.stats.by_type.get("book", 0) >= self.target:
            self.done_at = time.perf_counter()
            self.done.set()
        return n

    def connection(self, conn_id: str, provider: Callable[[], list[str]] | None = None) -> Connection:
        subscriptions = self.subscriptions
        return Connection(
            conn_id,
            self.url,
            self.session,
            provider or (lambda: subscriptions.live_assets(conn_id)),
            self.on_frame,
            on_connected=self.pool.on_connected,
        )


async def _subscribe_400(rounds: int = 7) -> tuple[float, float]:
    """Median ms: (a new connection opened by the pool, a subscribe on a live connection)."""
    sim = MarketSim(402, seed=9)
    server = PolymarketServer(sim, events_per_s=0)
    runner = web.AppRunner(server.app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/ws/market"
    *batch, warm = list(sim.assets)[:401]
    opened, live = [], []
    pub = Publisher(tcp_endpoint(), service="ingest", heartbeat_interval=0)
    async with aiohttp.ClientSession() as session:
        for _ in range(rounds):
            rig = _Rig(url, session, pub, len(batch))
            t0 = time.perf_counter()
            await rig.pool.force_subscribe(batch)
            await asyncio.wait_for(rig.done.wait(), 10)
            opened.append(rig.done_at - t0)
            await rig.pool.stop()

            rig = _Rig(url, session, pub, len(batch) + 1)
            rig.router.assign([warm, *batch], "c1")
            conn = rig.connection("c1", lambda: [warm])
            conn.start()
            await asyncio.wait_for(conn.delivered.wait(), 10)
            t0 = time.perf_counter()
            assert await conn.subscribe(batch) == len(batch)
            await asyncio.wait_for(rig.done.wait(), 10)
            live.append(rig.done_at - t0)
            await conn.stop()
    await pub.close()
    await runner.cleanup()
    return statistics.median(opened) * 1000, statistics.median(live) * 1000


# -- 20 000 assets over 50 connections: the service as a process -------------------------------


class _Scale(Processes):
    async def rate(self, http: aiohttp.ClientSession, updates_per_s: float) -> None:
        async with http.post(f"{self.http}/bench/rate", json={"updates_per_s": updates_per_s}) as r:
            r.raise_for_status()

    async def state(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.http}/bench/state") as r:
            return await r.json()  # type: ignore[no-any-return]

    async def run(self) -> Figures:
        sim = self.spawn("simulator", "bench._ingest_sim", str(self.ws_port), str(self.http_port), str(SCALE_ASSETS), "3")  # fmt: skip
        assert sim.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 60)
        if line.strip() != b"ready":
            raise RuntimeError(f"the simulator did not start: {self.errors('simulator')}")
        async with aiohttp.ClientSession() as http:
            found = await discover(http, self.http, limit=1000)
            ids = [a for _, tokens in found.open for a in tokens]
            assert len(ids) == SCALE_ASSETS, len(ids)
            # the assets come in ForceSubscribes, after the idle RSS is read; not from discovery: no cap
            cfg = self.config(gamma_url="", force_unknown_per_minute=SCALE_ASSETS)
            ingest = self.spawn("ingest", "services.ingest", "--config", str(cfg))
            await self.wait_metrics(http, ingest, lambda m: True, 30)
            await asyncio.sleep(1.0)  # settled: imports done, sockets bound, idle
            rss0 = rss(ingest.pid)

            pusher = Pusher(self.pull, sender="bench")
            t0 = time.perf_counter()
            for i in range(0, len(ids), MAX_IDS):  # a command carries at most MAX_IDS ids
                await pusher.send(ForceSubscribe(asset_ids=ids[i : i + MAX_IDS]), timeout=10)
            await self.wait_metrics(http, ingest, lambda m: m.get(BOOKS, 0) >= SCALE_ASSETS, 60)
            subscribed_s = time.perf_counter() - t0
            pusher.close()
            state = await self.state(http)
            # forced in commands of MAX_IDS, each placed on its own connections: 400s and some 200s
            if max(state["connections"]) > 400 or state["subscribed"] != SCALE_ASSETS:
                raise RuntimeError(f"expected 20 000 assets on connections of <= 400: {state}")
            await asyncio.sleep(0.5)
            rss1 = rss(ingest.pid)

            await self.rate(http, REALISTIC_RATE)
            await asyncio.sleep(WARMUP_S)
            s0, c0, w0 = await self.state(http), cpu_s(ingest.pid), time.perf_counter()
            await asyncio.sleep(CPU_WINDOW_S)
            s1, c1, w1 = await self.state(http), cpu_s(ingest.pid), time.perf_counter()
            await self.rate(http, 0)
            m = await ingest_metrics(http, self.metrics_port)
            if m.get("poolwire_ingest_reconnects_total", 0) or m.get(
                "poolwire_ingest_hash_mismatches_total", 0
            ):
                raise RuntimeError(f"ingest reconnected or saw hash mismatches: {m}")
        dt = w1 - w0
        return {
            "ingest.bytes_per_asset": {
                "value": (rss1 - rss0) / SCALE_ASSETS,
                "unit": "B (RSS)",
                "goal": "<= 8192",
            },
            "ingest.cpu_pct_at_5k_updates_s": {
                "value": 100.0 * (c1 - c0) / dt,
                "unit": "% of core",
                "goal": "<= 50",
            },
            "ingest.cpu_window_updates_per_s": {
                "value": (s1["updates"] - s0["updates"]) / dt,
                "unit": "updates/s",
                "goal": ">= 4500",
            },
            "ingest.subscribe_20k_s": {"value": subscribed_s, "unit": "s", "goal": ""},
        }


async def _end_to_end(rig: Processes) -> Figures:
    """Replay -> WebSocket -> ingest process -> PUB -> a consumer process decoding everything."""
    replay = rig.spawn("replay", "bench._ingest_sim", "replay", str(rig.ws_port), str(E2E_ASSETS), str(E2E_STEPS), str(E2E_SEED))  # fmt: skip
    ready = (await read_line(replay, 300)).split()
    if not ready or ready[0] != "ready":
        raise RuntimeError(f"the replay did not start: {rig.errors('replay')}")
    updates = int(ready[2])
    pub = tcp_endpoint()
    counter = rig.spawn("counter", "bench._ingest_sim", "count", pub, str(updates))
    ids = list(MarketSim(E2E_ASSETS, seed=E2E_SEED).assets)  # the replay's assets (same seed)
    cfg = rig.config(heartbeat_s=0.2, pub=pub, assets=ids, gamma_url="", rest_url="", custom_features=False)
    ingest = rig.spawn("ingest", "services.ingest", "--config", str(cfg))
    if await read_line(counter, 30) != "live":
        raise RuntimeError(f"the consumer heard nothing: {rig.errors('counter')} {rig.errors('ingest')}")
    async with aiohttp.ClientSession() as http:
        await rig.wait_metrics(http, ingest, lambda m: m.get(BOOKS, 0) >= E2E_ASSETS, 30)
        assert replay.stdin is not None
        profile = os.environ.get("BENCH_INGEST_PYSPY")  # a path: py-spy's collapsed stacks of ingest
        spy = None
        if profile:
            spy = subprocess.Popen(["py-spy", "record", "-r", "250", "-f", "raw", "-o", profile, "--pid", str(ingest.pid)])  # fmt: skip
            await asyncio.sleep(1.0)
        c0, m0 = cpu_s(ingest.pid), cpu_s(ingest.pid, ingest.pid)  # the process, its main thread
        replay.stdin.write(b"go\n")
        replay.stdin.flush()
        result = json.loads(await read_line(counter, 600))  # ends 5 s after the last message
        sent = (await read_line(replay, 30)).split()
        c1, m1 = cpu_s(ingest.pid), cpu_s(ingest.pid, ingest.pid)
        m = await ingest_metrics(http, rig.metrics_port)
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            await asyncio.to_thread(spy.wait)
    if sent[0] != "sent" or int(sent[2]) != updates:
        raise RuntimeError(f"the replay sent {sent}, expected {updates} updates")
    for bad in ("hash_mismatches", "hash_unverifiable", "hash_book_mismatches", "reconnects", "decode_errors"):  # fmt: skip
        if m.get(f"poolwire_ingest_{bad}_total", 0):
            raise RuntimeError(f"ingest counted {bad}: {m}")
    if not m.get("poolwire_ingest_hash_checks_total", 0):
        raise RuntimeError("ingest checked no hash")
    lost = updates - result["updates"]
    cpu_us = 1e6 * (c1 - c0) / max(result["updates"], 1)  # every thread of ingest, per update
    return {
        "ingest.msgs_per_s": {
            "value": result["updates"] / result["seconds"],
            "unit": "updates/s (end to end)",
            "goal": ">= 100000",
        },
        "ingest.e2e_gaps": {"value": result["gaps"], "unit": "holes in seq", "goal": "<= 0"},
        "ingest.e2e_lost_updates": {"value": lost, "unit": "updates", "goal": "<= 0"},
        "ingest.e2e_sender_updates_per_s": {
            "value": updates / float(sent[3]),
            "unit": "updates/s (written to the socket)",
            "goal": "",
        },
        "ingest.e2e_cpu_pct": {
            "value": 100.0 * (c1 - c0) / max(result["seconds"], 1e-9),
            "unit": "% of core (ingest)",
            "goal": "",
        },
        "ingest.e2e_cpu_us_per_update": {"value": cpu_us, "unit": "us CPU (ingest)", "goal": ""},
        "ingest.e2e_cpu_pct_other_threads": {  # ZeroMQ's I/O thread, Prometheus' server
            "value": 100.0 * ((c1 - c0) - (m1 - m0)) / max(result["seconds"], 1e-9),
            "unit": "% of core (ingest, not its event loop)",
            "goal": "",
        },
    }


async def _e2e() -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-e2e-") as tmp:
        rig = Processes(Path(tmp))
        try:
            return await _end_to_end(rig)
        finally:
            await asyncio.to_thread(rig.stop_all)


async def _scale() -> Figures:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        scale = _Scale(Path(tmp))
        try:
            return await scale.run()
        finally:
            await asyncio.to_thread(scale.stop_all)


def router_rate() -> tuple[float, float]:
    """The router's updates/s and updates per CPU second, hash checks on, in this process."""

    async def measure() -> Rates:
        sim, dump, frames = _frames(400, 40_000)
        return await _rate(True, frames, sim, dump)

    rate, _frames_s, _pub, cpu = uvloop.run(measure())
    return rate, cpu


def compiled_speedup(rate: float, cpu: float) -> Figures:
    """The router's rates on the pure modules (a process with POOLWIRE_PURE set), as a ratio."""
    import services.ingest.router as core
    from shared import compiled

    if not compiled.is_compiled(core):
        return {"ingest.compiled_speedup": {"value": None, "status": compiled.status("services.ingest")}}
    pure_rate, pure_cpu = compiled.pure_result("bench.ingest:router_rate")
    return {
        "ingest.compiled_speedup": {
            "value": rate / pure_rate,
            "unit": "x",
            "what": "router_msgs_per_s compiled / pure (shared/compiled.py)",
            "pure_msgs_per_s": pure_rate,
            "pure_msgs_per_cpu_s": pure_cpu,
            "cpu_x": cpu / pure_cpu,
        }
    }


async def _in_process() -> tuple[Rates, Rates, tuple[float, float]]:
    sim, dump, frames = _frames(400, 40_000)
    with_hash, no_hash = await _rate(True, frames, sim, dump), await _rate(False, frames, sim, dump)
    del sim, dump, frames
    return with_hash, no_hash, await _subscribe_400()


def run() -> Figures:
    hashed, no_hash, (sub_ms, sub_live_ms) = uvloop.run(_in_process())
    (rate_h, frames_h, _pub_h, cpu_h), (rate_n, frames_n, pub_n, cpu_n) = hashed, no_hash
    hash_us, hash_cpu_us = _hash_check_us()
    scale = uvloop.run(_scale())
    e2e = uvloop.run(_e2e())
    return {
        **e2e,
        **compiled_speedup(rate_h, cpu_h),
        "ingest.router_msgs_per_s": {"value": rate_h, "unit": "updates/s", "goal": ">= 150000"},
        "ingest.router_msgs_per_cpu_s": {"value": cpu_h, "unit": "updates/CPU s", "goal": ""},
        "ingest.router_frames_per_s": {"value": frames_h, "unit": "frames/s", "goal": ""},
        "ingest.router_msgs_per_s_no_hash": {"value": rate_n, "unit": "updates/s", "goal": ""},
        "ingest.router_msgs_per_cpu_s_no_hash": {"value": cpu_n, "unit": "updates/CPU s", "goal": ""},
        "ingest.router_frames_per_s_no_hash": {"value": frames_n, "unit": "frames/s", "goal": ""},
        "ingest.hash_check_us": {"value": hash_us, "unit": "us", "goal": "<= 3"},
        "ingest.hash_check_cpu_us": {"value": hash_cpu_us, "unit": "us (CPU)", "goal": ""},
        "ingest.published_per_s": {"value": pub_n, "unit": "msgs/s", "goal": ""},
        "ingest.subscribe_400_ms": {"value": sub_ms, "unit": "ms", "goal": "<= 100"},
        "ingest.subscribe_400_live_ms": {"value": sub_live_ms, "unit": "ms", "goal": "<= 100"},
        **scale,
    }
