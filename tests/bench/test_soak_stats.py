"""The soak's arithmetic and /proc sampling, on known inputs and a real child process."""

import os
import subprocess
import sys

import pytest

from bench._soak_stats import (
    histogram_quantile,
    parents,
    slope_per_hour,
    slope_stderr_per_hour,
    tree_usage,
)

MB = 1024 * 1024


def test_slope_is_per_hour_and_flat_is_zero() -> None:
    assert slope_per_hour([(0, 100.0), (1800, 101.0), (3600, 102.0)]) == pytest.approx(2.0)
    assert slope_per_hour([(0, 5.0), (60, 5.0), (120, 5.0)]) == 0.0
    assert slope_per_hour([(0, 5.0)]) == 0.0


def test_slope_stderr_is_zero_on_a_line_and_shrinks_with_more_points() -> None:
    assert slope_stderr_per_hour([(t, 50.0 + t / 3600) for t in range(0, 1800, 60)]) == pytest.approx(0)
    assert slope_stderr_per_hour([(0, 5.0), (60, 6.0)]) == 0.0

    def noisy(step: int) -> list[tuple[float, float]]:  # +-1 MB alternating around a flat line
        return [(float(t), 80.0 + (1 if (t // step) % 2 else -1)) for t in range(0, 1800, step)]

    coarse, fine = slope_stderr_per_hour(noisy(60)), slope_stderr_per_hour(noisy(10))
    assert coarse > 1.0  # 30 points a half hour cannot tell 1 MB/hour from this noise
    assert fine < coarse / 2


def test_summary_slopes_come_from_the_fine_rss_samples() -> None:
    from bench._soak import BusWatch, summarize

    full = [
        {"t": float(t), "procs": {"a": {"rss": 80 * MB, "cpu_s": t / 10, "fds": 9}}, "metrics": {}}
        for t in range(0, 1801, 600)
    ]
    rss = [{"t": float(t), "rss": {"a": int((80 + t / 3600) * MB)}} for t in range(0, 1801, 10)]
    watch = BusWatch([])  # not started: nothing heard
    out = summarize(full, watch, 30, rss)["services"]["a"]
    assert out["rss_slope_mb_per_hour_second_half"] == pytest.approx(1.0, abs=0.01)
    assert out["rss_slope_stderr_mb_per_hour"] < 0.01
    assert "anon_slope_mb_per_hour_second_half" not in out  # samples without it: left out
    for i, sample in enumerate(rss):  # a file-backed part that grows: the anonymous part is flat
        sample["anon"] = {"a": int((60 + (i % 2) * 1e-3) * MB)}
    anon = summarize(full, watch, 30, rss)["services"]["a"]
    assert anon["rss_slope_mb_per_hour_second_half"] == pytest.approx(1.0, abs=0.01)
    assert anon["anon_slope_mb_per_hour_second_half"] == pytest.approx(0.0, abs=0.01)
    assert anon["anon_mb_end"] == 60.0
    flat = summarize(full, watch, 30)["services"]["a"]  # no fine samples: the full ones
    assert flat["rss_slope_mb_per_hour_second_half"] == 0.0


def test_summary_reports_each_service_heaps_over_the_second_half() -> None:
    from bench._soak import BLOCKS, SQLITE, BusWatch, summarize

    def sample(t: int) -> dict[str, object]:
        # the registry's objects grow 1 000 blocks an hour; its SQLite heap peaks at 3 MB
        heaps = {BLOCKS: 500_000 + t * 1000 / 3600, SQLITE: (3 if t == 1200 else 2) * MB}
        heaps["poolwire_bus_topics{socket=pub}"] = 100 + t // 60  # a topic a minute, still filling
        procs = {n: {"rss": 80 * MB, "cpu_s": 0.0, "fds": 9} for n in ("registry", "exex")}
        return {"t": float(t), "procs": procs, "metrics": {"registry": heaps}}

    out = summarize([sample(t) for t in range(0, 1801, 60)], BusWatch([]), 30)["services"]
    assert out["registry"]["python_blocks_slope_per_hour_second_half"] == pytest.approx(1000, abs=1)
    assert out["registry"]["python_blocks_end"] == 500_500
    assert out["registry"]["sqlite_mb_end"] == 2.0
    assert out["registry"]["sqlite_mb_max_second_half"] == 3.0
    assert out["registry"]["bus_topics_pub_end"] == 130
    assert out["registry"]["bus_topics_pub_added_second_half"] == 15
    assert "python_blocks_end" not in out["exex"]  # no metrics endpoint: no heap figures


def test_floor_summary_counts_stalls_per_minute_by_bound() -> None:
    from bench._floor import summarize as floor_summary

    late = [0.1] * 980 + [6.0] * 10 + [25.0] * 8 + [60.0, 130.0]  # 1 000 wakes in 2 minutes
    out = floor_summary(late, 2.0)
    assert out["stalls_per_min"] == {"5ms": 10.0, "20ms": 5.0, "50ms": 1.0, "100ms": 0.5}
    assert out["p99_ms"] == 25.0 and out["max_ms"] == 130.0
    assert floor_summary([], 1.0)["max_ms"] is None


def test_histogram_quantile_interpolates_inside_its_bucket() -> None:
    name = "lag_seconds_bucket"
    # 100 observations: 50 in (0, 0.001], 40 in (0.001, 0.005], 9 in (0.005, 0.05], 1 above
    metrics = {
        f"{name}{{le=0.001}}": 50.0,
        f"{name}{{le=0.005}}": 90.0,
        f"{name}{{le=0.05}}": 99.0,
        f"{name}{{le=+Inf}}": 100.0,
        "lag_seconds_count": 100.0,
    }
    assert histogram_quantile(metrics, name, 0.5) == pytest.approx(0.001)
    assert histogram_quantile(metrics, name, 0.7) == pytest.approx(0.001 + 0.004 * 20 / 40)
    assert histogram_quantile(metrics, name, 0.99) == pytest.approx(0.05)
    assert histogram_quantile(metrics, name, 0.999) == pytest.approx(0.05)  # open bucket: its lower edge
    assert histogram_quantile({}, name, 0.5) is None


def test_tree_usage_counts_a_child_process() -> None:
    code = "import sys; block = bytearray(80 * 1024 * 1024); print('ready', flush=True); sys.stdin.read()"
    with subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as child:
        try:
            assert child.stdout is not None and child.stdout.readline() == "ready\n"
            alone = tree_usage(child.pid)
            with_child = tree_usage(os.getpid(), parents())
            assert alone["rss"] >= 80 * MB
            assert 80 * MB <= alone["anon"] <= alone["rss"]  # the bytearray: no file backs it
            assert with_child["rss"] >= alone["rss"] + tree_usage(os.getpid(), {})["rss"] * 0.9
            assert alone["fds"] >= 3 and alone["cpu_s"] >= 0
        finally:
            child.kill()
