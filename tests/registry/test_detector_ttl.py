"""A detector event's own TTL (``DetectorEvent.ttl_ns``) in the registry core."""

from __future__ import annotations

import msgspec
import pytest

from services.registry.registry import MAX_TTL_NS, Registry
from services.registry.zones import NS, Rules, TimeframeRules, ZoneError
from shared.messages import DECODER, ENCODER, DetectorEvent, ZoneExpired, encode

T0 = 1_700_000_000 * NS
H1_TTL = 7200 * NS


def registry() -> Registry:
    return Registry(Rules(timeframes={"H1": TimeframeRules(ttl_ns=H1_TTL)}), T0)


def test_a_ttl_of_its_own_sets_the_deadline_and_0_means_the_configured_one() -> None:
    reg = registry()
    own = reg.create("pm.a", "H1", "custom", 0.9, 0.8, 1.0, T0, T0, ttl_ns=30 * NS)
    configured = reg.create("pm.a", "H1", "custom", 0.7, 0.6, 1.0, T0, T0)
    longest = reg.create("pm.a", "H1", "custom", 0.5, 0.4, 1.0, T0, T0, ttl_ns=MAX_TTL_NS)
    assert own is not None and configured is not None and longest is not None
    assert (own.expires_ns, configured.expires_ns, longest.expires_ns) == (
        T0 + 30 * NS,
        T0 + H1_TTL,
        T0 + MAX_TTL_NS,
    )
    reg.drain()
    reg.advance(T0 + 30 * NS)
    assert [e.zone.id for e in reg.drain() if isinstance(e, ZoneExpired)] == [own.id]
    reg.advance(T0 + MAX_TTL_NS)
    expired = [e.zone.id for e in reg.drain() if isinstance(e, ZoneExpired)]
    assert set(expired) == {configured.id, longest.id}


def test_wheel_horizon_is_seven_days() -> None:
    assert MAX_TTL_NS == 7 * 86400 * NS


@pytest.mark.parametrize("ttl_ns", [-1, -H1_TTL, MAX_TTL_NS + 1, 2**62])
def test_a_negative_or_absurd_ttl_is_a_counted_reject(ttl_ns: int) -> None:
    reg = registry()
    with pytest.raises(ZoneError) as err:
        reg.create("pm.a", "H1", "custom", 0.9, 0.8, 1.0, T0, T0, ttl_ns=ttl_ns)
    assert err.value.reason == "bad_ttl"
    assert reg.stats.rejected == {"bad_ttl": 1}
    assert len(reg) == 0 and reg.drain() == []


class OldDetectorEvent(msgspec.Struct, tag="DetectorEvent", tag_field="type", kw_only=True):
    """DetectorEvent as it was before ``ttl_ns``."""

    detector: str
    symbol: str
    timeframe: str
    kind: str
    top: float
    bottom: float
    strength: float = 1.0
    created_ns: int = 0


def test_ttl_ns_keeps_old_and_new_decoders_compatible() -> None:
    fields = dict(detector="d", symbol="pm.a", timeframe="H1", kind="custom", top=0.9, bottom=0.8)
    from_old = DECODER.decode(ENCODER.encode(OldDetectorEvent(**fields)))  # type: ignore[arg-type]
    assert from_old == DetectorEvent(**fields) and from_old.ttl_ns == 0  # type: ignore[arg-type]
    old = msgspec.msgpack.Decoder(OldDetectorEvent)
    assert old.decode(encode(DetectorEvent(ttl_ns=5 * NS, **fields))) == OldDetectorEvent(**fields)  # type: ignore[arg-type]
