"""One container per service, run for real: the compose stack's services as podman containers.

The image is deploy/Dockerfile built by `make image-local`: a Debian base made here by mmdebstrap and
the dependencies from a wheelhouse, so neither an image registry nor the package index is needed in
the build. On a network of their own, the poolwire services of deploy/compose.yaml run with the
command and environment compose gives each, the simulators from the same image stand in for
Polymarket and the chain (sync reads the ExEx simulator's socket on a shared volume, the way
compose's comment says to use a Reth ExEx), and deploy/demo.yaml is the config so that zones and
alerts come within a minute. A consumer on the host reads prices, zones and alerts through the
published ports; the services' own healthchecks pass; `podman stop` (SIGTERM, in compose's stop
order) ends every container with exit code 0. podman reads deploy/podman/containers.conf
(CONTAINERS_CONF).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pytest

from shared.compiled import GROUPS
from shared.messages import ZoneCreated
from tests.deploy.deployfiles import DEPLOY, compose, containers, interpolate
from tests.e2e.pipeline import BUS_SERVICES, DEMO_CONFIG, Collector, demo_config, demo_pool_keys, procfile
from tests.helpers import ROOT, require_binary
from tests.ports import free_port

pytestmark = pytest.mark.slow

PODMAN_CONF = DEPLOY / "podman" / "containers.conf"
IMAGE = "localhost/poolwire:test"
LOCAL_BASE = "localhost/poolwire-base:bookworm-1"  # the Makefile's, passed to it: one cache for both
CONFIG_IN_IMAGE = "/etc/poolwire/demo.yaml"
RETH = "/run/reth"  # where compose's comment mounts a Reth ExEx's socket into sync
WORKERS = 2  # alert-worker replicas: compose runs 3; two show the jobs shared, on a 2-core runner
STOP_GRACE = 15  # compose's stop_grace_period


def podman_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("POOLWIRE_", "MAKE", "MFLAGS"))}
    env["CONTAINERS_CONF"] = str(PODMAN_CONF)
    return env


def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["podman", *args], env=podman_env(), capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"podman {shlex.join(args)}: rc={out.returncode}\n{out.stderr[-3000:]}")
    return out


@dataclass
class Spec:
    """One container: a compose service (or a simulator) as podman runs it."""

    service: str  # the name the others reach it by (compose's service name)
    command: list[str]
    env: dict[str, str]
    volumes: list[str] = field(default_factory=list)  # "volume:path[:options]", volume without prefix
    ports: list[int] = field(default_factory=list)  # container ports compose publishes
    init: bool = True
    healthcheck: list[str] | None = None  # the command compose's healthcheck runs
    replica: int = 0
    depends_on: list[str] = field(default_factory=list)

    @property
    def suffix(self) -> str:
        return f"{self.service}-{self.replica}" if self.replica else self.service


def compose_specs() -> list[Spec]:
    """The poolwire services of deploy/compose.yaml, pointed at the simulators instead of the world."""
    demo = demo_config()
    x_env = compose()["x-env"]
    # compose's comment: for a Reth ExEx, replace the RPC line with the socket, mounted into sync
    assert "POOLWIRE_SYNC__RPC_URLS" in x_env
    chain = {"POOLWIRE_SYNC__EXEX_SOCKET": f"{RETH}/exex.sock"}
    demo_env = {"POOLWIRE_CONFIG": CONFIG_IN_IMAGE}
    outside = {
        "ingest": {
            "POOLWIRE_INGEST__WS_URL": demo["ingest"]["ws_url"].replace("127.0.0.1", "simulator"),
            "POOLWIRE_INGEST__GAMMA_URL": demo["ingest"]["gamma_url"].replace("127.0.0.1", "simulator"),
            "POOLWIRE_INGEST__REST_URL": demo["ingest"]["rest_url"].replace("127.0.0.1", "simulator"),
        },
        "sync": {"POOLWIRE_SYNC__SCRAPE_SOCKET": f"{RETH}/scrape.sock"},
    }
    specs = []
    for c in containers():
        if c.raw.get("image") != "poolwire:latest":
            continue  # redis, prometheus, grafana: images from a registry
        env = {k: v for k, v in c.env.items() if k != "POOLWIRE_SYNC__RPC_URLS"}
        env |= chain | demo_env | outside.get(c.section or "", {})
        volumes = list(c.raw.get("volumes", []))
        if c.section == "sync":
            volumes.append(f"reth:{RETH}:U")
        ports = [int(str(p).rsplit(":", 1)[1]) for p in c.raw.get("ports", [])]
        check = c.raw.get("healthcheck", {})
        health = None if check.get("disable") else check["test"][1:]
        replicas = c.raw.get("deploy", {}).get("replicas")
        depends_on = list(c.raw.get("depends_on", []))  # a list or a dict: its keys
        for replica in range(1, min(replicas, WORKERS) + 1) if replicas else [0]:
            init = bool(c.raw.get("init"))
            specs.append(Spec(c.name, c.command, env, volumes, ports, init, health, replica, depends_on))
    return specs


def stop_order(specs: list[Spec]) -> list[list[Spec]]:
    """`docker compose stop`'s order: a service before those it depends on, the others at once."""
    waves, left = [], list(specs)
    while left:
        needed = {d for s in left for d in s.depends_on}
        wave = [s for s in left if s.service not in needed]
        assert wave, f"a depends_on cycle among {[s.service for s in left]}"
        waves.append(wave)
        left = [s for s in left if s not in wave]
    return waves


def simulator_specs() -> list[Spec]:
    """The simulators, as Procfile.demo runs them, with the paths and config of the containers."""
    paths = {
        "POOLWIRE_CONFIG": CONFIG_IN_IMAGE,
        "POOLWIRE_SYNC__EXEX_SOCKET": f"{RETH}/exex.sock",
        "POOLWIRE_SYNC__SCRAPE_SOCKET": f"{RETH}/scrape.sock",
    }
    lines = procfile()

    def command(name: str) -> list[str]:
        words = shlex.split(interpolate(lines[name], paths))
        return words[1:] if words[0] == "exec" else words

    return [
        Spec(
            "simulator",
            command("simulator"),
            {"POOLWIRE_CONFIG": CONFIG_IN_IMAGE, "POOLWIRE_SIMULATOR__HOST": "0.0.0.0"},
        ),
        Spec("exex", command("exex"), {}, volumes=[f"reth:{RETH}:U"]),
    ]


class Stack:
    """Containers on a network of their own, with their volumes; everything removed by close()."""

    def __init__(self) -> None:
        self.prefix = f"pwtest-{uuid.uuid4().hex[:8]}"
        self.network = self.prefix
        self.names: dict[str, Spec] = {}  # container name -> spec
        self.host_ports: dict[tuple[str, int], int] = {}  # (container, its port) -> host port
        self.volumes: set[str] = set()

    def name(self, spec: Spec) -> str:
        return f"{self.prefix}-{spec.suffix}"

    def _run_args(self, spec: Spec) -> list[str]:
        name = self.name(spec)
        args = ["run", "-d", "--name", name, "--network", self.network, "--network-alias", spec.service]
        if spec.init:
            args.append("--init")
        for key, value in spec.env.items():
            args += ["-e", f"{key}={value}"]
        args += ["-v", f"{DEMO_CONFIG}:{CONFIG_IN_IMAGE}:ro"]
        for mount in spec.volumes:
            volume, _, rest = mount.partition(":")
            self.volumes.add(f"{self.prefix}-{volume}")
            args += ["-v", f"{self.prefix}-{volume}:{rest}"]
        for port in spec.ports:
            host = self.host_ports[(name, port)] = free_port()
            args += ["-p", f"127.0.0.1:{host}:{port}"]
        return [*args, IMAGE, *spec.command]

    async def start(self, specs: list[Spec]) -> None:
        """Every container at once, as compose starts services that do not depend on each other."""
        runs = [self._run_args(s) for s in specs]
        self.names |= {self.name(s): s for s in specs}
        await asyncio.gather(*(asyncio.to_thread(podman, *args) for args in runs))

    def create(self) -> None:
        podman("network", "create", self.network)

    def endpoint(self, service: str, port: int) -> str:
        return f"tcp://127.0.0.1:{self.host_ports[(f'{self.prefix}-{service}', port)]}"

    def exec(self, spec: Spec, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return podman("exec", self.name(spec), *argv, timeout=timeout, check=False)

    def stop(self, specs: list[Spec]) -> float:
        t0 = time.monotonic()
        podman("stop", "-t", str(STOP_GRACE), *(self.name(s) for s in specs), timeout=STOP_GRACE + 60)
        return time.monotonic() - t0

    def exit_codes(self) -> dict[str, int]:
        out = podman("inspect", "--format", "{{.Name}} {{.State.ExitCode}} {{.State.Status}}", *self.names)
        codes = {}
        for line in out.stdout.splitlines():
            name, code, status = line.split()
            codes[name.removeprefix(f"{self.prefix}-")] = int(code) if status == "exited" else -1
        return codes

    def log(self, name: str, tail: int | None = None) -> str:
        args = ["logs", *(["--tail", str(tail)] if tail else []), name]
        out = podman(*args, check=False, timeout=30)
        return out.stdout + out.stderr

    def logs(self, tail: int = 25) -> str:
        parts = []
        for name in self.names:
            short = name.removeprefix(f"{self.prefix}-")
            lines = self.log(name, tail).splitlines()
            parts.append("\n".join(f"  {short}| {line}" for line in lines) or f"  {short}| (no output)")
        return "\n".join(parts)

    def close(self) -> None:
        if self.names:
            podman("rm", "-f", "-v", "-t", "0", *self.names, check=False)
        podman("network", "rm", "-f", self.network, check=False)
        if self.volumes:
            podman("volume", "rm", "-f", *sorted(self.volumes), check=False)


def build_image() -> float:
    """`make image-local`: the base (kept once built), the wheelhouse, the image; seconds taken."""
    make = require_binary("make")
    exists = podman("image", "exists", LOCAL_BASE, check=False).returncode == 0
    if not exists:
        require_binary("mmdebstrap")
    t0 = time.monotonic()
    out = subprocess.run(
        [make, "-C", str(ROOT), "image-local", "ENGINE=podman", f"IMAGE={IMAGE}", f"LOCAL_BASE={LOCAL_BASE}"],
        env=podman_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, f"make image-local failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return time.monotonic() - t0


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def jobs_done(metrics: str) -> float:
    prefix = 'poolwire_alerts_jobs_total{status="done"} '
    return sum(float(line.removeprefix(prefix)) for line in metrics.splitlines() if line.startswith(prefix))


@pytest.mark.timeout(900)  # a cold run builds the base image with mmdebstrap first
async def test_compose_services_run_as_containers() -> None:
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (.ci/run installs it)")
    t_build = build_image()
    # the build stage compiled the core (its base has gcc): the services run it, not the pure modules
    core = podman("run", "--rm", "--network", "none", IMAGE, "python", "-m", "shared.compiled", "status")
    assert core.stdout.splitlines() == [f"{group}: compiled (mypyc)" for group in GROUPS], core.stdout
    assert podman("run", "--rm", IMAGE, "python", "-c", "import mypy", check=False).returncode != 0
    services, simulators = compose_specs(), simulator_specs()
    assert {s.service for s in services} == {
        "ingest-0",
        "ingest-1",
        "sync",
        "registry",
        "alerts",
        "alert-worker",
    }
    stack = Stack()
    try:
        t0 = time.monotonic()
        stack.create()
        await stack.start(simulators)
        # ingest's first Gamma poll and sync's start-up scrapes need the simulators (Procfile.demo waits too)
        sim, exex = simulators
        ws, http = demo_config()["simulator"]["ws_port"], demo_config()["simulator"]["http_port"]
        wait = ["python", "-m", "services.simulator.wait", "--timeout", "30"]
        for spec, targets in (
            (sim, [f"tcp:127.0.0.1:{ws}", f"tcp:127.0.0.1:{http}"]),
            (exex, [f"unix:{RETH}/exex.sock", f"unix:{RETH}/scrape.sock"]),
        ):
            ready = stack.exec(spec, *wait, *targets)
            assert ready.returncode == 0, ready.stderr
        await stack.start(services)
        t_started = time.monotonic() - t0

        pubs = [
            stack.endpoint("ingest-0", 5550),
            stack.endpoint("ingest-1", 5550),
            stack.endpoint("sync", 5560),
            stack.endpoint("registry", 5570),
            stack.endpoint("alerts", 5580),
        ]
        pools = {f"dex.0x{k.hex()}" for k in demo_pool_keys()}
        async with Collector(pubs) as c:

            def symbols(publisher: str) -> set[str]:
                return {symbol for (pub, symbol) in c.prices if pub == publisher}

            def why() -> str:
                return (
                    f"heartbeats from {sorted(c.heartbeats)}; prices per publisher "
                    f"{Counter(pub for pub, _ in c.prices)}; zone events "
                    f"{Counter(type(s.msg).__name__ for s in c.zones)}; alerts "
                    f"{Counter(a.msg.strategy for a in c.alerts)}"  # type: ignore[attr-defined]
                )

            await c.until(lambda: set(BUS_SERVICES) <= set(c.heartbeats), 60, why)
            t_up = time.monotonic() - t0
            # prices from both ingest shards (each its half of the markets) and from sync (every pool)
            await c.until(
                lambda: bool(symbols("ingest-0") and symbols("ingest-1")) and symbols("sync") == pools,
                60,
                why,
            )
            assert not symbols("ingest-0") & symbols("ingest-1"), "an asset in both shards"
            assert all(s.startswith("pm.") for s in symbols("ingest-0") | symbols("ingest-1"))
            await c.until(lambda: bool(c.zone_events(ZoneCreated)) and bool(c.alerts), 90, why)
            t_alert = time.monotonic() - t0
            zone_symbols = {z.zone.symbol for z in c.zone_events(ZoneCreated)}
            assert zone_symbols <= symbols("ingest-0") | symbols("ingest-1") | symbols("sync")
            assert all(s.msg.symbol in zone_symbols for s in c.alerts if s.msg.strategy == "first_zone")  # type: ignore[attr-defined]

            # alerts runs no workers (alerts.workers 0): the alert-worker containers did the jobs
            metrics_url = stack.endpoint("alerts", 9104).replace("tcp://", "http://") + "/metrics"
            deadline = time.monotonic() + 60
            while jobs_done(await asyncio.to_thread(scrape, metrics_url)) == 0:
                assert time.monotonic() < deadline, "no job done by the alert workers"
                await c.next_heartbeat("alerts")

        for spec in services:
            if spec.healthcheck is not None:
                health = stack.exec(spec, *spec.healthcheck)
                assert health.returncode == 0, f"{spec.suffix}: healthcheck failed\n{health.stderr}"

        took = sum(stack.stop(wave) for wave in stop_order(services))
        stack.stop(simulators)  # the world outside goes last
        codes = stack.exit_codes()
        assert len(codes) == len(stack.names), codes
        failed = {name: code for name, code in codes.items() if code != 0}
        assert not failed, f"exit codes (-1: still running) {failed}; took {took:.1f} s to stop"
        for name in stack.names:
            text = stack.log(name)
            assert "Traceback" not in text, f"{name}:\n{text[max(0, text.index('Traceback') - 500) :][:3000]}"
    except BaseException as exc:
        # what every container said: the service that died or never got its data explains itself
        exc.add_note(f"--- podman logs, last lines of each container:\n{stack.logs()}")
        raise
    finally:
        stack.close()
    print(
        f"\ncontainers: image built in {t_build:.1f} s; {len(stack.names)} containers started "
        f"{t_started:.1f} s, all publishers up {t_up:.1f} s, zones and alerts by {t_alert:.1f} s after "
        f"the start; {len(c.alerts)} alerts; `podman stop` of the services took {took:.1f} s"
    )
