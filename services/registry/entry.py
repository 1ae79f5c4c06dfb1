"""A zone's record in the price index, and where it sits relative to its symbol's last price.

Compiled with the core (shared/compiled.py) as a native class: compiled code reads and writes its
fields directly (``lo``/``hi`` unboxed doubles), where a msgspec Struct's took a generic attribute
lookup each (~120 instructions). ``acyclic``: it holds a zone, its counters and scalars, never a
cycle, so it is not tracked by the cyclic GC, nor are the heap items holding it (heap.py): a full
collection of 2 000 symbols' state took 170 ms with untracked entries, 440 with tracked ones.

Run pure (no compiler), a Python class would be tracked whatever it holds, so the module's
``Entry`` is then :class:`UntrackedEntry`, a msgspec Struct with ``gc=False`` and the same fields.
"""

from __future__ import annotations

from typing import Final

import msgspec
from mypy_extensions import mypyc_attr

from services.registry.stats import TimeframeStats
from shared.compiled import when_pure
from shared.messages import Zone

PENDING: Final = 0  # no price seen yet for the symbol
ABOVE: Final = 1
BELOW: Final = 2
INSIDE: Final = 3
OUT: Final = 4  # not in the price index (expired, in grace, removed)
LOOSE: Final = 5  # active, just popped from a heap, about to be placed again


@mypyc_attr(acyclic=True)
class Entry:
    """A zone in the index: its reach ``[lo, hi]``, its fill side, where it lies (``side``) and its
    heap items' token (``tok``: 0 when it has none); with the zone's fields that never change
    (``id``, ``symbol``, ``timeframe``, ``created_ns``, ``expires_ns``) and its timeframe's counters,
    read here rather than from the zone (a Struct) or a dict on every step of its life."""

    __slots__ = ("created_ns", "expires_ns", "fill", "hi", "id", "lo", "side", "st", "symbol", "timeframe", "tok", "zone")  # fmt: skip

    def __init__(self, zone: Zone, lo: float, hi: float, fill: int, st: TimeframeStats) -> None:
        self.zone = zone
        self.id = zone.id
        self.symbol = zone.symbol
        self.timeframe = zone.timeframe
        self.created_ns = zone.created_ns
        self.expires_ns = zone.expires_ns
        self.st = st
        self.lo = lo
        self.hi = hi
        self.fill = fill
        self.side = OUT
        self.tok = 0


class UntrackedEntry(msgspec.Struct, gc=False):
    """:class:`Entry` for the pure core (made as ``Entry(zone, lo, hi, fill, st)`` too)."""

    zone: Zone
    lo: float
    hi: float
    fill: int
    st: TimeframeStats
    id: str = ""
    symbol: str = ""
    timeframe: str = ""
    created_ns: int = 0
    expires_ns: int = 0
    side: int = OUT
    tok: int = 0

    def __post_init__(self) -> None:
        zone = self.zone
        self.id, self.symbol, self.timeframe = zone.id, zone.symbol, zone.timeframe
        self.created_ns, self.expires_ns = zone.created_ns, zone.expires_ns


when_pure(globals(), Entry=UntrackedEntry)  # the modules importing Entry get the untracked one
