"""The active zones of one (symbol, timeframe), and which of them overlap a range (confluence).

Spans are kept in two lists: the newest unsorted (``recent``), the rest sorted by bottom
(``spans``), merged lazily; ids of zones no longer active are skipped and dropped at the merge.
An overlap query bisects the sorted spans from ``bottom - max_height``.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Iterable

from shared.messages import Zone


class Book:
    """The active zones of one (symbol, timeframe), plus a lazily sorted span list for overlaps."""

    __slots__ = ("max_height", "recent", "spans", "zones")

    def __init__(self) -> None:
        self.zones: dict[str, Zone] = {}
        self.spans: list[tuple[float, float, str]] = []  # sorted by bottom; may hold dead ids
        self.recent: list[tuple[float, float, str]] = []  # unsorted, newest
        self.max_height = 0.0

    def add(self, zone_id: str, bottom: float, top: float, zone: Zone) -> None:
        """An active zone, its id and range given (read once by the caller)."""
        self.zones[zone_id] = zone
        self.recent.append((bottom, top, zone_id))
        height = top - bottom
        if height > self.max_height:
            self.max_height = height
        # Dead spans stay until a merge: past 8 unsorted, a book of 2 000 symbols x 3 timeframes held
        # ~2 tuples (and zone ids) per zone for gone zones at 64 (1 024 before).
        if len(self.recent) > 8 and len(self.recent) > len(self.zones):
            self._merge()

    def _merge(self) -> None:
        zones = self.zones
        spans = [s for s in self.spans if s[2] in zones]
        spans.extend(s for s in self.recent if s[2] in zones)
        spans.sort()
        self.spans = spans
        self.recent = []

    def overlapping(self, bottom: float, top: float) -> list[str]:
        if not self.zones:
            return []
        if len(self.recent) > 32:
            self._merge()
        zones = self.zones
        found = [i for b, t, i in self.recent if b <= top and t >= bottom and i in zones]
        spans = self.spans
        n = len(spans)
        j = bisect_left(spans, (bottom - self.max_height,))
        while j < n:
            b, t, i = spans[j]
            if b > top:
                break
            if t >= bottom and i in zones:
                found.append(i)
            j += 1
        return found


class WeakestFirst:
    """Per timeframe, the active zones by (strength, created_ns): whom capacity evicts first.

    A heap per timeframe, built on the first eviction; a zone's new strength is pushed again and
    the old item skipped when popped (its strength no longer matches). Rebuilt when the garbage
    outgrows the live zones."""

    def __init__(self) -> None:
        self._heaps: dict[str, list[tuple[float, int, str]]] = {}

    def push(self, timeframe: str, strength: float, created_ns: int, zone_id: str, active_count: int) -> None:
        """A zone created, or its strength changed; ``active_count``: its timeframe's active zones.
        A heap whose garbage outgrew them is dropped (rebuilt at the next eviction): with no
        eviction to rebuild it, it grew by every zone ever created."""
        heap = self._heaps.get(timeframe)
        if heap is not None:
            if len(heap) > 2 * active_count + 64:
                del self._heaps[timeframe]
            else:
                heapq.heappush(heap, (strength, created_ns, zone_id))

    def pop(
        self,
        timeframe: str,
        active_count: int,
        active: Callable[[str], Zone | None],
        books: Iterable[Book],
    ) -> str | None:
        """The id of the weakest active zone of ``timeframe`` (None if there is none).
        ``active(id)``: the zone if it is active; ``books``: that timeframe's, for a rebuild."""
        heap = self._heaps.get(timeframe)
        if heap is None or len(heap) > 2 * active_count + 64:
            heap = [(z.strength, z.created_ns, z.id) for book in books for z in book.zones.values()]
            heapq.heapify(heap)
            self._heaps[timeframe] = heap
        while heap:
            strength, _, zid = heapq.heappop(heap)
            zone = active(zid)
            if zone is not None and zone.strength == strength:
                return zid
        return None
