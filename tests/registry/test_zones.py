"""zones.py's checks and ids, on the values at their edges."""

import math

import pytest

from services.registry.zones import ZoneError, check_range, finite, zone_id

NON_FINITE = [math.nan, math.inf, -math.inf, -math.nan]


@pytest.mark.parametrize("x", [0.0, -0.0, 1e-300, -1e308, 1.7976931348623157e308, 5e-324])
def test_a_finite_float_is_finite(x: float) -> None:
    assert finite(x)


@pytest.mark.parametrize("x", NON_FINITE)
def test_nan_and_the_infinities_are_not_finite(x: float) -> None:
    assert not finite(x)


@pytest.mark.parametrize("x", NON_FINITE)
@pytest.mark.parametrize("where", ["top", "bottom", "strength"])
def test_a_range_with_a_non_finite_number_is_refused_by_its_reason(x: float, where: str) -> None:
    args = {"top": 2.0, "bottom": 1.0, "strength": 0.5} | {where: x}
    with pytest.raises(ZoneError) as err:
        check_range(**args)
    assert err.value.reason == ("bad_strength" if where == "strength" else "bad_range")


def test_a_zone_id_is_the_same_for_the_same_detection_and_differs_for_another() -> None:
    ns = 1_700_000_000_123_456_789
    a = zone_id("H1", ns, "pm.a", "fvg_bullish", 2.0, 1.0)
    assert a == zone_id("H1", ns, "pm.a", "fvg_bullish", 2.0, 1.0)
    assert a == "H1_20231114T221320Z_e197ba7c8368"  # ids are kept in stores: never a new one for it
    assert a != zone_id("H1", ns, "pm.a", "fvg_bullish", 2.0, 1.5)
    assert a != zone_id("H1", ns + 1, "pm.a", "fvg_bullish", 2.0, 1.0)
    assert a != zone_id("H1", ns, "pm.a", "fvg_bearish", 2.0, 1.0)
