"""pipeline: a price tick into ingest -> alert out, through the real processes, against the simulator.

What runs: the simulator's Polymarket + Gamma servers (``bench/_pipeline_sim.py``, a process of
its own) and ``python -m services.ingest``, ``services.registry`` and ``services.alerts`` with the
default settings that matter (book hashes checked, zones stored in SQLite, detectors on, ingest's
loop paced at 0.5 ms: services/ingest/README.md, "Pacing the loop"), talking
over TCP on 127.0.0.1, like ``make run``. The background load is the simulator's moving books over
2 000 assets (5 WebSocket connections); ``RATE`` counts market updates (price_change entries and
trades), as ingest does. The simulator stands for the exchange, which runs elsewhere: it is niced
(+10) so that it yields the CPU to the pipeline, and it still takes about half a core at 10 k/s.

The measured path is the longest one a price takes: a probe tick (a ``best_bid_ask`` frame, timed
by the simulator just before it writes it) moves a probe asset's mid into a zone that an outside
detector put in the registry; ingest publishes ``px.pm.<asset>``; registry sees the path enter
the zone and publishes ``zone.touched``; alerts runs an event-triggered ``zone_event`` strategy
and publishes ``alert.touch.pm.<asset>``; this process receives it. Latency = receive time minus
send time (one host, one clock). The stage stamps (each publisher's ``publish_ns``) split it
into hops.

Why event-triggered: a bucketed strategy runs at bucket boundaries, so its latency is bounded
below by the bucket (half of it on average) plus a worker round trip: a 5 ms p99 would need
buckets under ~3 ms, hundreds of store claims a second. ``trigger: event`` (services/alerts
README) checks price_cross and zone_event on each message in the service instead.

Figures: p50/p99 at 10 k updates/s with 100 probes/s, per-hop p50/p99, CPU per process, lost
alerts; ``cpu_us_per_update``: the CPU time (utime + stime from /proc/<pid>/stat, every thread) of
ingest, registry and alerts over the 10 k/s window, divided by the updates the simulator sent in it
(and per service, ``cpu_us_per_update_<service>``); ``cpu_ratio_to_simulator``: that CPU over the
simulator's in the same window, which holds still when the host's speed moves (per service,
``cpu_ratio_to_simulator_<service>``: what an A/B of one service compares); ``sleeps_<process>_per_s``:
its voluntary context switches (every thread), each a wait something had to end. Then a 1 k/s step and a ramp (4 s per step) for
the highest rate sustained with no gaps, no lost alert, the simulator keeping its rate and p99 under
100 ms (a queue that grows shows there first). ``scaling_p99_ms``: the p99 at 1 k, 10 k and 30 k
updates/s offered (the 30 k step's achieved rate beside it: the niced simulator tops out near 25 k).
``*_pinned``: then the 10 k/s window again (6 s), every thread of each process pinned by ``taskset``
(the simulator and ingest on core 0; registry, alerts and this collector on core 1): what cores of
their own give. ``*_cohosted``: then the 10 k/s window once more in a fresh pipeline whose three
services share one process (``python -m services ingest registry alerts``: README, "Fewer
processes"), reading each other in-process; ``*_cohosted_pinned``: that one pinned (the simulator
and this collector on core 0, the pipeline's one process on core 1).

``BENCH_PIPELINE_PYSPY=dir`` records py-spy's raw stacks of each service (Python frames: with
``--native`` py-spy stalled the processes until alerts were lost) over the 10 k/s window into ``dir/<service>.txt``, and each thread's CPU at its start and end into
``dir/threads-*.txt``. ``BENCH_PIPELINE_PERF=dir`` records ``perf`` with DWARF call graphs instead
(``dir/<service>.perf``, native frames: the kernel, libzmq, the compiled cores; ``perf report -i``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml

from bench._pipeline_stats import (
    DRIVER,
    Seen,
    Window,
    analyse,
    cohosted_figures,
    cpu_s,
    figures,
    pinned_figures,
    report,
    sleeps_of,
    threads_cpu,
)
from shared.bus import Pusher, Subscriber
from shared.messages import AlertFired, DetectorEvent, Price, ZoneCreated, ZoneTouched
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
RATE = 10_000  # market updates/s into ingest
PROBES_PER_S = 100
N_ASSETS = 2000
N_PROBES = 40
WARMUP_S = 2.0
WINDOW_S = 10.0
LOW_RATE = 1_000  # the scaling curve's low end, measured like a ramp step
RAMP = (15_000, 20_000, 25_000, 30_000, 40_000)
STEP_SETTLE_S = 1.5
STEP_S = 4.0
# Each process on a core of its own is more than 2 cores hold: the exchange and ingest share one,
# registry, alerts and this collector the other. After the ramp, the running processes are pinned
# (every thread) and the 10 k/s window measured again, shorter: it is one figure.
PINS = {"simulator": 0, "ingest": 0, "registry": 1, "alerts": 1, "collector": 1}
ALL_CORES = os.sched_getaffinity(0)
PINNED_SETTLE_S = 2.0  # after the 40 k/s step: its queues drain
PINNED_WINDOW_S = 6.0
SERVICES = ("ingest", "registry", "alerts")
COHOSTED = "services"  # the process of ``python -m services ingest registry alerts``
PINS_COHOSTED = {"simulator": 0, "collector": 0, COHOSTED: 1}  # the pipeline with a core of its own


def _ep() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


class Pipeline:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ws_port, self.http_port = free_port(), free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.metrics = {name: free_port() for name in SERVICES}
        self.ingest = {"pub": _ep(), "pull": _ep()}
        self.registry = {"pub": _ep(), "pull": _ep(), "snapshot": _ep()}
        self.alerts = {"pub": _ep(), "jobs": _ep(), "results": _ep()}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.seen = Seen()

    def config(self, probe_assets: list[str]) -> Path:
        cfg = {
            "common": {
                "data_dir": str(self.tmp / "data"),
                "log_level": "WARNING",
                "heartbeat_interval": "1s",
            },
            "ingest": {
                **self.ingest,
                "metrics_port": self.metrics["ingest"],
                "ws_url": f"ws://127.0.0.1:{self.ws_port}/ws/market",
                "gamma_url": self.http,
                "gamma_page_limit": 500,
                "assets": probe_assets,
                "min_pending": 1,
                "subscribe_interval": "1s",
            },
            "registry": {
                **self.registry,
                "metrics_port": self.metrics["registry"],
                "prices": [self.ingest["pub"]],
            },
            "alerts": {
                **self.alerts,
                "metrics_port": self.metrics["alerts"],
                "sub": [self.ingest["pub"], self.registry["pub"]],
                "workers": 0,
                "strategies": [
                    {
                        "id": "touch",
                        "kind": "zone_event",
                        "trigger": "event",
                        "universe": ["pm.*"],
                        "params": {"events": ["touched"], "kinds": ["bench"]},
                    }
                ],
            },
        }
        path = self.tmp / "poolwire.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWIRE_")}
        env["PYTHONPATH"] = str(ROOT)
        err = (self.tmp / f"{name}.err").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=err
        )
        err.close()
        self.procs[name] = proc
        return proc

    def pin(self, pins: dict[str, int] | None) -> None:
        """Every thread of each process (and of this one, the collector) onto its core; ``None``:
        this process back on every core."""
        cores = {p.pid: str(pins[n]) for n, p in self.procs.items()} if pins else {}
        cores[os.getpid()] = str(pins["collector"]) if pins else ",".join(map(str, sorted(ALL_CORES)))
        for pid, core in cores.items():
            subprocess.run(["taskset", "-a", "-p", "-c", core, str(pid)], check=True, capture_output=True)

    def stop_all(self) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        return codes

    def process(self, service: str) -> str:
        """The name of the process ``service`` runs in."""
        return service if service in self.procs else COHOSTED

    def errors(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")[-2000:]

    # -- the simulator's knobs and the services' metrics ------------------------------------------

    async def sim(self, http: aiohttp.ClientSession, rate: float, probes: float) -> None:
        body = {"updates_per_s": rate, "probes_per_s": probes}
        async with http.post(f"{self.http}/bench/rate", json=body) as r:
            r.raise_for_status()

    async def state(self, http: aiohttp.ClientSession) -> dict[str, Any]:
        async with http.get(f"{self.http}/bench/state") as r:
            return await r.json()  # type: ignore[no-any-return]

    async def counters(self, http: aiohttp.ClientSession) -> dict[str, float]:
        """Gaps seen by registry and alerts; each service's bus flushes, wakeups and messages
        received (sums over its sockets)."""
        out = {"gaps": 0.0}
        for name in SERVICES:
            async with http.get(f"http://127.0.0.1:{self.metrics[name]}/metrics") as r:
                for line in (await r.text()).splitlines():
                    key, _, value = line.rpartition(" ")
                    gaps = key.startswith(("poolwire_bus_gaps_total", "poolwire_bus_messages_missed_total"))
                    if gaps and name != "ingest":
                        out["gaps"] += float(value)
                    for counter in ("flushes", "wakeups", "messages_received"):
                        if key.startswith(f"poolwire_bus_{counter}_total"):
                            out[f"{counter}_{name}"] = out.get(f"{counter}_{name}", 0.0) + float(value)
        return out

    @contextlib.contextmanager
    def profiled(self, out: str | None, seconds: float, perf: bool = False) -> Iterator[None]:
        """py-spy (or ``perf``) on each service for ``seconds`` and each thread's CPU before and
        after, into ``out`` (nothing if None)."""
        if not out:
            yield
            return
        Path(out).mkdir(parents=True, exist_ok=True)
        spy = str(Path(sys.executable).with_name("py-spy"))
        pids = {name: p.pid for name, p in self.procs.items() if name != DRIVER}
        (Path(out) / "threads-start.txt").write_text(threads_cpu(pids))
        spies = [
            subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384",
                              "-o", f"{out}/{name}.perf", "-p", str(pid), "--", "sleep", str(int(seconds))]
                             if perf else
                             [spy, "record", "--threads", "-r", "1000", "-f", "raw",
                              "-d", str(int(seconds)), "-o", f"{out}/{name}.txt", "--pid", str(pid)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for name, pid in pids.items()
        ]  # fmt: skip
        yield
        for proc in spies:
            proc.wait(timeout=60)
        (Path(out) / "threads-end.txt").write_text(threads_cpu(pids))

    def cpu(self) -> dict[str, float]:
        return {name: cpu_s(p.pid) for name, p in self.procs.items()}

    def sleeps(self) -> dict[str, int]:
        return {f"sleeps_{name}": sleeps_of(p.pid) for name, p in self.procs.items()}

    # -- collecting -------------------------------------------------------------------------------

    async def collect_alerts(self, sub: Subscriber) -> None:
        alerts = self.seen.alerts
        while True:
            batch = await sub.recv_batch()
            now = time.time_ns()
            for _, msg in batch:
                if isinstance(msg, AlertFired):
                    alerts.setdefault(msg.symbol, []).append((msg.value, msg.publish_ns, now))

    async def collect_stages(self, px: Subscriber, zones: Subscriber) -> None:
        async def one(sub: Subscriber) -> None:
            while True:
                for _, msg in await sub.recv_batch():
                    if isinstance(msg, Price):
                        self.seen.px.setdefault(msg.symbol, []).append((msg.price, msg.publish_ns))
                    elif isinstance(msg, ZoneTouched):
                        self.seen.touched.setdefault(msg.zone.symbol, []).append((msg.price, msg.publish_ns))

        await asyncio.gather(one(px), one(zones))

    async def window(self, http: aiohttp.ClientSession, rate: int, seconds: float) -> Window:
        s0, k0, c0, t0 = await self.state(http), await self.counters(http), self.cpu(), time.time_ns()
        z0 = self.sleeps()
        await asyncio.sleep(seconds)
        s1, k1, c1, t1 = await self.state(http), await self.counters(http), self.cpu(), time.time_ns()
        z1 = self.sleeps()
        used = {name: c1[name] - c0[name] for name in c0}
        per_s = {k: (k1[k] - k0.get(k, 0.0)) / ((t1 - t0) / 1e9) for k in k1 if k != "gaps"}
        per_s.update({k: (z1[k] - z0[k]) / ((t1 - t0) / 1e9) for k in z1})
        return Window(rate, t0, t1, s1["updates"] - s0["updates"], k1["gaps"] - k0["gaps"], used, per_s)


async def _run(tmp: Path, cohosted: bool = False) -> dict[str, dict[str, Any]]:
    """The whole run: the 10 k/s window, the 1 k/s step, the ramp and the pinned window; with
    ``cohosted``, the three services in one process (``python -m services``) and the 10 k/s window
    only."""
    p = Pipeline(tmp)
    sim = p.spawn("simulator", "bench._pipeline_sim", str(p.ws_port), str(p.http_port), str(N_ASSETS), str(N_PROBES), "1")  # fmt: skip
    assert sim.stdout is not None
    line = await asyncio.wait_for(asyncio.to_thread(sim.stdout.readline), 30)
    if line.strip() != b"ready":
        raise RuntimeError(f"the simulator did not start: {p.errors('simulator')}")
    tasks: list[asyncio.Task[None]] = []
    subs: list[Subscriber] = []
    try:
        async with aiohttp.ClientSession() as http:
            probe_assets = (await p.state(http))["probe_assets"]
            cfg = p.config(probe_assets)
            if cohosted:
                p.spawn(COHOSTED, "services", *SERVICES, "--config", str(cfg))
            else:
                for name in SERVICES:
                    p.spawn(name, f"services.{name}", "--config", str(cfg))
            await p.sim(http, RATE, 0)
            symbols = [f"pm.{a}" for a in probe_assets]
            alerts_sub = Subscriber(p.alerts["pub"], ["alert."])
            px_sub = Subscriber(p.ingest["pub"], [f"px.{s}" for s in symbols])
            zone_sub = Subscriber(p.registry["pub"], ["zone.touched.", "zone.created."])
            subs += [alerts_sub, px_sub, zone_sub]
            for sub, service in ((alerts_sub, "alerts"), (px_sub, "ingest"), (zone_sub, "registry")):
                try:
                    await sub.wait_for_publisher(service, timeout=30)
                except TimeoutError:
                    raise RuntimeError(f"{service} did not start: {p.errors(p.process(service))}") from None
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 60
            while (await p.state(http))["subscribed"] < N_ASSETS + N_PROBES:
                if loop.time() > deadline:
                    raise RuntimeError(f"ingest did not subscribe every asset: {await p.state(http)}")
                await asyncio.sleep(0.2)
            pusher = Pusher(p.registry["pull"], sender="bench")
            now = time.time_ns()
            for symbol in symbols:
                zone = DetectorEvent(
                    detector="bench", symbol=symbol, timeframe="H1", kind="bench", top=0.6, bottom=0.4, created_ns=now
                )  # fmt: skip
                await pusher.send(zone, timeout=10)
            pusher.close()
            created: set[str] = set()
            while len(created) < len(symbols):
                batch = await zone_sub.recv_batch(timeout=20)
                if not batch:
                    raise RuntimeError("the probe zones were not created")
                created |= {m.zone.symbol for _, m in batch if isinstance(m, ZoneCreated)}
            tasks.append(loop.create_task(p.collect_alerts(alerts_sub)))
            tasks.append(loop.create_task(p.collect_stages(px_sub, zone_sub)))

            await p.sim(http, RATE, PROBES_PER_S)
            await asyncio.sleep(WARMUP_S)
            perf = os.environ.get("BENCH_PIPELINE_PERF")
            with p.profiled(perf or os.environ.get("BENCH_PIPELINE_PYSPY"), WINDOW_S, perf=bool(perf)):
                main = await p.window(http, RATE, WINDOW_S)
            steps: list[Window] = []
            for rate in () if cohosted else (LOW_RATE, *RAMP):
                await p.sim(http, rate, PROBES_PER_S)
                await asyncio.sleep(STEP_SETTLE_S)
                steps.append(await p.window(http, rate, STEP_S))
            pinned = None
            pins = PINS_COHOSTED if cohosted else PINS
            if len(ALL_CORES) >= 2 and shutil.which("taskset"):
                try:
                    p.pin(pins)
                    await p.sim(http, RATE, PROBES_PER_S)
                    await asyncio.sleep(PINNED_SETTLE_S)
                    pinned = await p.window(http, RATE, PINNED_WINDOW_S)
                except subprocess.CalledProcessError as exc:  # the other figures stand without it
                    print(f"pipeline: no pinned window: {exc} {exc.stderr!r}", file=sys.stderr)
                finally:
                    p.pin(None)
            await p.sim(http, 0, 0)
            await asyncio.sleep(1.0)  # the last probes' alerts, if they are coming
            probes = (await p.state(http))["probes"]
            sub_gaps = sum(s.stats.gaps for s in subs)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in subs:
            s.close()
        codes = p.stop_all()
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        raise RuntimeError(f"processes did not stop cleanly: {bad}: {[p.errors(n) for n in bad]}")
    for w in (main, *steps, *([pinned] if pinned else [])):
        analyse(w, probes, p.seen)
    if cohosted:
        print("  the three services in one process (python -m services):", file=sys.stderr)
        report(main, [], sub_gaps)
        out = cohosted_figures(main, sub_gaps)
        if pinned is not None:
            print(f"  pinned ({pins}):", file=sys.stderr)
            report(pinned, [], 0)
            out.update(pinned_figures(pinned, pins, "cohosted_pinned"))
        return out
    low, steps = steps[0], steps[1:]
    report(main, [low, *steps], sub_gaps)
    out = figures(main, low, steps, sub_gaps)
    if pinned is not None:
        print(f"  pinned ({PINS}):", file=sys.stderr)
        report(pinned, [], 0)
        out.update(pinned_figures(pinned, PINS))
    return out


def run() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for cohosted in (False, True):
        with tempfile.TemporaryDirectory(prefix="poolwire-pipeline-") as tmp:
            out.update(uvloop.run(_run(Path(tmp), cohosted)))
    return out


if __name__ == "__main__":
    for key, fig in run().items():
        print(f"{key:<40} {fig['value']:>10.3f} {fig['unit']:<10} {fig['goal']}")
