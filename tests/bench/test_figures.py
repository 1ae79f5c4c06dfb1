"""The benchmarks' own arithmetic: CPU per update, the curves' growth, which tables get drawn."""

import os
import threading
import time
from pathlib import Path

import pytest

from bench import plots
from bench._pipeline_stats import Window, figures, pinned_figures, sleeps_of
from bench.scaling import _curve

S = 1_000_000_000


def _window(rate: int, cpu_s: dict[str, float], latencies: list[float], updates: int | None = None) -> Window:
    w = Window(rate, 0, 10 * S, rate * 10 if updates is None else updates, 0.0, cpu_s)
    w.latencies_ms = latencies
    w.probes = len(latencies)
    return w


def test_sleeps_count_the_waits_of_every_thread_of_the_process() -> None:
    """Each time a thread blocks (here 20 short sleeps: what is measured, not a synchronization)
    is one voluntary switch, counted for the process whichever thread it is."""
    slept, release = threading.Event(), threading.Event()

    def sleeper() -> None:
        for _ in range(20):
            time.sleep(0.0005)
        slept.set()
        release.wait(10)

    before = sleeps_of(os.getpid())
    thread = threading.Thread(target=sleeper)
    thread.start()
    try:
        assert slept.wait(10)
        assert sleeps_of(os.getpid()) - before >= 20  # read while the thread still lives
    finally:
        release.set()
        thread.join(10)


def test_cpu_per_update_counts_every_process_but_the_driver() -> None:
    w = _window(10_000, {"simulator": 3.0, "ingest": 2.0, "registry": 1.0, "alerts": 0.5}, [1.0])
    assert w.cpu_us_per_update() == pytest.approx(1e6 * 3.5 / 100_000)
    assert w.cpu_us_per_update("ingest") == pytest.approx(20.0)
    assert w.cpu["simulator"] == pytest.approx(30.0)  # % of a core over the 10 s window


def test_pipeline_figures_carry_per_service_cpu_and_the_p99_curve() -> None:
    cpu = {"simulator": 3.0, "ingest": 3.0, "registry": 1.0, "alerts": 1.0}
    main = _window(10_000, cpu, [float(i) for i in range(1, 101)])
    low = _window(1_000, cpu, [1.0] * 100)
    top = _window(30_000, cpu, [20.0] * 100, updates=200_000)  # the driver reached 20 k/s
    out = figures(main, low, [_window(15_000, cpu, [2.0]), top], 0)
    assert out["pipeline.cpu_us_per_update"]["value"] == pytest.approx(50.0)
    assert "pipeline.cpu_us_per_update_simulator" not in out
    assert out["pipeline.cpu_us_per_update_registry"]["value"] == pytest.approx(10.0)
    # each service over the simulator's CPU in the same window, as the total is
    assert out["pipeline.cpu_ratio_to_simulator_ingest"]["value"] == pytest.approx(1.0)
    assert out["pipeline.cpu_ratio_to_simulator_registry"]["value"] == pytest.approx(1 / 3)
    assert "pipeline.cpu_ratio_to_simulator_simulator" not in out
    rows = out["pipeline.scaling_p99_ms"]["table"]["rows"]
    assert [r[0] for r in rows] == [1_000, 10_000, 30_000]
    assert rows[-1][3] == 20_000
    assert out["pipeline.scaling_p99_ms"]["value"] == pytest.approx(20.0)


def test_a_curve_is_its_growth_from_the_first_point_to_the_last() -> None:
    fig = _curve(["pools", "events_per_s"], [[10, 2e6], [1000, 1.5e6], [10_000, 1e6]], "events/s")
    assert fig["value"] == pytest.approx(0.5)
    assert fig["table"]["rows"][0] == [10, 2e6]


def test_only_well_formed_tables_are_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = {"value": 1.0, "table": {"columns": ["x", "y"], "rows": [[1, 2.0], [10, 3.0]]}}
    results = {
        "a.plain": {"value": 1.0},
        "a.good": good,
        "a.nan": {"value": 1.0, "table": {"columns": ["x", "y"], "rows": [[1, float("nan")]]}},
        "a.short": {"value": 1.0, "table": {"columns": ["x"], "rows": [[1]]}},
    }
    assert list(plots.curves(results)) == ["a.good"]
    assert "a.nan" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    path = plots.draw(results, tmp_path / "curves.png")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plots.draw({"a.plain": {"value": 1.0}}, tmp_path / "none.png") is None


def test_pinned_figures_say_where_each_process_ran() -> None:
    w = _window(10_000, {"simulator": 3.0, "ingest": 3.0, "registry": 1.0, "alerts": 1.0}, [2.0] * 99 + [9.0])
    w.hops_ms = {"registry": [1.0, 2.0]}
    out = pinned_figures(w, {"ingest": 0, "alerts": 1})
    assert out["pipeline.p99_ms_pinned"]["value"] == 9.0
    assert "ingest: 0, alerts: 1" in out["pipeline.p99_ms_pinned"]["note"]
    assert set(out) >= {"pipeline.hop_registry_p99_ms_pinned", "pipeline.cpu_us_per_update_pinned"}
