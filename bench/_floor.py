"""The OS's share of a timer's lateness: a bare uvloop process sleeping the registry's probe period
(services/registry/turns.py) over and over beside a load, then printing (JSON) how often it woke
late by each of the probe's bounds, its p99 and its largest lateness. What the registry's timers
show beyond this floor is the registry's; up to it, the machine's.

    python -m bench._floor SECONDS
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time

from services.registry.turns import PROBE_S, STALL_MS


async def _probe(seconds: float) -> list[float]:
    late: list[float] = []
    end = time.perf_counter() + seconds
    parent = os.getppid()
    while time.perf_counter() < end and os.getppid() == parent:  # ends with the run it measures
        t0 = time.perf_counter()
        await asyncio.sleep(PROBE_S)
        late.append((time.perf_counter() - t0 - PROBE_S) * 1e3)
    return late


def summarize(late_ms: list[float], minutes: float) -> dict[str, object]:
    """Stall counts per minute by bound, and the p99 and max lateness (ms)."""
    ranked = sorted(late_ms)
    per_min = {f"{b}ms": round(sum(1 for x in late_ms if x >= b) / minutes, 1) for b in STALL_MS}
    return {
        "stalls_per_min": per_min,
        "p99_ms": round(ranked[int(len(ranked) * 0.99)], 2) if ranked else None,
        "max_ms": round(ranked[-1], 2) if ranked else None,
    }


def main() -> None:
    import uvloop

    seconds = float(sys.argv[1])
    print(json.dumps(summarize(uvloop.run(_probe(seconds)), seconds / 60)))


if __name__ == "__main__":
    main()
