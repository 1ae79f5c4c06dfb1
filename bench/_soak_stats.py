"""The soak's arithmetic and process sampling: pure functions over /proc and metric samples."""

from __future__ import annotations

import math
import os
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


def slope_per_hour(series: list[tuple[float, float]]) -> float:
    """Least-squares slope of ``(seconds, value)`` points, per hour; 0 for fewer than two points."""
    if len(series) < 2:
        return 0.0
    n = len(series)
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return 0.0
    return sum((t - mt) * (v - mv) for t, v in series) / var * 3600


def slope_stderr_per_hour(series: list[tuple[float, float]]) -> float:
    """The standard error of :func:`slope_per_hour` (per hour), from the residuals of the fit; 0
    for fewer than three points. A slope within about two of these of the goal does not decide it:
    RSS moves by a megabyte or two with what the allocator keeps, whatever the heap holds."""
    n = len(series)
    if n < 3:
        return 0.0
    mt = sum(t for t, _ in series) / n
    mv = sum(v for _, v in series) / n
    var = sum((t - mt) ** 2 for t, _ in series)
    if var == 0:
        return 0.0
    b = sum((t - mt) * (v - mv) for t, v in series) / var
    residual = sum((v - mv - b * (t - mt)) ** 2 for t, v in series) / (n - 2)
    return math.sqrt(residual / var) * 3600


def histogram_quantile(metrics: dict[str, float], bucket: str, q: float) -> float | None:
    """Prometheus' ``histogram_quantile`` over one scrape: linear inside the bucket that holds it.

    ``metrics`` maps ``name{le=X,...}`` to cumulative counts; None if the histogram is absent or empty.
    """
    edges: dict[float, float] = {}
    for key, count in metrics.items():
        if not key.startswith(bucket + "{"):
            continue
        labels = dict(part.split("=", 1) for part in key[len(bucket) + 1 : -1].split(","))
        le = float(labels["le"])
        edges[le] = edges.get(le, 0.0) + count
    if not edges:
        return None
    bounds = sorted(edges)
    total = edges[bounds[-1]]
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for upper in bounds:
        count = edges[upper]
        if count >= rank:
            if math.isinf(upper):
                return lower  # in the open bucket: its lower edge is all that is known
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = upper, count
    return lower


def parents() -> dict[int, list[int]]:
    """``ppid -> [pid]`` of every process (the kernel may not offer /proc/PID/task/TID/children)."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def tree_usage(pid: int, tree: dict[int, list[int]] | None = None) -> dict[str, float]:
    """RSS (bytes), CPU time (s) and open fds of ``pid`` and every process below it; ``anon``: the
    part of the RSS no file backs (statm's resident less shared: heaps, stacks, arenas), which
    leaves out the library and code pages a process touches for the first time late in a run."""
    children = parents() if tree is None else tree
    rss = anon = cpu = fds = 0.0
    stack = [pid]
    while stack:
        p = stack.pop()
        try:
            statm = Path(f"/proc/{p}/statm").read_text().split()
            stat = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            rss += int(statm[1]) * PAGE
            anon += (int(statm[1]) - int(statm[2])) * PAGE
            cpu += (int(stat[11]) + int(stat[12])) / TICKS  # utime, stime
            fds += len(os.listdir(f"/proc/{p}/fd"))
        except (OSError, IndexError, ValueError):
            continue  # gone between the listing and the read
        stack.extend(children.get(p, []))
    return {"rss": rss, "anon": anon, "cpu_s": cpu, "fds": fds}
