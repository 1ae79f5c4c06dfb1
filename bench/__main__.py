"""``make bench [ONLY=service]``: run every benchmark module, print a table, write bench/results.json.

A benchmark module is ``bench/<name>.py`` (not ``_private``, not ``plots``) with
``run() -> dict[str, Figure]`` where a figure is ``{"value": number, "unit": str, "goal": str}``
and names are ``<name>.<figure>``. The goal is a
comparison like ``">= 0.6"`` or ``"<= 15"``; ``met`` says whether the value meets it. A figure may
carry a ``table`` (a scaling curve): ``bench/plots.py`` draws those into bench/scaling.png after
the run. ``bench.seconds_<module>`` is how long each module took (``make bench`` should stay
under 5 minutes on the 2-core machine: their sum).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import re
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench.plots import draw

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
ORDER = ["bus", "registry", "ingest", "sync", "alerts", "scaling", "pipeline"]
NOT_BENCHMARKS = {"plots"}


def modules() -> list[str]:
    found = [
        m.name
        for m in pkgutil.iter_modules([str(HERE)])
        if not m.name.startswith("_") and m.name not in NOT_BENCHMARKS
    ]
    return sorted(found, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))


def met(value: float, goal: str | None) -> bool | None:
    if not goal:
        return None
    match = re.match(r"^\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$", goal)
    if not match:
        return None
    op, target = match.group(1), float(match.group(2))
    return {">=": value >= target, "<=": value <= target, ">": value > target, "<": value < target}[op]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="one service's benchmarks (module name in bench/)")
    args = parser.parse_args(argv)
    names = [args.only] if args.only else modules()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    failed = []
    started = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            figures = importlib.import_module(f"bench.{name}").run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        for key, fig in figures.items():
            fig["met"] = met(float(fig["value"]), fig.get("goal"))
            results[key] = fig
        seconds = time.perf_counter() - t0
        results[f"bench.seconds_{name}"] = {"value": seconds, "unit": "s", "goal": "", "met": None}
        print(f"   {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    draw(results)
    width = max((len(k) for k in results), default=10)
    print(f"\n{'figure':<{width}}  {'value':>14}  {'unit':<10}  {'goal':<10}  met")
    for key in sorted(
        results, key=lambda k: (ORDER.index(k.split(".")[0]) if k.split(".")[0] in ORDER else 99, k)
    ):
        fig = results[key]
        mark = {True: "yes", False: "NO", None: "-"}[fig.get("met")]
        print(
            f"{key:<{width}}  {fig['value']:>14,.3f}  {fig.get('unit', ''):<10}  {fig.get('goal') or '':<10}  {mark}"
        )
    print(
        f"\n{len(results)} figures in {time.perf_counter() - started:.0f} s -> {RESULTS.relative_to(HERE.parent)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
