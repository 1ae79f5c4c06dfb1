"""What registry accepts from outside: one pure check per DetectorEvent, price and stored zone.

msgspec's bounds on :class:`~shared.messages.DetectorEvent` refuse most nonsense at decode time
(counted by the Puller as decode errors). These checks add what a schema cannot say: times against
now, names in UTF-8 bytes, configured timeframes, the relation of top and bottom. A service must
not rely on the schema alone (an older or a hand-built decoder lets more through), so every bound
the schema has is checked here again.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

from services.registry.zones import NS
from shared.messages import DetectorEvent, Message, Zone

MIN_TIME_NS = 946_684_800 * NS  # 2000-01-01T00:00:00Z: no zone or tick is older
MAX_NAME_BYTES = 128
MAX_TTL_NS = 7 * 86400 * NS  # the horizon the wheel is laid out for (wheel.py)
DEFAULT_HORIZON_NS = 86400 * NS
# Above any price a pool can have (Uniswap's TickMath tops out near 3.4e38 in raw units), and far
# enough from float's end (1.8e308) that a zone's reach (top + tolerance) stays finite.
MAX_PRICE = 1e40
# Control characters (C0, DEL, C1) and Unicode line breaks would reach topics and log lines verbatim.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

# Every reason a detector event is refused for, exported at 0 from the start.
EVENT_REASONS = (
    "wrong_type",  # another message type on the PULL socket
    "bad_name",  # detector, symbol, kind or timeframe empty, over 128 bytes, or with control chars
    "unknown_timeframe",  # not in pools
    "bad_time",  # created_ns or event_ns before 2000-01-01 or beyond now + future_horizon
    "bad_ttl",  # ttl_ns negative or over 7 days
    "bad_price",  # top or bottom not finite, <= 0 or above MAX_PRICE
    "bad_range",  # top below bottom
    "bad_strength",  # strength not finite, or negative
    "internal",  # handling the event raised (a bug): logged with its traceback
)
PRICE_REASONS = ("bad_symbol", "bad_time", "internal")  # prices on px.* the service cannot take


class Refusal(NamedTuple):
    reason: str
    detail: str


@dataclass(frozen=True, slots=True)
class Limits:
    timeframes: frozenset[str]
    horizon_ns: int = DEFAULT_HORIZON_NS  # how far past now a time may lie (clock skew)
    max_ttl_ns: int = MAX_TTL_NS  # the longest TTL a stored zone may have (configured ones included)


def check_name(field: str, value: object) -> Refusal | None:
    if not isinstance(value, str) or not value:
        return Refusal("bad_name", f"{field} is empty or not a string")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return Refusal("bad_name", f"{field} is not valid UTF-8")
    if size > MAX_NAME_BYTES:
        return Refusal("bad_name", f"{field} is {size} bytes long (at most {MAX_NAME_BYTES})")
    if _CONTROL.search(value):
        return Refusal("bad_name", f"{field} {value!r} holds control characters")
    return None


def check_time(
    field: str, value: object, now_ns: int, limits: Limits, *, zero_ok: bool = True
) -> Refusal | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return Refusal("bad_time", f"{field} is not an integer")
    if value == 0 and zero_ok:
        return None
    if not MIN_TIME_NS <= value <= now_ns + limits.horizon_ns:
        return Refusal(
            "bad_time",
            f"{field} {value} is outside [2000-01-01, now + {limits.horizon_ns // NS} s]",
        )
    return None


def _positive(value: object, top: float = math.inf) -> bool:
    """A finite number in ``(0, top]``."""
    if not isinstance(value, float | int) or isinstance(value, bool):
        return False
    return 0 < value <= top and (isinstance(value, int) or math.isfinite(value))


def check_event(event: Message, now_ns: int, limits: Limits) -> Refusal | None:
    """None when ``event`` can become a zone; else the first reason it cannot."""
    if not isinstance(event, DetectorEvent):
        return Refusal("wrong_type", f"{type(event).__name__} on the detector PULL socket")
    for field in ("detector", "symbol", "kind", "timeframe"):
        refusal = check_name(field, getattr(event, field))
        if refusal is not None:
            return refusal
    if event.timeframe not in limits.timeframes:
        return Refusal("unknown_timeframe", f"timeframe {event.timeframe!r} is not configured")
    for field in ("created_ns", "event_ns"):
        refusal = check_time(field, getattr(event, field), now_ns, limits)
        if refusal is not None:
            return refusal
    ttl = event.ttl_ns
    if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL_NS:
        return Refusal("bad_ttl", f"ttl_ns {ttl!r} is outside [0, {MAX_TTL_NS}] (0: configured)")
    top, bottom = event.top, event.bottom
    if not (_positive(top, MAX_PRICE) and _positive(bottom, MAX_PRICE)):
        return Refusal("bad_price", f"top {top!r} and bottom {bottom!r} must be in (0, {MAX_PRICE:g}]")
    if top < bottom:
        return Refusal("bad_range", f"top {top!r} is below bottom {bottom!r}")
    strength = event.strength
    if not (_positive(strength) or strength == 0):
        return Refusal("bad_strength", f"strength {strength!r} must be finite and >= 0")
    return None


def check_price_input(symbol: object, event_ns: object, now_ns: int, limits: Limits) -> Refusal | None:
    """A price the detectors can bucket: a sane symbol and a time (0: receive time) near now."""
    refusal = check_name("symbol", symbol)
    if refusal is not None:
        return Refusal("bad_symbol", refusal.detail)
    return check_time("event_ns", event_ns, now_ns, limits)


def check_stored(zone: Zone, now_ns: int, limits: Limits) -> Refusal | None:
    """A zone read back from the store that a DetectorEvent could have made (an older version let
    ``created_ns = 2**63 - 1`` in: such a zone would never expire)."""
    for field in ("symbol", "kind", "timeframe"):
        refusal = check_name(field, getattr(zone, field))
        if refusal is not None:
            return refusal
    refusal = check_time("created_ns", zone.created_ns, now_ns, limits, zero_ok=False)
    if refusal is not None:
        return refusal
    if zone.expires_ns - zone.created_ns > limits.max_ttl_ns:
        return Refusal("bad_ttl", f"expires_ns {zone.expires_ns} is not within the longest TTL of created_ns")
    if not (math.isfinite(zone.top) and math.isfinite(zone.bottom)):
        return Refusal("bad_price", f"top {zone.top!r} and bottom {zone.bottom!r} must be finite")
    if zone.top < zone.bottom:
        return Refusal("bad_range", f"top {zone.top!r} is below bottom {zone.bottom!r}")
    return None
