"""The demo pipeline as the end-to-end and recovery tests run it, and the consumers that watch it.

The processes are the lines of ``Procfile.demo`` with ``deploy/demo.yaml``; every port, socket and
data directory is moved by ``POOLWIRE_<SECTION>__<KEY>`` overrides (:class:`Endpoints`), so a test
never collides with a running ``make demo`` or another test. What the tests assert is what a user's
consumer sees on the topics: :class:`Collector` is ``poolwire tap`` on every PUB, :class:`Mirror`
keeps an owner's state the Clone way (snapshot, then updates; again after the owner restarts).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiohttp
import yaml

from shared.bus import PublisherInfo, Subscriber
from shared.exex import SCRAPE_REPLY_DECODER, FrameReader, ScrapeReply, ScrapeRequest, encode_scrape
from shared.messages import (
    AlertFired,
    BlockUpdate,
    BookSnapshot,
    Heartbeat,
    Message,
    PoolState,
    Price,
    Zone,
    ZoneCreated,
    ZoneExpired,
    ZoneRemoved,
    ZoneSnapshotItem,
    ZoneTouched,
)
from shared.snapshot import request_snapshot
from tests.helpers import ROOT, eventually, python_env
from tests.ports import free_port

PROCFILE = ROOT / "Procfile.demo"
DEMO_CONFIG = ROOT / "deploy" / "demo.yaml"
VENV_BIN = Path(sys.executable).parent
S = 1_000_000_000
BUS_SERVICES = ("ingest", "sync", "registry", "alerts")


def procfile() -> dict[str, str]:
    """``name -> command`` of every line of Procfile.demo, in order."""
    out: dict[str, str] = {}
    for line in PROCFILE.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, cmd = line.partition(":")
        out[name.strip()] = cmd.strip()
    return out


def cohosted_procfile(path: Path) -> dict[str, str]:
    """Procfile.demo with its four services on one line, ``python -m services`` (README, "Fewer
    processes"), after the waits of their lines; written to ``path``. Returns ``name -> command``."""
    lines = procfile()
    waits = [lines[name].partition(" && exec ")[0] for name in BUS_SERVICES if " && exec " in lines[name]]
    out = {name: cmd for name, cmd in lines.items() if name not in BUS_SERVICES}
    config = '--config "${POOLWIRE_CONFIG:-deploy/demo.yaml}"'
    out["services"] = " && ".join([*waits, f"exec python -m services {' '.join(BUS_SERVICES)} {config}"])
    path.write_text("".join(f"{name}: {cmd}\n" for name, cmd in out.items()))
    return out


def demo_config() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(DEMO_CONFIG.read_text())
    return data


def demo_pool_keys() -> list[bytes]:
    """The pools deploy/demo.yaml tells sync to follow, as the chain simulator's keys."""
    pools = demo_config()["sync"]["pools"]
    return [bytes.fromhex((p.get("address") or p["pool_id"]).removeprefix("0x")) for p in pools]


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@dataclass
class Endpoints:
    """Every socket, port and path a demo run uses, chosen free for one test run."""

    root: Path
    sim_ws: int
    sim_http: int
    sim_metrics: int
    ingest_pub: str
    ingest_pull: str
    ingest_snapshot: str
    ingest_metrics: int
    sync_pub: str
    sync_pull: str
    sync_snapshot: str
    sync_metrics: int
    registry_pub: str
    registry_pull: str
    registry_snapshot: str
    registry_metrics: int
    alerts_pub: str
    alerts_jobs: str
    alerts_results: str
    alerts_metrics: int
    worker_metrics: int

    @classmethod
    def allocate(cls, root: Path) -> Endpoints:
        p = iter(_free_ports(20))

        def tcp() -> str:
            return f"tcp://127.0.0.1:{next(p)}"

        return cls(
            root=root,
            sim_ws=next(p),
            sim_http=next(p),
            sim_metrics=next(p),
            ingest_pub=tcp(),
            ingest_pull=tcp(),
            ingest_snapshot=tcp(),
            ingest_metrics=next(p),
            sync_pub=tcp(),
            sync_pull=tcp(),
            sync_snapshot=tcp(),
            sync_metrics=next(p),
            registry_pub=tcp(),
            registry_pull=tcp(),
            registry_snapshot=tcp(),
            registry_metrics=next(p),
            alerts_pub=tcp(),
            alerts_jobs=tcp(),
            alerts_results=tcp(),
            alerts_metrics=next(p),
            worker_metrics=next(p),
        )

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def exex_socket(self) -> str:
        return str(self.root / "exex.sock")

    @property
    def scrape_socket(self) -> str:
        return str(self.root / "scrape.sock")

    @property
    def pubs(self) -> list[str]:
        return [self.ingest_pub, self.sync_pub, self.registry_pub, self.alerts_pub]

    @property
    def gamma_url(self) -> str:
        return f"http://127.0.0.1:{self.sim_http}"

    def overrides(self) -> dict[str, str]:
        """The environment that moves the demo onto these endpoints (values are read as YAML)."""
        values: dict[str, object] = {
            "COMMON__DATA_DIR": str(self.data_dir),
            "SIMULATOR__WS_PORT": self.sim_ws,
            "SIMULATOR__HTTP_PORT": self.sim_http,
            "SIMULATOR__METRICS_PORT": self.sim_metrics,
            "INGEST__WS_URL": f"ws://127.0.0.1:{self.sim_ws}/ws/market",
            "INGEST__GAMMA_URL": self.gamma_url,
            "INGEST__REST_URL": self.gamma_url,
            "INGEST__PUB": self.ingest_pub,
            "INGEST__PULL": self.ingest_pull,
            "INGEST__SNAPSHOT": self.ingest_snapshot,
            "INGEST__METRICS_PORT": self.ingest_metrics,
            "SYNC__PUB": self.sync_pub,
            "SYNC__PULL": self.sync_pull,
            "SYNC__SNAPSHOT": self.sync_snapshot,
            "SYNC__METRICS_PORT": self.sync_metrics,
            "SYNC__EXEX_SOCKET": self.exex_socket,
            "SYNC__SCRAPE_SOCKET": self.scrape_socket,
            "REGISTRY__PUB": self.registry_pub,
            "REGISTRY__PULL": self.registry_pull,
            "REGISTRY__SNAPSHOT": self.registry_snapshot,
            "REGISTRY__METRICS_PORT": self.registry_metrics,
            "REGISTRY__PRICES": json.dumps([self.ingest_pub, self.sync_pub]),
            "ALERTS__SUB": json.dumps([self.ingest_pub, self.sync_pub, self.registry_pub]),
            "ALERTS__PUB": self.alerts_pub,
            "ALERTS__JOBS": self.alerts_jobs,
            "ALERTS__RESULTS": self.alerts_results,
            "ALERTS__METRICS_PORT": self.alerts_metrics,
            "ALERTS__WORKER_METRICS_PORT": self.worker_metrics,  # the Procfile's worker line
        }
        return {f"POOLWIRE_{k}": str(v) for k, v in values.items()}

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment (no outside POOLWIRE_ variables) for honcho or one Procfile line."""
        env = python_env({**self.overrides(), **(extra or {})})
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
        return env


# -- processes --------------------------------------------------------------------------------------


class Proc:
    """One Procfile line run by itself (its own process group), restartable; logs to a file."""

    def __init__(self, name: str, cmd: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.cmd = cmd
        self.env = env
        self.log_dir = log_dir
        self.runs = 0
        self.popen: subprocess.Popen[bytes] | None = None
        self._runs: list[subprocess.Popen[bytes]] = []
        self._logs: list[TextIO] = []
        self.log_path = log_dir / f"{name}.log"

    def start(self) -> Proc:
        """Start (again); what is left of an earlier run (alerts workers) is left alone until cleanup."""
        assert self.popen is None or self.popen.poll() is not None, f"{self.name} is running"
        self.runs += 1
        self.log_path = self.log_dir / f"{self.name}.{self.runs}.log"
        log = self.log_path.open("w")
        self._logs.append(log)
        self.popen = subprocess.Popen(
            ["/bin/sh", "-c", self.cmd],
            cwd=ROOT,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: the alerts workers go with it in cleanup()
        )
        self._runs.append(self.popen)
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill9(self) -> None:
        """SIGKILL the service's own process only (the line execs it: the pid is the service)."""
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(timeout=10)

    async def kill9_and_restart(self, heard_by: Subscriber, timeout: float = 20) -> None:
        """kill -9, start again, and wait until ``heard_by`` hears the new incarnation's first
        heartbeat (its ``stats.restarts`` moves)."""
        restarts = heard_by.stats.restarts
        self.kill9()
        self.start()
        await eventually(
            lambda: heard_by.stats.restarts != restarts,
            wake=lambda: heard_by.recv_batch(timeout=0.5),
            timeout=timeout,
            what=lambda: f"{self.name} back\n{self.tail()}",
        )

    def stop(self, timeout: float = 10.0) -> tuple[int, float]:
        """SIGTERM; returns the exit code and how long it took."""
        assert self.popen is not None
        t0 = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        rc = self.popen.wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def cleanup(self) -> None:
        """Whatever is left of every run (a process, workers of a killed alerts) is killed."""
        for popen in self._runs:
            # the group is this run's own (start_new_session): our process, and what it started
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(popen.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=10)
        self._runs.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])


class Pipeline:
    """Every Procfile.demo line as its own process, each restartable (recovery tests)."""

    def __init__(self, endpoints: Endpoints, extra_env: dict[str, str] | None = None) -> None:
        self.endpoints = endpoints
        log_dir = endpoints.root / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, Proc] = {}
        for name, cmd in procfile().items():
            # A stable publisher id per service, as a container (same host, pid 1) has: a restart
            # is then seen as the same publisher numbering again from 1 (Subscriber.stats.restarts).
            env = endpoints.env({**(extra_env or {}), "POOLWIRE_PUBLISHER_ID": f"{name}@e2e"})
            self.procs[name] = Proc(name, cmd, env, log_dir)

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def start(self) -> None:
        for proc in self.procs.values():
            proc.start()

    def close(self) -> dict[str, tuple[int, float]]:
        """SIGTERM every process still running (services last to first); their codes and times."""
        out: dict[str, tuple[int, float]] = {}
        try:
            for name, proc in reversed(self.procs.items()):
                if proc.alive():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        out[name] = proc.stop()
        finally:
            for proc in self.procs.values():
                proc.cleanup()
        return out

    def logs(self, *names: str) -> str:
        return "\n".join(self.procs[n].tail() for n in names or self.procs)


class Honcho:
    """``honcho -f Procfile.demo start`` as a subprocess; its output goes to a file."""

    def __init__(self, env: dict[str, str], log_path: Path, procfile: Path = PROCFILE) -> None:
        self.log_path = log_path
        self._log = log_path.open("w")
        self.popen = subprocess.Popen(
            [str(VENV_BIN / "honcho"), "-f", str(procfile), "-d", str(ROOT), "start"],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def started(self) -> dict[str, int]:
        """``name -> pid`` from honcho's "name.1 started (pid=N)" lines."""
        out = {}
        for line in self.output().splitlines():
            if " started (pid=" in line:
                name = line.split("|", 1)[1].split()[0].removesuffix(".1")
                out[name] = int(line.rsplit("pid=", 1)[1].rstrip(")"))
        return out

    def stopped(self) -> dict[str, int]:
        """``name -> exit code`` from honcho's "name.1 stopped (rc=N)" lines."""
        out = {}
        for line in self.output().splitlines():
            if " stopped (rc=" in line:
                name = line.split("|", 1)[1].split()[0].removesuffix(".1")
                out[name] = int(line.rsplit("rc=", 1)[1].rstrip(")"))
        return out

    def stop(self, timeout: float = 15.0) -> tuple[int, float]:
        """SIGTERM honcho (it passes it on to every process); its exit code and how long it took."""
        t0 = time.monotonic()
        self.popen.send_signal(signal.SIGTERM)
        rc = self.popen.wait(timeout=timeout)
        return rc, time.monotonic() - t0

    def close(self) -> None:
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=10)
            # honcho itself was killed: the process groups it started (and did not see stop) go too
            stopped = self.stopped()
            for name, pid in self.started().items():
                if name not in stopped:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
        finally:
            self._log.close()


@contextlib.contextmanager
def honcho(env: dict[str, str], log_path: Path, procfile: Path = PROCFILE) -> Iterator[Honcho]:
    h = Honcho(env, log_path, procfile)
    try:
        yield h
    finally:
        h.close()


def children(pid: int) -> list[int]:
    """Pids of the processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after the last ")"
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry.name))
    return out


async def wait_gone(pids: Iterable[int], timeout: float) -> None:
    """Wait until every process in ``pids`` has exited (pidfd: no polling); TimeoutError if not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        done: asyncio.Future[None] = loop.create_future()

        def exited(f: asyncio.Future[None] = done) -> None:
            if not f.done():
                f.set_result(None)

        loop.add_reader(fd, exited)
        try:
            await asyncio.wait_for(done, max(0.0, deadline - loop.time()))
        finally:
            loop.remove_reader(fd)
            os.close(fd)


# -- the outside world --------------------------------------------------------------------------------


async def sim_stats(ep: Endpoints) -> dict[str, Any]:
    """The Polymarket simulator's connections (id, assets, rejected re-subscriptions...)."""
    async with aiohttp.ClientSession() as http, http.get(f"{ep.gamma_url}/control/stats") as resp:
        data: dict[str, Any] = await resp.json()
        return data


async def sim_assets(ep: Endpoints) -> set[str]:
    """Every open asset the simulator lists on Gamma (one page holds the demo's 40)."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{ep.gamma_url}/markets/keyset", params={"limit": "1000"}) as resp,
    ):
        body = await resp.json()
    assert "next_cursor" not in body, "more markets than one Gamma page"
    return {a for m in body["markets"] for a in json.loads(m["clobTokenIds"])}


async def chain_state(ep: Endpoints, keys: list[bytes]) -> ScrapeReply:
    """The chain simulator's state of ``keys`` at its head block, through its scrape socket."""
    reader, writer = await asyncio.open_unix_connection(ep.scrape_socket)
    try:
        writer.write(encode_scrape(ScrapeRequest(seq=1, pools=keys)))
        await writer.drain()
        frames = FrameReader(max_frame=1 << 30)
        while True:
            data = await asyncio.wait_for(reader.read(1 << 20), 5)
            if not data:
                raise ConnectionError("scrape socket closed before the reply")
            for payload in frames.feed(data):
                return SCRAPE_REPLY_DECODER.decode(payload)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


# -- consumers --------------------------------------------------------------------------------------


def _now() -> int:
    return time.time_ns()


@dataclass
class Seen:
    """One message as a consumer received it."""

    recv_ns: int
    topic: str
    msg: Message


@dataclass
class Collector:
    """``poolwire tap`` on every service's PUB, keeping what the assertions need.

    Prices are counted (per symbol and publisher), zone events, alerts, books, blocks and heartbeats
    are kept. ``until`` re-checks a condition each time something arrives (heartbeats come every
    200 ms), with a bound: no sleeping.
    """

    endpoints: list[str]
    prefixes: tuple[str, ...] = ("px.", "md.book.", "dex.block", "zone.", "alert.")
    sub: Subscriber = field(init=False)
    zones: list[Seen] = field(default_factory=list)
    alerts: list[Seen] = field(default_factory=list)
    books: list[Seen] = field(default_factory=list)
    blocks: list[Seen] = field(default_factory=list)
    heartbeats: dict[str, list[Seen]] = field(default_factory=dict)
    prices: Counter[tuple[str, str]] = field(default_factory=Counter)  # (publisher, symbol) -> count
    price_seen_ns: dict[str, int] = field(default_factory=dict)  # symbol -> last receive time
    dead: list[tuple[int, str, str]] = field(default_factory=list)  # (when, service, publisher)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        health = tuple(f"{s}.health" for s in BUS_SERVICES)
        self.sub = Subscriber(self.endpoints, self.prefixes + health, on_dead=self._on_dead)

    def _on_dead(self, info: PublisherInfo) -> None:
        self.dead.append((_now(), info.service, info.publisher))

    async def __aenter__(self) -> Collector:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sub.close()

    async def _run(self) -> None:
        while True:
            batch = await self.sub.recv_batch()
            now = _now()
            for topic, msg in batch:
                if isinstance(msg, Price):
                    self.prices[(msg.publisher.split("@", 1)[0], msg.symbol)] += 1
                    self.price_seen_ns[msg.symbol] = now
                elif isinstance(msg, Heartbeat):
                    self.heartbeats.setdefault(msg.service, []).append(Seen(now, topic, msg))
                elif isinstance(msg, ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved):
                    self.zones.append(Seen(now, topic, msg))
                elif isinstance(msg, AlertFired):
                    self.alerts.append(Seen(now, topic, msg))
                elif isinstance(msg, BookSnapshot):
                    self.books.append(Seen(now, topic, msg))
                elif isinstance(msg, BlockUpdate):
                    self.blocks.append(Seen(now, topic, msg))
            self.changed.set()

    async def until(self, cond: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
        """Wait (bounded) until ``cond()`` holds, re-checking whenever messages arrive."""
        await eventually(cond, wake=self.changed, timeout=timeout, what=what)

    # -- views ---------------------------------------------------------------------------------------

    def incarnations(self, service: str) -> list[int]:
        """The ``started_ns`` of each incarnation of ``service`` seen, in order."""
        out: list[int] = []
        for seen in self.heartbeats.get(service, []):
            hb = seen.msg
            assert isinstance(hb, Heartbeat)
            if not out or out[-1] != hb.started_ns:
                out.append(hb.started_ns)
        return out

    def heartbeat_after(self, service: str, ns: int) -> bool:
        return any(s.recv_ns >= ns for s in self.heartbeats.get(service, []))

    def zone_events(self, kind: type[Message]) -> list[Any]:
        return [s.msg for s in self.zones if isinstance(s.msg, kind)]

    def alerts_of(self, strategy: str) -> list[AlertFired]:
        return [s.msg for s in self.alerts if isinstance(s.msg, AlertFired) and s.msg.strategy == strategy]

    def symbols(self, source: str) -> set[str]:
        """Symbols whose prices came from ``source`` (ingest or sync)."""
        return {symbol for (publisher, symbol) in self.prices if publisher == source}

    async def next_heartbeat(self, service: str, timeout: float = 10.0) -> None:
        count = len(self.heartbeats.get(service, []))
        await self.until(lambda: len(self.heartbeats.get(service, [])) > count, timeout, f"{service}.health")


# -- the Clone pattern, as a consumer keeps it ------------------------------------------------------


StateLoad = Callable[[list[Message]], dict[str, Any]]
StateApply = Callable[[dict[str, Any], Message], None]


def load_zones(items: list[Message]) -> dict[str, Any]:
    return {i.zone.id: i.zone for i in items if isinstance(i, ZoneSnapshotItem)}


def apply_zone(state: dict[str, Any], msg: Message) -> None:
    """What a zone event does to the set of active zones (what a registry snapshot holds)."""
    if isinstance(msg, ZoneCreated | ZoneTouched):
        state[msg.zone.id] = msg.zone
    elif isinstance(msg, ZoneExpired | ZoneRemoved):
        state.pop(msg.zone.id, None)


def pool_fields(p: PoolState) -> tuple[Any, ...]:
    return (p.pool, p.protocol, p.block, p.reserve0, p.reserve1, p.sqrt_price_x96, p.tick, p.liquidity)


def load_pools(items: list[Message]) -> dict[str, Any]:
    return {i.pool: pool_fields(i) for i in items if isinstance(i, PoolState)}


def apply_pool(state: dict[str, Any], msg: Message) -> None:
    if isinstance(msg, PoolState):
        state[msg.pool] = pool_fields(msg)


def zone_key(z: Zone) -> tuple[Any, ...]:
    """What must survive a restart unchanged (touches may grow, state may move to touched)."""
    return (z.id, z.symbol, z.timeframe, z.kind, z.top, z.bottom, z.strength, z.created_ns, z.expires_ns)


class Mirror:
    """A consumer holding an owner's state: snapshot, then every update after it (ZeroMQ Clone).

    It watches the owner's heartbeats in the same stream: a new incarnation (``started_ns``) means
    the owner restarted, so the state is fetched again and the updates that follow are applied on
    top. ``state_at(seq)`` replays the current incarnation's log up to a publisher ``seq``, to
    compare with a snapshot taken at that ``seq``.
    """

    def __init__(
        self,
        service: str,
        pub: str,
        snapshot: str,
        prefix: str,
        load: StateLoad,
        apply: StateApply,
    ) -> None:
        self.service = service
        self.snapshot_endpoint = snapshot
        self.prefix = prefix
        self.load = load
        self.apply = apply
        self.sub = Subscriber(pub, (prefix, f"{service}.health"))
        self.started_ns = 0
        self.publisher = ""
        self.base: dict[str, Any] = {}
        self.base_seq = 0
        self.log: list[Message] = []
        self.last_seq = 0  # the owner's highest seq seen (heartbeats included) in this incarnation
        self.resyncs = 0
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> dict[str, Any]:
        return self.state_at(None)

    def state_at(self, seq: int | None) -> dict[str, Any]:
        if seq is not None and seq < self.base_seq:
            raise ValueError(f"seq {seq} is before this incarnation's snapshot ({self.base_seq})")
        state = dict(self.base)
        for msg in self.log:
            if seq is not None and msg.seq > seq:
                break
            self.apply(state, msg)
        return state

    async def __aenter__(self) -> Mirror:
        self._task = asyncio.get_running_loop().create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self.sub.close()

    async def _resync(self, held: list[Message]) -> None:
        header, items = await request_snapshot(self.snapshot_endpoint, self.prefix, timeout=10)
        self.base = self.load(items)
        self.base_seq = header.snapshot_seq
        self.publisher = header.publisher
        self.last_seq = max(self.last_seq, header.snapshot_seq)
        self.log = [m for m in held if m.publisher == self.publisher and m.seq > self.base_seq]
        self.resyncs += 1

    async def _run(self) -> None:
        while True:
            batch = await self.sub.recv_batch()
            held: list[Message] | None = None
            for _topic, msg in batch:
                if isinstance(msg, Heartbeat):
                    if msg.service != self.service:
                        continue
                    if msg.started_ns != self.started_ns:  # first sight, or the owner restarted
                        self.started_ns = msg.started_ns
                        self.last_seq = msg.seq
                        held = []  # what follows belongs to the new incarnation
                        continue
                    self.last_seq = max(self.last_seq, msg.seq)
                    continue
                if held is not None:
                    held.append(msg)
                elif self.publisher and msg.publisher == self.publisher and msg.seq > self.base_seq:
                    self.log.append(msg)
                    self.last_seq = max(self.last_seq, msg.seq)
            if held is not None:
                await self._resync(held)
            self.changed.set()

    async def until(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        await eventually(cond, wake=self.changed, timeout=timeout, what=what)

    async def state_matching_snapshot(self, timeout: float = 10.0) -> tuple[dict[str, Any], dict[str, Any]]:
        """Take a fresh snapshot; return it and this consumer's state at the snapshot's seq."""
        header, items = await request_snapshot(self.snapshot_endpoint, self.prefix, timeout=timeout)
        assert header.publisher == self.publisher, (header.publisher, self.publisher)
        await self.until(lambda: self.last_seq > header.snapshot_seq, timeout, f"seq > {header.snapshot_seq}")
        return self.load(items), self.state_at(header.snapshot_seq)
