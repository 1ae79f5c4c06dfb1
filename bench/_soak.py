"""``make soak``: the demo pipeline (Procfile.demo under honcho) at production scale, sampled.

Every ``--sample`` seconds it records, per Procfile line, the RSS, CPU time and open fds of the
line's process tree, and every service's metrics; a subscriber on every PUB counts messages and
gaps and times alerts. At the end it writes ``bench/soak.json`` (samples and summary) and
``bench/soak.png`` (RSS per service over time), and prints the summary: the RSS slope over the
second half of the run (MB/hour), RSS at 10 minutes, gaps, late inputs, the registry wheel lag's
percentiles and the alert latency.

    python -m bench._soak [--assets 2000] [--events-per-s 10000] [--minutes 30] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from bench._soak_stats import histogram_quantile, parents, slope_per_hour, slope_stderr_per_hour, tree_usage
from shared.bus import Subscriber
from shared.messages import AlertFired
from tests.e2e.pipeline import Endpoints, honcho

HERE = Path(__file__).resolve().parent
MB = 1024 * 1024


@dataclass
class BusWatch:
    """A subscriber on every PUB in its own thread: messages, gaps, and alert latency."""

    endpoints: list[str]
    messages: int = 0
    gaps: int = 0
    missed: int = 0
    decode_errors: int = 0
    alert_latency_ms: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self._thread.start()

    async def _run(self) -> None:
        with Subscriber(self.endpoints, [""]) as sub:
            while not self._stop.is_set():
                for _, msg in await sub.recv_batch(0.5):
                    self.messages += 1
                    if isinstance(msg, AlertFired) and msg.event_ns:
                        self.alert_latency_ms.append((msg.publish_ns - msg.event_ns) / 1e6)
                self.gaps, self.missed = sub.stats.gaps, sub.stats.missed
                self.decode_errors = sub.stats.decode_errors

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def scrape(port: int) -> dict[str, float]:
    """Every sample of a metrics endpoint as ``name{labels} -> value``; empty if it does not answer."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


BLOCKS = "poolwire_python_allocated_blocks"
SQLITE = "poolwire_sqlite_memory_bytes"


def _sum(metrics: dict[str, float], part: str) -> float:
    """The sum of every sample whose metric name (labels aside) contains ``part``."""
    return sum(v for k, v in metrics.items() if part in k.split("{", 1)[0] and not k.endswith("_created"))


def _heaps(samples: list[dict[str, Any]], name: str) -> dict[str, float]:
    """A service's own heaps (shared.metrics.HeapCollector) over the second half: an RSS slope with
    flat heaps is the allocator's pages, not objects kept."""
    half = [s for s in samples if s["t"] >= samples[-1]["t"] / 2]
    out: dict[str, float] = {}
    blocks = [(s["t"], v) for s in half if (v := s["metrics"].get(name, {}).get(BLOCKS)) is not None]
    if blocks:
        out["python_blocks_end"] = blocks[-1][1]
        out["python_blocks_slope_per_hour_second_half"] = round(slope_per_hour(blocks))
    first, last = half[0]["metrics"].get(name, {}), half[-1]["metrics"].get(name, {})
    for key, value in last.items():  # the bus's per-topic tables: still filling, or full
        if key.startswith("poolwire_bus_topics{"):
            socket = key.split("socket=", 1)[1].rstrip("}")
            out[f"bus_topics_{socket}_end"] = value
            out[f"bus_topics_{socket}_added_second_half"] = value - first.get(key, 0.0)
    sqlite = [v for s in half if (v := s["metrics"].get(name, {}).get(SQLITE)) is not None]
    if sqlite:
        out["sqlite_mb_end"] = round(sqlite[-1] / MB, 2)
        out["sqlite_mb_max_second_half"] = round(max(sqlite) / MB, 2)
    return out


def _anon(half: list[dict[str, Any]], name: str) -> dict[str, float]:
    """The slope of the RSS no file backs, beside the RSS's: pages of libraries and code touched
    late in a run count in the RSS, and are no memory the process keeps."""
    series = [(s["t"], v / MB) for s in half if (v := s.get("anon", {}).get(name))]
    if len(series) < 2:
        return {}
    return {
        "anon_mb_end": round(series[-1][1], 1),
        "anon_slope_mb_per_hour_second_half": round(slope_per_hour(series), 2),
        "anon_slope_stderr_mb_per_hour": round(slope_stderr_per_hour(series), 2),
    }


def summarize(
    samples: list[dict[str, Any]], watch: BusWatch, minutes: float, rss: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """``rss``: the finer RSS samples (every few seconds), for the slopes; else the samples'."""
    fine = rss or [{"t": s["t"], "rss": {n: p["rss"] for n, p in s["procs"].items()}} for s in samples]
    half = [s for s in fine if s["t"] >= fine[-1]["t"] / 2]
    at10 = min(samples, key=lambda s: abs(s["t"] - 600))
    last = samples[-1]["metrics"]
    services: dict[str, Any] = {}
    for name in samples[-1]["procs"]:
        series = [(s["t"], s["rss"][name] / MB) for s in half if s["rss"].get(name)]
        cpu = [(s["t"], s["procs"][name]["cpu_s"]) for s in samples if name in s["procs"]]
        services[name] = {
            "rss_mb_end": round(series[-1][1], 1) if series else 0.0,
            "rss_mb_at_10min": round(at10["procs"].get(name, {}).get("rss", 0) / MB, 1),
            "rss_slope_mb_per_hour_second_half": round(slope_per_hour(series), 2),
            "rss_slope_stderr_mb_per_hour": round(slope_stderr_per_hour(series), 2),
            **_anon(half, name),
            "cpu_percent": round(100 * (cpu[-1][1] - cpu[0][1]) / max(cpu[-1][0] - cpu[0][0], 1e-9), 1),
            "fds_max": max(s["procs"][name]["fds"] for s in samples if name in s["procs"]),
        }
        services[name].update(_heaps(samples, name))
    registry = last.get("registry", {})
    lag = {
        q: histogram_quantile(registry, "poolwire_registry_wheel_lag_seconds_bucket", q) for q in (0.5, 0.99)
    }
    alert_ms = sorted(watch.alert_latency_ms)
    jobs = last.get("alerts", {})
    job_p = {
        q: histogram_quantile(jobs, "poolwire_alerts_job_latency_seconds_bucket", q) for q in (0.5, 0.99)
    }
    return {
        "minutes": minutes,
        "services": services,
        "bus": {
            "messages": watch.messages,
            "gaps": watch.gaps,
            "missed": watch.missed,
            "decode_errors": watch.decode_errors,
        },
        "service_gaps": {svc: _sum(m, "gap") for svc, m in last.items()},
        "late_inputs": {svc: _sum(m, "_late_") for svc, m in last.items()},
        "wheel_lag_ms": {
            "p50": None if lag[0.5] is None else round(lag[0.5] * 1000, 2),
            "p99": None if lag[0.99] is None else round(lag[0.99] * 1000, 2),
            "max": round(registry.get("poolwire_registry_wheel_lag_max_seconds", 0.0) * 1000, 2),
        },
        # the registry's loop (services/registry/turns.py): per minute, over the whole run
        "registry_loop_per_min": {
            name: {
                k.split("=", 1)[1].rstrip("}"): round(v / minutes, 1)
                for k, v in registry.items()
                if k.startswith(f"poolwire_registry_{name}_total{{")
            }
            for name in ("slow_turns", "loop_stalls", "loop_busy", "expiry_wake_delays", "gc_slow")
        },
        "registry_timers_by_expiry_loop": registry.get("poolwire_registry_timers_by_expiry_loop_total"),
        "job_latency_ms": {
            f"p{round(q * 100)}": None if v is None else round(v * 1000, 2) for q, v in job_p.items()
        },
        # publish_ns - event_ns of each AlertFired: from the cause's event time to the alert
        "alert_latency_ms": {
            "count": len(alert_ms),
            "p50": round(alert_ms[len(alert_ms) // 2], 1) if alert_ms else None,
            "p99": round(alert_ms[int(len(alert_ms) * 0.99)], 1) if alert_ms else None,
        },
    }


def plot(samples: list[dict[str, Any]], summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5))
    for name in samples[-1]["procs"]:
        pts = [(s["t"] / 60, s["procs"][name]["rss"] / MB) for s in samples if name in s["procs"]]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
    lag = summary["wheel_lag_ms"]
    ax.set_title(
        f"RSS per service; registry wheel lag p50 {lag['p50']} ms, p99 {lag['p99']} ms, max {lag['max']} ms"
    )
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MB)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._soak")
    parser.add_argument("--assets", type=int, default=2000)
    parser.add_argument("--events-per-s", type=int, default=10_000)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--sample", type=float, default=60, help="seconds between samples")
    parser.add_argument(
        "--rss-sample", type=float, default=10, help="seconds between RSS samples (for the slopes)"
    )
    parser.add_argument("--smoke", action="store_true", help="3 minutes, a sample every 15 s")
    parser.add_argument("--out", type=Path, default=HERE / "soak.json")
    args = parser.parse_args(argv)
    minutes, sample_s = (3.0, 15.0) if args.smoke else (args.minutes, args.sample)
    with tempfile.TemporaryDirectory(prefix="poolwire-soak-") as tmp:
        ep = Endpoints.allocate(Path(tmp))
        env = ep.env(
            {
                "POOLWIRE_SIMULATOR__ASSETS": str(args.assets),
                "POOLWIRE_SIMULATOR__EVENTS_PER_S": str(args.events_per_s),
            }
        )
        ports = {
            "ingest": ep.ingest_metrics,
            "sync": ep.sync_metrics,
            "registry": ep.registry_metrics,
            "alerts": ep.alerts_metrics,
            "simulator": ep.sim_metrics,
        }
        print(
            f"soak: {args.assets} assets, {args.events_per_s} events/s, {minutes} min; logs in {tmp}",
            file=sys.stderr,
        )
        watch = BusWatch(ep.pubs)
        watch.start()
        samples: list[dict[str, Any]] = []
        rss: list[dict[str, Any]] = []
        # the OS's share of a timer's lateness under the same load, beside the registry's wheel lag
        floor = subprocess.Popen(
            [sys.executable, "-m", "bench._floor", str(minutes * 60)], stdout=subprocess.PIPE
        )
        with honcho(env, Path(tmp) / "honcho.log") as run:
            t0 = time.monotonic()
            end = minutes * 60
            next_full = 0.0
            while True:
                t = time.monotonic() - t0
                tree = parents()
                usage = {name: tree_usage(pid, tree) for name, pid in run.started().items()}
                # RSS every few seconds between the full samples: a slope of 1 MB/hour is not told
                # from a megabyte of allocator noise by 15 points a half hour.
                rss.append(
                    {
                        "t": round(t, 1),
                        "rss": {n: u["rss"] for n, u in usage.items()},
                        "anon": {n: u["anon"] for n, u in usage.items()},
                    }
                )
                stopped = t >= end or run.popen.poll() is not None
                if t >= next_full or stopped:
                    samples.append(
                        {
                            "t": round(t, 1),
                            "procs": usage,
                            "metrics": {svc: scrape(port) for svc, port in ports.items()},
                        }
                    )
                    done = sum(1 for u in usage.values() if u["rss"])
                    print(
                        f"soak: {t / 60:5.1f} min, {done} processes, {watch.messages} messages, "
                        f"{watch.gaps} gaps",
                        file=sys.stderr,
                    )
                    next_full += sample_s
                if stopped:
                    break
                time.sleep(max(0.0, min(args.rss_sample, next_full - t, end - t)))
            crashed = run.popen.poll() is not None
            if crashed:
                print(run.output()[-4000:], file=sys.stderr)
        watch.stop()
        if crashed:
            floor.kill()
        floor_out = floor.communicate(timeout=120)[0]
    summary = summarize(samples, watch, minutes, rss)
    if floor_out:
        summary["floor"] = json.loads(floor_out)
    args.out.write_text(json.dumps({"summary": summary, "samples": samples, "rss": rss}, indent=1))
    plot(samples, summary, args.out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    print(f"soak: wrote {args.out} and {args.out.with_suffix('.png')}", file=sys.stderr)
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
