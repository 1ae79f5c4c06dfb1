"""The price index: per symbol, where each active zone lies relative to the last price.

Zones above the last price sit in a min-heap on their lower reach, zones below in a max-heap on
their upper reach, zones containing it in two heaps on both edges. A price update pops only the
zones it enters or leaves: O(1) when it touches nothing, O(log n) per zone it does touch, however
many zones the symbol has. Heap entries are invalidated lazily (a token per move) and compacted
when the garbage outweighs the live entries. The index decides touches and fills (see zones.py for
the rules); the registry core, a :class:`PriceMoves`, is told of each.
"""

from __future__ import annotations

import math
from typing import Final

from services.registry.entry import ABOVE, BELOW, INSIDE, LOOSE, OUT, PENDING, Entry
from services.registry.heap import Item, heapify, pop, push
from services.registry.stats import RegistryStats
from services.registry.zones import FILL_DOWN, FILL_UP

# Invalidated heap items a symbol may keep beyond its live ones before a compaction. Each keeps
# its entry and its zone (~0.45 kB) alive: at 1 024 (before), 2 000 symbols whose zones expire a
# few a minute grew by ~3 MB a minute for hours. A compaction costs O(live + stale), paid for by
# the ``stale > live`` removals before it.
STALE_SLACK: Final = 16


class PriceMoves:
    """Told of what a price does to the zones (the registry core subclasses it: compiled, a call to
    it is a native one, with the price unboxed, where a callable held as an attribute was not)."""

    def on_touch(self, entry: Entry, price: float, now_ns: int) -> None:
        """A price entered the zone's reach."""
        raise NotImplementedError

    def on_fill(self, entry: Entry, now_ns: int) -> None:
        """A price left the zone's reach across its far edge: the core expires it, which calls
        :meth:`PriceIndex.unplace`, possibly inside a move."""
        raise NotImplementedError


class SymbolIndex:
    __slots__ = ("above", "below", "in_hi", "in_lo", "live", "pending", "price", "stale")

    def __init__(self) -> None:
        self.price = math.nan  # last price; nan until the first one
        self.above: list[Item] = []  # min-heap on lo
        self.below: list[Item] = []  # min-heap on -hi
        self.in_hi: list[Item] = []  # min-heap on hi
        self.in_lo: list[Item] = []  # min-heap on -lo
        self.pending: dict[str, Entry] = {}
        self.live = 0  # heap entries that are valid
        self.stale = 0  # heap entries invalidated but not yet popped


class PriceIndex:
    """Every symbol's :class:`SymbolIndex`; each touch and fill goes to ``moves``."""

    def __init__(self, stats: RegistryStats, moves: PriceMoves) -> None:
        self.by_symbol: dict[str, SymbolIndex] = {}
        self._stats = stats
        self._moves = moves
        self._tok = 0

    def last_price(self, symbol: str) -> float | None:
        idx = self.by_symbol.get(symbol)
        return None if idx is None or idx.price != idx.price else idx.price

    def place(self, entry: Entry) -> None:
        """Index an active zone by where it lies relative to its symbol's last price (no touch)."""
        symbol = entry.symbol
        idx = self.by_symbol.get(symbol)
        if idx is None:
            idx = self.by_symbol[symbol] = SymbolIndex()
        self._place_in(idx, entry)

    def unplace(self, entry: Entry) -> None:
        self._unplace_from(self.by_symbol[entry.symbol], entry)

    def replace(self, entry: Entry) -> None:
        """An entry whose reach changed: out, and in again where it now lies."""
        idx = self.by_symbol[entry.symbol]
        self._unplace_from(idx, entry)
        self._place_in(idx, entry)

    def _place_in(self, idx: SymbolIndex, entry: Entry) -> None:
        """Put an entry in the index by where it lies relative to the last price (no touch)."""
        price = idx.price
        if price != price:  # no price yet
            entry.side = PENDING
            idx.pending[entry.id] = entry
            return
        self._put(idx, entry, ABOVE if entry.lo > price else BELOW if entry.hi < price else INSIDE)

    def _unplace_from(self, idx: SymbolIndex, entry: Entry) -> None:
        side = entry.side
        entry.side = OUT
        entry.tok = 0
        if side == PENDING:
            del idx.pending[entry.id]
            return
        if side in (LOOSE, OUT):
            return
        n = 2 if side == INSIDE else 1
        idx.live -= n
        idx.stale += n
        if idx.stale > STALE_SLACK and idx.stale > idx.live:
            self._compact(idx)

    def _compact(self, idx: SymbolIndex) -> None:
        """Drop invalidated heap entries, in place (a move loop may hold a heap)."""
        live = 0
        for heap in (idx.above, idx.below, idx.in_hi, idx.in_lo):
            heap[:] = [item for item in heap if item.entry.tok == item.tok]
            heapify(heap)
            live += len(heap)
        idx.live = live
        idx.stale = 0

    def on_price(self, symbol: str, price: float, now_ns: int) -> None:
        """A price of ``symbol``: touch the zones the move enters, fill those it crosses."""
        idx = self.by_symbol.get(symbol)
        self._stats.prices += 1
        if idx is None:
            if not math.isfinite(price):
                self._stats.bad_prices += 1
                return
            idx = self.by_symbol[symbol] = SymbolIndex()
            idx.price = price
            return
        last = idx.price
        if price > last:
            if price == math.inf:
                self._stats.bad_prices += 1
                return
            idx.price = price
            above = idx.above
            if above and above[0].key <= price:
                self._move_up(idx, price, now_ns)
            else:
                in_hi = idx.in_hi
                if in_hi and in_hi[0].key < price:
                    self._move_up(idx, price, now_ns)
        elif price < last:
            if price == -math.inf:
                self._stats.bad_prices += 1
                return
            idx.price = price
            below = idx.below
            if below and -below[0].key >= price:
                self._move_down(idx, price, now_ns)
            else:
                in_lo = idx.in_lo
                if in_lo and -in_lo[0].key > price:
                    self._move_down(idx, price, now_ns)
        elif price != price:
            self._stats.bad_prices += 1
        elif last != last:  # first price after zones were created
            idx.price = price
            pending = idx.pending
            idx.pending = {}
            for entry in pending.values():
                self._place_in(idx, entry)

    def _put(self, idx: SymbolIndex, entry: Entry, side: int) -> None:
        self._tok += 1
        tok = entry.tok = self._tok
        entry.side = side
        if side == BELOW:
            push(idx.below, Item(-entry.hi, tok, entry))
            idx.live += 1
        elif side == ABOVE:
            push(idx.above, Item(entry.lo, tok, entry))
            idx.live += 1
        else:
            push(idx.in_hi, Item(entry.hi, tok, entry))
            push(idx.in_lo, Item(-entry.lo, tok, entry))
            idx.live += 2

    def _move_up(self, idx: SymbolIndex, price: float, now_ns: int) -> None:
        above = idx.above
        while above and above[0].key <= price:
            item = pop(above)
            entry = item.entry
            if entry.tok != item.tok:
                idx.stale -= 1
                continue
            idx.live -= 1
            entry.side = LOOSE
            entry.tok = 0
            self._moves.on_touch(entry, price, now_ns)
            if entry.hi < price:  # crossed it in one move
                if entry.fill == FILL_UP:
                    self._moves.on_fill(entry, now_ns)
                else:
                    self._put(idx, entry, BELOW)
            else:
                self._put(idx, entry, INSIDE)
        in_hi = idx.in_hi
        while in_hi and in_hi[0].key < price:
            item = pop(in_hi)
            entry = item.entry
            if entry.tok != item.tok:
                idx.stale -= 1
                continue
            idx.live -= 2  # this entry and its in_lo twin, which is now stale
            idx.stale += 1
            entry.side = LOOSE
            entry.tok = 0
            if entry.fill == FILL_UP:
                self._moves.on_fill(entry, now_ns)
            else:
                self._put(idx, entry, BELOW)

    def _move_down(self, idx: SymbolIndex, price: float, now_ns: int) -> None:
        below = idx.below
        while below and -below[0].key >= price:
            item = pop(below)
            entry = item.entry
            if entry.tok != item.tok:
                idx.stale -= 1
                continue
            idx.live -= 1
            entry.side = LOOSE
            entry.tok = 0
            self._moves.on_touch(entry, price, now_ns)
            if entry.lo > price:
                if entry.fill == FILL_DOWN:
                    self._moves.on_fill(entry, now_ns)
                else:
                    self._put(idx, entry, ABOVE)
            else:
                self._put(idx, entry, INSIDE)
        in_lo = idx.in_lo
        while in_lo and -in_lo[0].key > price:
            item = pop(in_lo)
            entry = item.entry
            if entry.tok != item.tok:
                idx.stale -= 1
                continue
            idx.live -= 2
            idx.stale += 1
            entry.side = LOOSE
            entry.tok = 0
            if entry.fill == FILL_DOWN:
                self._moves.on_fill(entry, now_ns)
            else:
                self._put(idx, entry, ABOVE)
