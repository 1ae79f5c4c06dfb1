"""Instructions per unit of work under valgrind's callgrind: a count that does not move with the
host's load or speed, for comparing two trees (wall and CPU figures here move 20-40 % between runs).

    python -m bench._instructions            # both, each as the difference of two runs
    python -m bench._instructions router     # ingest's router: instructions per update
    python -m bench._instructions crud       # the registry core: per zone created, updated, expired
    python -m bench._instructions events     # the registry core: per lifecycle event (touches, fills)

Each figure runs the same script twice, with no work and with N units, after the same set-up and
warm-up, so imports and set-up cancel out. Needs valgrind (Debian's ``valgrind``); about 30 s each.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTED = re.compile(r"Collected : (\d+)")
UNITS = re.compile(r"^units (\d+)$", re.M)


def router(n: int) -> int:
    """Route ``n`` recorded simulator frames (hash checks on, publishing), after 2 000 to warm up."""
    import uvloop

    from bench.ingest import _frames, route, router_rig

    sim, dump, frames = _frames(400, 2_500)

    async def run() -> int:
        pub, router = router_rig(sim, dump, True)
        for part in (frames[:2_000], frames[2_000 : 2_000 + n]):
            before = router.stats.updates
            route(pub, router, part)
        await pub.close()
        return router.stats.updates - before

    return uvloop.run(run())


def crud(n: int) -> int:
    """bench/registry.py's CRUD of ``n`` zones."""
    from bench.registry import T0, _rules, crud_specs
    from bench.registry import crud as run
    from services.registry.registry import Registry

    specs = crud_specs()
    for count in (2_000, n):  # the first round warms the caches (zone ids' times, tags)
        run(Registry(_rules(), T0), specs[:count])
    return n


def events(n: int) -> int:
    """bench/registry.py's lifecycle mix with ``n`` zones (and its 20 000 prices); units: the events."""
    from bench.registry import events as run
    from bench.registry import events_registry, events_specs

    symbols, zones, walk = events_specs()
    run(events_registry(symbols), (symbols, zones[:2_000], walk[:2_000]))  # warm-up
    reg = events_registry(symbols)
    if n:
        run(reg, (symbols, zones[:n], walk))
    return len(reg.drain())


WORK = {
    "router": (router, 800, "instructions per update"),
    "crud": (crud, 10_000, "instructions per zone"),
    "events": (events, 20_000, "instructions per event"),
}


def _collected(name: str, n: int) -> tuple[int, int]:
    """(instructions, units of work) of one run under callgrind."""
    inner = [sys.executable, "-m", "bench._instructions", "--inner", name, str(n)]
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *inner],
        cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # str hashes, and so dict probes, the same each run
        capture_output=True,
        text=True,
        check=True,
    )
    found, units = COLLECTED.search(proc.stderr), UNITS.search(proc.stdout)
    if found is None or units is None:
        raise RuntimeError(f"callgrind gave no count for {name}: {proc.stderr[-2000:]}")
    return int(found.group(1)), int(units.group(1))


def measure(name: str) -> float:
    _, n, _ = WORK[name]
    base, _ = _collected(name, 0)
    total, units = _collected(name, n)
    return (total - base) / units


def main(argv: list[str]) -> int:
    if argv[:1] == ["--inner"]:
        fn, _, _ = WORK[argv[1]]
        print(f"units {fn(int(argv[2]))}")
        return 0
    unknown = [name for name in argv if name not in WORK]
    if unknown:
        print(f"unknown: {' '.join(unknown)} (one of: {' '.join(WORK)})", file=sys.stderr)
        return 2
    if shutil.which("valgrind") is None:
        print("needs valgrind's callgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    for name in argv or list(WORK):
        print(f"{name}: {measure(name):,.0f} {WORK[name][2]}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
