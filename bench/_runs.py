"""Figures over several runs of the benchmarks (``make bench RUNS=3``): each one's median, range and
every run's value, so that an absolute figure carries its spread on this shared, noisy machine.

A figure's other fields (unit, note, table) are the last run's. A goal computed in each run (the
pipeline's CPU goal is in that run's microseconds) becomes the median of the runs' targets, so the
median value is judged against the median goal.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

Figure = dict[str, Any]
_GOAL = re.compile(r"^\s*(>=|<=|>|<)\s*([-+0-9.eE]+)\s*$")


def parse_goal(goal: str | None) -> tuple[str, float] | None:
    """``">= 0.6"`` -> ``(">=", 0.6)``; None for no goal or one that is not a comparison."""
    match = _GOAL.match(goal or "")
    return None if match is None else (match.group(1), float(match.group(2)))


def met(value: float, goal: str | None) -> bool | None:
    parsed = parse_goal(goal)
    if parsed is None:
        return None
    op, target = parsed
    return {">=": value >= target, "<=": value <= target, ">": value > target, "<": value < target}[op]


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _goal(goals: list[str | None]) -> str | None:
    """The runs' goal: theirs if they agree, else the median target of one comparison."""
    if len(set(goals)) <= 1:
        return goals[-1]
    parsed = [parse_goal(g) for g in goals]
    ops = {p[0] for p in parsed if p is not None}
    if len(ops) != 1 or any(p is None for p in parsed):
        return goals[-1]
    target = statistics.median(p[1] for p in parsed if p is not None)
    return f"{ops.pop()} {target:.4g}"


def combine(runs: list[dict[str, Figure]]) -> dict[str, Figure]:
    """One figure per name over ``runs`` (a name missing from a run, its module having failed
    there, is over the runs that have it)."""
    out: dict[str, Figure] = {}
    names = dict.fromkeys(name for run in runs for name in run)
    for name in names:
        figs = [run[name] for run in runs if name in run]
        fig = dict(figs[-1])
        values = [_number(f.get("value")) for f in figs]
        numbers = [v for v in values if v is not None]
        if len(numbers) == len(values) and len(numbers) > 1:
            fig["value"] = statistics.median(numbers)
            fig["runs"] = numbers
            fig["range"] = [min(numbers), max(numbers)]
            fig["goal"] = _goal([f.get("goal") for f in figs])
        out[name] = fig
    return out
