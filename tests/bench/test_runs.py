"""Figures over several runs: medians, ranges, and goals computed per run."""

import pytest

from bench._runs import combine, met, parse_goal


def test_a_figure_over_runs_is_its_median_with_its_range_and_every_value() -> None:
    runs = [{"x.p99_ms": {"value": v, "unit": "ms", "goal": "<= 3"}} for v in (3.9, 2.8, 3.1)]
    fig = combine(runs)["x.p99_ms"]
    assert fig["value"] == pytest.approx(3.1)
    assert fig["range"] == [2.8, 3.9]
    assert fig["runs"] == [3.9, 2.8, 3.1]
    assert (fig["unit"], fig["goal"]) == ("ms", "<= 3")
    assert met(fig["value"], fig["goal"]) is False


def test_one_run_leaves_the_figures_as_they_are() -> None:
    fig = {"value": 1.5, "unit": "x", "goal": ">= 1", "table": {"columns": ["a"], "rows": [[1]]}}
    assert combine([{"x.y": fig}]) == {"x.y": fig}


def test_a_goal_computed_in_each_run_becomes_the_median_target() -> None:
    """The pipeline's CPU goal is in each run's microseconds: the median value meets the median goal."""
    runs = [
        {"p.cpu": {"value": 30.0, "goal": "<= 21.0"}},
        {"p.cpu": {"value": 20.0, "goal": "<= 19.0"}},
        {"p.cpu": {"value": 25.0, "goal": "<= 26.0"}},
    ]
    fig = combine(runs)["p.cpu"]
    assert (fig["value"], fig["goal"]) == (25.0, "<= 21")
    assert met(fig["value"], fig["goal"]) is False


def test_a_figure_a_failed_run_lacks_is_over_the_runs_that_have_it() -> None:
    runs = [{"a.x": {"value": 1.0}, "b.y": {"value": 5.0}}, {"a.x": {"value": 3.0}}, {"a.x": {"value": 2.0}}]
    out = combine(runs)
    assert out["a.x"]["range"] == [1.0, 3.0]
    assert out["b.y"] == {"value": 5.0}


def test_a_value_that_is_not_a_number_in_some_run_is_the_last_runs() -> None:
    runs: list[dict[str, dict[str, object]]] = [
        {"a.x": {"value": 2.0}},
        {"a.x": {"value": None, "status": "pure"}},
    ]
    assert combine(runs)["a.x"] == {"value": None, "status": "pure"}


def test_goals_parse_as_comparisons_only() -> None:
    assert parse_goal(">= 0.6") == (">=", 0.6)
    assert parse_goal("") is None and parse_goal("fast") is None
    assert met(1.0, "fast") is None
