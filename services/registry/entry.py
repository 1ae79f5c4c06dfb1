"""A zone's record in the price index, and where it sits relative to its symbol's last price.

Kept out of the compiled core (shared/compiled.py): a msgspec Struct class built by compiled code
keeps the GC flag even with ``gc=False``, and then every heap item holding an entry stays tracked.
"""

from __future__ import annotations

from typing import Final

import msgspec

from shared.messages import Zone

PENDING: Final = 0  # no price seen yet for the symbol
ABOVE: Final = 1
BELOW: Final = 2
INSIDE: Final = 3
OUT: Final = 4  # not in the price index (expired, in grace, removed)
LOOSE: Final = 5  # active, just popped from a heap, about to be placed again


class Entry(msgspec.Struct, gc=False):
    """A zone in the index. gc=False: it holds a zone and scalars, never a cycle, so the cyclic
    GC does not walk the entries, nor the heap items holding them (tuples of untracked objects
    are dropped from the GC): a full collection of 2 000 symbols' state took 170 ms, not 440."""

    zone: Zone
    lo: float
    hi: float
    fill: int
    side: int = OUT
    tok: int = 0
