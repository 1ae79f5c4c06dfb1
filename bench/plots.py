"""The scaling curves of bench/results.json as one PNG, a panel per curve: ``python -m bench.plots``
(``make bench`` draws it after the run).

A curve is any figure with a ``table`` (``columns`` and ``rows``; the first column is x, the second
y): ``scaling.*`` and ``pipeline.scaling_p99_ms``. x is drawn on a log scale (the points are decades
or near it). Without matplotlib (a dev dependency), nothing is drawn and the reason is printed.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results.json"
PNG = HERE / "scaling.png"


def _finite(*values: Any) -> bool:
    return all(isinstance(v, int | float) and math.isfinite(v) for v in values)


def curves(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The figures that carry a well-formed table, by name; a malformed one is skipped and said."""
    out: dict[str, dict[str, Any]] = {}
    for name, fig in sorted(results.items()):
        table = fig.get("table") if isinstance(fig, dict) else None
        if table is None:
            continue
        rows = table.get("rows") or []
        cols = table.get("columns") or []
        if (
            len(cols) < 2
            or not rows
            or not all(len(r) >= 2 and _finite(r[0], r[1]) and r[0] > 0 for r in rows)
        ):
            print(
                f"plots: {name}: a table needs 2+ columns and rows of finite numbers; skipped",
                file=sys.stderr,
            )
            continue
        out[name] = table
    return out


def draw(results: dict[str, Any], path: Path = PNG) -> Path | None:
    """Write the panels to ``path``; None (and why, on stderr) when there is nothing to draw."""
    found = curves(results)
    if not found:
        print("plots: no curve in the results", file=sys.stderr)
        return None
    try:
        import matplotlib
    except ImportError:
        print("plots: matplotlib is not installed (pip install -e '.[dev]'); no plot", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 2 if len(found) > 1 else 1
    rows = (len(found) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.0 * cols, 3.8 * rows), squeeze=False)
    for ax, (name, table) in zip(axes.flat, found.items(), strict=False):
        xs = [float(r[0]) for r in table["rows"]]
        ys = [float(r[1]) for r in table["rows"]]
        achieved = table["columns"].index("achieved_per_s") if "achieved_per_s" in table["columns"] else None
        ax.plot(xs, ys, marker="o")
        for row, x, y in zip(table["rows"], xs, ys, strict=True):
            label = f"{y:.3g}"
            if achieved is not None and row[achieved] < 0.95 * x:  # the driver did not keep the rate
                label += f"\n(achieved {row[achieved]:,.0f}/s)"
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xticks(xs, [f"{x:,.0f}" for x in xs])
        ax.minorticks_off()
        ax.set_ylim(bottom=0, top=max(ys) * 1.3)
        ax.set_xlabel(table["columns"][0].replace("_", " "))
        ax.set_ylabel(table.get("unit") or table["columns"][1].replace("_", " "))
        ax.set_title(name, fontsize=9)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(found) :]:
        ax.set_visible(False)
    fig.suptitle("make bench: cost as the work grows (this 2-core machine)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main() -> int:
    if not RESULTS.exists():
        print(f"plots: {RESULTS} not found: run make bench first", file=sys.stderr)
        return 1
    written = draw(json.loads(RESULTS.read_text()))
    if written:
        print(f"plots: {written.relative_to(HERE.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
