"""A hierarchical timing wheel: O(1) schedule and cancel, deterministic ``advance(to_ns)``.

Design (Linux/tokio style, with wide levels because Python pays per timer moved, not per slot):

* time is cut into ticks of ``tick_ns`` (default 1 ms); level ``L`` has ``2**bits`` slots, each
  ``2**(bits*L)`` ticks wide. The default (3 levels of 1024 slots at 1 ms) spans 2**30 ms = 12.4
  days, so a TTL of up to 7 days sits in the wheel and moves down at most twice before it fires.
  (A tokio-style 6 x 64 wheel is ``TimingWheel(bits=6, levels=6)``; it moves a 7-day timer up to
  five times instead of two and measured within noise of the default here, see the README.)
* a timer with deadline tick ``t`` is placed, relative to the wheel's current tick ``T``, at the
  level of the highest digit where ``t`` and ``T`` differ (``(t ^ T).bit_length()``), in the slot
  of ``t``'s digit at that level. Beyond the top level it waits in an overflow map.
* ``advance(to_ns)`` visits occupied slots in time order (an occupancy bitmap per level finds the
  next one without walking empty slots). A slot that ends before ``to_ns``'s tick fires whole (one
  C-level ``extend``); the one slot that contains ``to_ns``'s tick cascades its timers one level
  down, and at level 0 its timers are compared with ``to_ns`` exactly: a timer never fires early,
  always at the first advance with ``to_ns >= deadline_ns``.
* a deadline already in the past (an out-of-order event) goes into the current slot and fires on
  the next advance.

Keys are any hashable (the registry uses zone ids). Firing order within one advance follows the
slots, not strictly the deadlines.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Hashable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

DEFAULT_TICK_NS = 1_000_000
DEFAULT_BITS = 10
DEFAULT_LEVELS = 3


class TimingWheel(Generic[K]):
    """Timers keyed by ``K`` with deadlines in integer nanoseconds."""

    __slots__ = (
        "_bits",
        "_levels",
        "_mask",
        "_now_ns",
        "_occ",
        "_overflow",
        "_overflow_min_tick",
        "_slots",
        "_tick",
        "_top_shift",
        "_where",
        "fired_total",
        "holds",
    )

    def __init__(
        self,
        now_ns: int = 0,
        *,
        tick_ns: int = DEFAULT_TICK_NS,
        bits: int = DEFAULT_BITS,
        levels: int = DEFAULT_LEVELS,
    ) -> None:
        if tick_ns <= 0 or bits <= 0 or levels <= 0:
            raise ValueError("tick_ns, bits and levels must be positive")
        self._tick = tick_ns
        self._bits = bits
        self._levels = levels
        self._mask = (1 << bits) - 1
        self._top_shift = bits * levels
        self._now_ns = now_ns
        # The wheel's current tick T is derived from _now_ns.
        self._slots: list[list[dict[K, int] | None]] = [[None] * (1 << bits) for _ in range(levels)]
        self._occ: list[int] = [0] * levels
        self._where: dict[K, dict[K, int]] = {}  # key -> the slot (or overflow) dict holding it
        self.holds = self._where.__contains__  # whether a key has a timer (in C: a hot path's)
        self._overflow: dict[K, int] = {}
        self._overflow_min_tick = -1
        self.fired_total = 0

    # ------------------------------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """The time of the last advance (or the start)."""
        return self._now_ns

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, key: object) -> bool:
        return key in self._where

    def __iter__(self) -> Iterator[K]:
        return iter(self._where)

    def deadline(self, key: K) -> int | None:
        slot = self._where.get(key)
        return None if slot is None else slot[key]

    # ------------------------------------------------------------------------------------------
    def schedule(self, key: K, deadline_ns: int) -> None:
        """Fire ``key`` at the first advance with ``to_ns >= deadline_ns``; replaces its old timer."""
        where = self._where
        old = where.get(key)
        if old is not None:
            del old[key]
        t = deadline_ns // self._tick
        now_t = self._now_ns // self._tick
        if t <= now_t:
            level = 0
            t = now_t
        else:
            level = ((t ^ now_t).bit_length() - 1) // self._bits
            if level >= self._levels:
                self._overflow[key] = deadline_ns
                where[key] = self._overflow
                if self._overflow_min_tick < 0 or t < self._overflow_min_tick:
                    self._overflow_min_tick = t
                return
        idx = (t >> (self._bits * level)) & self._mask
        row = self._slots[level]
        slot = row[idx]
        if slot is None:
            slot = row[idx] = {}
            self._occ[level] |= 1 << idx
        slot[key] = deadline_ns
        where[key] = slot

    def cancel(self, key: K) -> bool:
        """Remove ``key``'s timer; False if it had none. O(1)."""
        slot = self._where.pop(key, None)
        if slot is None:
            return False
        del slot[key]
        return True

    def rewind(self, to_ns: int) -> None:
        """Move time back to ``to_ns``, placing every timer again (O(n)): for a wheel that ran on
        the clock until a replay of older event time began. A later ``to_ns`` does nothing."""
        if to_ns >= self._now_ns:
            return
        timers = [(key, slot[key]) for key, slot in self._where.items()]
        self.clear()
        self._now_ns = to_ns
        for key, deadline in timers:
            self.schedule(key, deadline)

    def clear(self) -> None:
        for level in range(self._levels):
            self._slots[level] = [None] * (1 << self._bits)
            self._occ[level] = 0
        self._where.clear()
        self._overflow.clear()
        self._overflow_min_tick = -1

    # ------------------------------------------------------------------------------------------
    def _next_slot(self, now_t: int) -> tuple[int, int]:
        """(level, slot index) of the earliest occupied slot, or (-1, -1)."""
        bits = self._bits
        mask = self._mask
        occ = self._occ
        for level in range(self._levels):
            bitmap = occ[level]
            if not bitmap:
                continue
            pos = (now_t >> (bits * level)) & mask
            ahead = bitmap >> pos
            if ahead:
                return level, pos + ((ahead & -ahead).bit_length() - 1)
            # Bits behind the current position can only be emptied slots: drop them.
            occ[level] = 0
        return -1, -1

    def _earliest_slot(self, now_t: int) -> tuple[int, int, dict[K, int]]:
        """(level, index, timers) of the earliest slot holding a timer, or (-1, -1, {}); the
        emptied slots met on the way are dropped."""
        while True:
            level, idx = self._next_slot(now_t)
            if level < 0:
                return -1, -1, {}
            slot = self._slots[level][idx]
            if slot:
                return level, idx, slot
            self._slots[level][idx] = None
            self._occ[level] &= ~(1 << idx)

    def next_deadline_ns(self) -> int | None:
        """The earliest deadline scheduled, or None when the wheel is empty."""
        level, _, slot = self._earliest_slot(self._now_ns // self._tick)
        best = min(slot.values()) if level >= 0 else None
        if self._overflow:
            low = min(self._overflow.values())
            best = low if best is None else min(best, low)
        return best

    def next_bound_ns(self) -> int | None:
        """No deadline is earlier than this; None when the wheel is empty. O(1) but for a level-0
        slot (one tick's timers): exact there, else the earliest occupied slot's start, which an
        advance to it cascades, so a caller that looks again at the bound meets each timer's slot
        once per level instead of taking the minimum of a slot of thousands at every look."""
        now_t = self._now_ns // self._tick
        level, idx, slot = self._earliest_slot(now_t)
        best: int | None = None
        if level == 0:
            best = min(slot.values())
        elif level > 0:
            shift = self._bits * level
            up = shift + self._bits
            best = max((((now_t >> up) << up) | (idx << shift)) * self._tick, self._now_ns)
        if self._overflow:
            low = max(self._overflow_min_tick * self._tick, self._now_ns)
            best = low if best is None else min(best, low)
        return best

    def advance(self, to_ns: int) -> list[K]:
        """Move time to ``to_ns`` and return the keys of every timer with ``deadline_ns <= to_ns``.

        Time never goes back: an earlier ``to_ns`` fires only what is already due at ``now_ns``.
        """
        if to_ns < self._now_ns:
            to_ns = self._now_ns
        tick = self._tick
        bits = self._bits
        mask = self._mask
        slots = self._slots
        occ = self._occ
        where = self._where
        fired: list[K] = []
        target = to_ns // tick
        now_t = self._now_ns // tick
        while True:
            level, idx = self._next_slot(now_t)
            if level < 0:
                break
            shift = bits * level
            up = shift + bits
            start = ((now_t >> up) << up) | (idx << shift)
            if start > target:
                break
            slot = slots[level][idx]
            end = start + (1 << shift) - 1
            if end < target:
                # The whole slot is before the target tick: everything in it is due.
                slots[level][idx] = None
                occ[level] &= ~(1 << idx)
                if slot:
                    fired.extend(slot)
                    deque(map(where.__delitem__, slot), 0)
                if end > now_t:
                    now_t = end
                continue
            if level == 0:
                # The target tick's own slot: compare exactly, keep what is not yet due.
                if slot:
                    due = [k for k, d in slot.items() if d <= to_ns]
                    for k in due:
                        del slot[k]
                        del where[k]
                    fired.extend(due)
                if not slot:
                    slots[0][idx] = None
                    occ[0] &= ~(1 << idx)
                break
            # A higher slot holding the target tick: move its timers down, relative to its start.
            slots[level][idx] = None
            occ[level] &= ~(1 << idx)
            now_t = start
            if slot:
                for k, d in slot.items():
                    t = d // tick
                    lvl = ((t ^ start).bit_length() - 1) // bits if t > start else 0
                    if t < start:
                        t = start
                    i = (t >> (bits * lvl)) & mask
                    row = slots[lvl]
                    dest = row[i]
                    if dest is None:
                        dest = row[i] = {}
                        occ[lvl] |= 1 << i
                    dest[k] = d
                    where[k] = dest
        self._now_ns = to_ns
        if self._overflow and target >> self._top_shift >= self._overflow_min_tick >> self._top_shift:
            self._drain_overflow(to_ns, fired)
        self.fired_total += len(fired)
        return fired

    def _drain_overflow(self, to_ns: int, fired: list[K]) -> None:
        overflow = self._overflow
        self._overflow = {}
        self._overflow_min_tick = -1
        for key, deadline in overflow.items():
            del self._where[key]
            if deadline <= to_ns:
                fired.append(key)
            else:
                self.schedule(key, deadline)


class HeapTimers(Generic[K]):
    """The reference: a binary heap with lazy cancel. Same interface as :class:`TimingWheel`."""

    __slots__ = ("_heap", "_live", "_now_ns", "_seq")

    def __init__(self, now_ns: int = 0) -> None:
        self._heap: list[tuple[int, int, K]] = []
        self._live: dict[K, int] = {}
        self._now_ns = now_ns
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def schedule(self, key: K, deadline_ns: int) -> None:
        self._seq += 1
        self._live[key] = self._seq
        heapq.heappush(self._heap, (deadline_ns, self._seq, key))

    def cancel(self, key: K) -> bool:
        return self._live.pop(key, None) is not None

    def advance(self, to_ns: int) -> list[K]:
        if to_ns < self._now_ns:
            to_ns = self._now_ns
        self._now_ns = to_ns
        heap = self._heap
        live = self._live
        pop = heapq.heappop
        fired: list[K] = []
        while heap and heap[0][0] <= to_ns:
            _, seq, key = pop(heap)
            if live.get(key) == seq:
                del live[key]
                fired.append(key)
        return fired
