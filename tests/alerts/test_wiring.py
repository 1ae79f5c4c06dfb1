"""What alerts subscribes to: the inputs its strategies read (services/alerts/wiring.py)."""

from __future__ import annotations

from typing import Any

import pytest

from services.alerts.wiring import ALL_INPUTS, input_prefixes
from tests.alerts.test_events import config, cross, touch


def prefixes(*strategies: dict[str, Any]) -> tuple[str, ...]:
    return input_prefixes(config(*strategies).strategies)


def test_a_bucketed_strategy_reads_every_input() -> None:
    bucketed = {"id": "m", "kind": "percent_move", "params": {"pct": 1}}
    assert ALL_INPUTS == ("px.", "md.trade.", "dex.swap.", "zone.")
    assert prefixes(bucketed) == ALL_INPUTS
    assert prefixes(touch(), bucketed) == ALL_INPUTS


@pytest.mark.parametrize(
    ("strategies", "expected"),
    [
        ([], ()),
        ([touch()], ("zone.touched.",)),  # the default events: touched
        ([touch(params={"events": ["created", "touched"]})], ("zone.created.", "zone.touched.")),
        (
            [touch(params={"events": ["expired"], "timeframes": ["H1", "H4"]})],
            ("zone.expired.H1.", "zone.expired.H4."),
        ),
        # one strategy on any timeframe covers another's H1 only
        ([touch(params={"timeframes": ["H1"]}), touch("u")], ("zone.touched.",)),
        ([cross(universe=["pm.1234", "pm.77*"])], ("px.pm.1234", "px.pm.77")),
        ([cross(universe=["pm.1?", "dex.[ab]*"])], ("px.dex.", "px.pm.1")),
        ([cross(universe="discover"), cross("y", universe=["pm.1"])], ("px.",)),
        ([cross(), touch()], ("px.pm.", "zone.touched.")),
    ],
)
def test_event_strategies_read_what_they_check(
    strategies: list[dict[str, Any]], expected: tuple[str, ...]
) -> None:
    assert prefixes(*strategies) == expected
