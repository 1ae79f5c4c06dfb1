"""The soak's load on the registry alone (issue 19): the real registry process, the demo's pools
(S5/S15/M1, grace 15 s), detectors and SQLite on, fed N symbols at R live prices/s over a real
socket; the wheel-lag histogram and the loop's stall counts taken after a warm-up.

    python -m bench._registry_lag [--tree DIR] [--symbols 2000] [--rate 13000] [--seconds 150] [--pin]
        [--warmup 40] [--profile FILE] [--log-level DEBUG]

``--tree``: the source tree whose registry runs (another checkout, to compare); ``--profile``:
py-spy records the registry (every thread on the CPU, 100 Hz, raw folded stacks) from the warm-up to the end;
``--pin``: the registry and the floor on core 1, the feeder on core 0 (what a core of its own gives).
The machine is shared: run before and after in turn, and prefer the counts to the wall figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench._soak import scrape
from bench._soak_stats import histogram_quantile
from shared.bus import Publisher
from shared.messages import Price
from tests.ports import free_port, tcp_endpoint

ROOT = Path(__file__).resolve().parent.parent
LAG = "poolwire_registry_wheel_lag_seconds_bucket"


def registry_section() -> dict[str, Any]:
    """deploy/demo.yaml's registry section on free ports."""
    return {
        "pub": tcp_endpoint(),
        "pull": tcp_endpoint(),
        "snapshot": tcp_endpoint(),
        "prices": [tcp_endpoint()],
        "metrics_port": free_port(),
        "store_flush_interval": "500ms",
        "restore_expire_delay": "1s",
        "pools": {
            "S5": {"ttl": "30s"},
            "S15": {"ttl": "60s"},
            "M1": {"ttl": "3m"},
            "strength_threshold": 0.1,
            "grace_period_minutes": 0.25,
            "max_pools_per_tf": 10000,
            "auto_expire_interval": "1s",
        },
        "detectors": {"swing_bars": 2},
    }


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _diff(end: dict[str, float], base: dict[str, float], prefix: str) -> dict[str, float]:
    return {k: v - base.get(k, 0.0) for k, v in end.items() if k.startswith(prefix)}


def _per_min(counts: dict[str, float], label: str, minutes: float) -> dict[str, float]:
    return {k.split(f"{label}=")[-1].rstrip("}"): round(v / minutes, 1) for k, v in counts.items()}


def summary(base: dict[str, float], end: dict[str, float], minutes: float) -> dict[str, Any]:
    lag = _diff(end, base, LAG)
    slow = _diff(end, base, "poolwire_registry_slow_turns_total")
    stalls = _diff(end, base, "poolwire_registry_loop_stalls_total")
    busy = _diff(end, base, "poolwire_registry_loop_busy_total")
    gcs = _diff(end, base, "poolwire_registry_gc_slow_total")
    wakes = _diff(end, base, "poolwire_registry_expiry_wake_delays_total")
    by_loop = _diff(end, base, "poolwire_registry_timers_by_expiry_loop_total")
    return {
        "timers": lag.get(LAG + "{le=+Inf}", 0.0),
        "lag_ms": {
            f"p{round(q * 100)}": round((histogram_quantile(lag, LAG, q) or 0.0) * 1000, 2)
            for q in (0.5, 0.9, 0.99)
        },
        "lag_max_ms_whole_run": round(end.get("poolwire_registry_wheel_lag_max_seconds", 0.0) * 1000, 2),
        "over_ms": {k.split("le=")[1].rstrip("}"): v for k, v in lag.items()},
        "slow_turns_per_min": _per_min(slow, "stage", minutes),
        "loop_stalls_per_min": _per_min(stalls, "over", minutes),
        "loop_busy_per_min": _per_min(busy, "over", minutes),
        "gc_over_5ms": _per_min(gcs, "generation", 1.0),
        "expiry_wakes_late_per_min": _per_min(wakes, "over", minutes),
        "timers_by_expiry_loop": sum(by_loop.values()),
    }


async def feed(args: argparse.Namespace, section: dict[str, Any], pid: int) -> dict[str, Any]:
    rng = random.Random(7)
    syms = [f"pm.load{i}" for i in range(args.symbols)]
    px = dict.fromkeys(syms, 0.5)
    port = section["metrics_port"]
    base: dict[str, float] | None = None
    spy: subprocess.Popen[bytes] | None = None
    floor: subprocess.Popen[bytes] | None = None
    cpu0 = tw = 0.0
    async with Publisher(section["prices"][0], service="ingest", heartbeat_interval=1.0) as pub:
        await pub.wait_for_subscriber("px.", timeout=30)
        t0 = time.monotonic()
        step = 0.01
        per = max(1, int(args.rate * step))
        nxt = t0
        while time.monotonic() - t0 < args.seconds:
            now = time.time_ns()
            for _ in range(per):
                s = syms[rng.randrange(len(syms))]
                jump = rng.choice((-0.01, 0.01)) if rng.random() < 0.01 else 0.0
                p = min(0.99, max(0.01, px[s] * (1 + rng.gauss(0, 0.002) + jump)))
                px[s] = p
                pub.publish(f"px.{s}", Price(symbol=s, price=round(p, 5), event_ns=now, publish_ns=now))
            pub.flush()
            if base is None and time.monotonic() - t0 >= args.warmup:
                base = await asyncio.to_thread(scrape, port)
                cpu0, tw = cpu_s(pid), time.monotonic()
                floor = subprocess.Popen(
                    [*args.floor_prefix, sys.executable, "-m", "bench._floor", str(args.seconds - args.warmup)],
                    cwd=ROOT, stdout=subprocess.PIPE,
                )  # fmt: skip
                if args.profile:
                    rest = int(args.seconds - args.warmup)
                    cmd = [str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--rate", "100", "--threads",
                           "--format", "raw", "--duration", str(rest), "-o", str(args.profile), "--nonblocking"]  # fmt: skip
                    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            nxt += step
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
        end = await asyncio.to_thread(scrape, port)
        cpu1, t1 = cpu_s(pid), time.monotonic()
    if spy is not None:
        spy.wait(timeout=60)
    assert base is not None and floor is not None, "the run ended before its warm-up"
    minutes = (t1 - tw) / 60
    out = summary(base, end, minutes)
    out["floor"] = json.loads(floor.communicate(timeout=60)[0])
    out["cpu_pct"] = round(100 * (cpu1 - cpu0) / (t1 - tw), 1)
    out["prices"] = end.get("poolwire_registry_prices_total")
    turns = {
        stage: end.get(f"poolwire_registry_processing_seconds_count{{stage={stage}}}", 0.0)
        - base.get(f"poolwire_registry_processing_seconds_count{{stage={stage}}}", 0.0)
        for stage in ("prices", "expiry", "candles", "outbox", "store")
    }
    out["turns_per_s"] = {k: round(v / (t1 - tw), 1) for k, v in turns.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench._registry_lag")
    ap.add_argument("--tree", type=Path, default=ROOT)
    ap.add_argument("--symbols", type=int, default=2000)
    ap.add_argument("--rate", type=int, default=13000)
    ap.add_argument("--seconds", type=float, default=150)
    ap.add_argument("--warmup", type=float, default=40)
    ap.add_argument("--profile", type=Path)
    ap.add_argument(
        "--pin", action="store_true", help="the registry (and the floor) on core 1, this feeder on core 0"
    )
    ap.add_argument("--log-level", default="DEBUG", help="DEBUG: the slow turns and stalls logged")
    args = ap.parse_args(argv)
    args.floor_prefix = ["taskset", "-c", "1"] if args.pin else []  # the floor where the registry runs
    tmp = Path(tempfile.mkdtemp(prefix="registry-lag-"))
    section = registry_section()
    cfg = tmp / "poolwire.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {"common": {"data_dir": str(tmp / "data"), "log_level": args.log_level}, "registry": section}
        )
    )
    env = dict(os.environ, PYTHONPATH=str(args.tree))
    with (tmp / "stderr.log").open("w") as err:
        pin = ["taskset", "-c", "1"] if args.pin else []
        if args.pin:
            os.sched_setaffinity(0, {0})
        proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "services.registry", "--config", str(cfg)],
            cwd=args.tree,
            env=env,
            stderr=err,
        )
        try:
            out = asyncio.run(feed(args, section, proc.pid))
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    out.update(tree=str(args.tree), load=[round(x, 2) for x in os.getloadavg()], logs=str(tmp))
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
