"""Zone vocabulary: ids, kinds, touch and fill rules, per-timeframe rules, timeframe names.

Touch and fill rules (per zone, with ``tol = hit_tolerance * |top|`` of its timeframe):

* the zone's reach is ``[bottom - tol, top + tol]``;
* consecutive prices of a symbol are joined as a path: a price update *touches* a zone when the
  path from the previous price to this one enters its reach from outside (a jump over the zone
  touches it too). Staying inside is not a new touch; leaving and coming back is;
* a zone is *filled* when the path leaves its reach across its far edge: ``bottom - tol`` for a
  bullish FVG and sell-side liquidity (``ssl``, below a swing low), ``top + tol`` for a bearish
  FVG and buy-side liquidity (``bsl``, above a swing high). A filled zone expires with reason
  ``filled``. Kinds from outside detectors have no far edge: they are touched and expire on TTL.
* a zone created while the price is inside its reach starts inside, without a touch.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import time
from dataclasses import dataclass
from typing import Final

FVG_BULLISH: Final = "fvg_bullish"
FVG_BEARISH: Final = "fvg_bearish"
BSL: Final = "bsl"  # buy-side liquidity above a swing high
SSL: Final = "ssl"  # sell-side liquidity below a swing low

FILL_UP: Final = 1
FILL_DOWN: Final = -1
FILL_NONE: Final = 0

FILL_SIDE: Final[dict[str, int]] = {
    FVG_BULLISH: FILL_DOWN,
    SSL: FILL_DOWN,
    FVG_BEARISH: FILL_UP,
    BSL: FILL_UP,
}

NS: Final = 1_000_000_000
_TF_PATTERN = re.compile(r"^([SMHDW])(\d+)$")
_TF_UNITS = {"S": 1, "M": 60, "H": 3600, "D": 86400, "W": 7 * 86400}


class ZoneError(ValueError):
    """A zone request that cannot be honoured (bad range, unknown timeframe, ...)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def timeframe_ns(tf: str) -> int:
    """Length of a timeframe named like ``M1``, ``M15``, ``H1``, ``H4``, ``D1``, ``W1``, ``S30``."""
    match = _TF_PATTERN.match(tf)
    if not match or int(match.group(2)) <= 0:
        raise ValueError(f"timeframe {tf!r}: expected a name like S30, M1, M15, H1, H4, D1, W1")
    return _TF_UNITS[match.group(1)] * int(match.group(2)) * NS


@dataclass(frozen=True, slots=True)
class TimeframeRules:
    ttl_ns: int
    hit_tolerance: float = 0.0  # a fraction of the zone's top price: 0.001 = 0.1 %


@dataclass(frozen=True, slots=True)
class Rules:
    """What the registry core needs from config."""

    timeframes: dict[str, TimeframeRules]
    strength_threshold: float = 0.1
    grace_ns: int = 5 * 60 * NS
    max_per_tf: int = 10_000


_PACK: Final = struct.Struct("<ddq").pack
# Zones are created near their timeframes' boundaries, a few distinct seconds at a time: a small
# cache takes the repeats. (At 4 096 it grew by a string and an int every second for 68 minutes
# before each clear, ~0.5 MB with the table: a slow rise the hour-long soak saw.)
ISO_CACHE_MAX: Final = 256
_iso_cache: Final[dict[int, str]] = {}
_tag_cache: Final[dict[tuple[str, str], bytes]] = {}
_BLAKE2B_48: Final = hashlib.blake2b(digest_size=6)  # never updated: each id hashes a copy
# The methods as objects: compiled code calls them directly, where ``h.update(...)`` looks the
# name up on each call.
_b2_copy: Final = _BLAKE2B_48.copy
_b2_update: Final = hashlib.blake2b.update
_b2_hexdigest: Final = hashlib.blake2b.hexdigest


def iso_second(ns: int) -> str:
    """``20231114T221320Z`` (ISO 8601 basic format) for a time in nanoseconds (cached per second)."""
    sec = ns // NS
    iso = _iso_cache.get(sec)
    if iso is None:
        if len(_iso_cache) >= ISO_CACHE_MAX:
            _iso_cache.clear()
        iso = _iso_cache[sec] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(sec))
    return iso


def zone_id(tf: str, created_ns: int, symbol: str, kind: str, top: float, bottom: float) -> str:
    """Deterministic id ``{tf}_{iso_timestamp}_{hash}``: the same detection always gets the same id.

    The hash is 48 bits of BLAKE2b over symbol, kind, top, bottom and created_ns.
    """
    tag = _tag_cache.get((symbol, kind))
    if tag is None:
        if len(_tag_cache) > 65536:
            _tag_cache.clear()
        tag = _tag_cache[(symbol, kind)] = f"{symbol}|{kind}".encode()
    h = _b2_copy()  # a copy skips the constructor's keyword parsing: 175 ns, not 290
    _b2_update(h, _PACK(top, bottom, created_ns) + tag)
    return f"{tf}_{iso_second(created_ns)}_{_b2_hexdigest(h)}"


def finite(x: float) -> bool:
    """``math.isfinite``, from the two tests mypyc compiles to C (``isfinite`` it calls through the
    module: ~1 400 instructions a range check, not ~100)."""
    return not (math.isinf(x) or math.isnan(x))


def check_range(top: float, bottom: float, strength: float) -> None:
    if not (finite(top) and finite(bottom)):
        raise ZoneError("bad_range", f"top and bottom must be finite numbers (got {top!r}, {bottom!r})")
    if top < bottom:
        raise ZoneError("bad_range", f"top {top!r} is below bottom {bottom!r}")
    if not finite(strength):
        raise ZoneError("bad_strength", f"strength must be a finite number (got {strength!r})")
