"""The price index's heaps: binary min-heaps of :class:`Item` (key, token, entry), ordered by
(key, token). Tokens are unique within a heap, so the order is total and the entries are never
compared: the pops come in the same order as ``heapq``'s over ``(key, tok, entry)`` tuples.

Compiled (shared/compiled.py), an item is a native record and a comparison two C double (and, on a
tie, integer) comparisons; ``heapq`` over tuples compared each pair of tuples through
``PyObject_RichCompare``, ~150 instructions, a dozen times a pop. ``acyclic``: an item holds an
entry and scalars, so the GC does not track it. Run pure, a Python class would be tracked and a
sift in Python slower than ``heapq``'s C: there ``Item`` is :class:`UntrackedItem` (a ``gc=False``,
ordered msgspec Struct) and :func:`push`, :func:`pop` and :func:`heapify` are ``heapq``'s.
"""

from __future__ import annotations

import heapq

import msgspec
from mypy_extensions import mypyc_attr

from services.registry.entry import Entry
from shared.compiled import when_pure


@mypyc_attr(acyclic=True)
class Item:
    __slots__ = ("entry", "key", "tok")

    def __init__(self, key: float, tok: int, entry: Entry) -> None:
        self.key = key
        self.tok = tok
        self.entry = entry


def _before(a: Item, b: Item) -> bool:
    return a.key < b.key or (a.key == b.key and a.tok < b.tok)


def push(heap: list[Item], item: Item) -> None:
    heap.append(item)
    i = len(heap) - 1
    while i > 0:
        parent = (i - 1) >> 1
        above = heap[parent]
        if not _before(item, above):
            break
        heap[i] = above
        i = parent
    heap[i] = item


def _sift_down(heap: list[Item], i: int, item: Item) -> None:
    """Put ``item`` at ``i`` or below, moving smaller children up."""
    n = len(heap)
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        right = child + 1
        if right < n and _before(heap[right], heap[child]):
            child = right
        smaller = heap[child]
        if not _before(smaller, item):
            break
        heap[i] = smaller
        i = child
    heap[i] = item


def pop(heap: list[Item]) -> Item:
    """The smallest item, out of the heap (IndexError if empty)."""
    last = heap.pop()
    if not heap:
        return last
    top = heap[0]
    _sift_down(heap, 0, last)
    return top


def heapify(heap: list[Item]) -> None:
    for i in range(len(heap) // 2 - 1, -1, -1):
        _sift_down(heap, i, heap[i])


class UntrackedItem(msgspec.Struct, gc=False, order=True):
    """:class:`Item` for the pure core: compared by (key, tok) like a tuple."""

    key: float
    tok: int
    entry: Entry


# pure: heapq's C over untracked, ordered Structs
when_pure(globals(), Item=UntrackedItem, push=heapq.heappush, pop=heapq.heappop, heapify=heapq.heapify)
