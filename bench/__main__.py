"""``make bench [ONLY=service]``: run every benchmark module, print a table, write bench/results.json.

A benchmark module is ``bench/<name>.py`` (not ``_private``, not ``plots``) with
``run() -> dict[str, Figure]`` where a figure is ``{"value": number, "unit": str, "goal": str}``
and names are ``<name>.<figure>``. The goal is a
comparison like ``">= 0.6"`` or ``"<= 15"``; ``met`` says whether the value meets it. A figure may
carry a ``table`` (a scaling curve): ``bench/plots.py`` draws those into bench/scaling.png after
the run. ``bench.seconds_<module>`` is how long each module took (``make bench`` should stay
under 5 minutes on the 2-core machine: their sum). ``--runs N`` (``make bench RUNS=3``) runs them
N times: each figure is then the median, with its range and every run's value (bench/_runs.py).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from bench._runs import combine, met
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


def run_modules(names: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Each module's figures and how long it took; the modules that raised."""
    results: dict[str, Any] = {}
    failed = []
    for name in names:
        t0 = time.perf_counter()
        print(f"== {name} ...", file=sys.stderr, flush=True)
        try:
            figures = importlib.import_module(f"bench.{name}").run()
        except Exception:
            traceback.print_exc()
            failed.append(name)
            continue
        results.update(figures)
        seconds = time.perf_counter() - t0
        results[f"bench.seconds_{name}"] = {"value": seconds, "unit": "s", "goal": ""}
        print(f"   {name}: {seconds:.1f} s", file=sys.stderr, flush=True)
    return results, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", help="one service's benchmarks (module name in bench/)")
    parser.add_argument("--runs", type=int, default=1, help="run them N times: medians, ranges, every value")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs {args.runs}: at least 1")
    names = [args.only] if args.only else modules()
    results: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    started = time.perf_counter()
    runs: list[dict[str, Any]] = []
    failed: set[str] = set()
    for i in range(args.runs):
        if args.runs > 1:
            print(f"== run {i + 1} of {args.runs}", file=sys.stderr, flush=True)
        figures, run_failed = run_modules(names)
        runs.append(figures)
        failed.update(run_failed)
    for key, fig in combine(runs).items():
        value = fig["value"]
        fig["met"] = None if value is None else met(float(value), fig.get("goal"))
        results[key] = fig
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    draw(results)
    width = max((len(k) for k in results), default=10)
    print(f"\n{'figure':<{width}}  {'value':>14}  {'unit':<10}  {'goal':<10}  met")
    for key in sorted(
        results, key=lambda k: (ORDER.index(k.split(".")[0]) if k.split(".")[0] in ORDER else 99, k)
    ):
        fig = results[key]
        mark = {True: "yes", False: "NO", None: "-"}[fig.get("met")]
        spread = f"  {fig['range'][0]:,.3f} - {fig['range'][1]:,.3f}" if "range" in fig else ""
        value = "-" if fig["value"] is None else f"{fig['value']:,.3f}"
        print(
            f"{key:<{width}}  {value:>14}  {fig.get('unit', ''):<10}  {fig.get('goal') or '':<10}  {mark:<3}{spread}"
        )
    print(
        f"\n{len(results)} figures in {time.perf_counter() - started:.0f} s -> {RESULTS.relative_to(HERE.parent)}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
