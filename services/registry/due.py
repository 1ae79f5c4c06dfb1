"""Timers on event time for the registry core: the timing wheel (wheel.py) and the timers it fired
but no caller handled yet, handled up to an event time in deadline order (README, "Event time")."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from services.registry.wheel import TimingWheel

K = TypeVar("K", bound=Hashable)
FAR_NS = 2**63 - 1  # no deadline


class DueTimers(Generic[K]):
    """Timers on event time: a :class:`TimingWheel` and, beside it, the timers due at its time but
    not yet handled: a heap by deadline (earliest first, then key), each with the time from which
    it counts as late. A caller handles them up to a time of its own (a price's event time, behind
    the wheel's) in pieces; one rescheduled meanwhile stays in the heap, stale, and is skipped.

    ``wall``, the wall clock if any: an event time never passes it (as shared/bars.py's
    Watermark: a forged time cannot fire timers early), and lateness is taken on it. ``live`` is
    the caller's: a timer fired on a live point (the clock) is late from its deadline; else (a
    replay's event time, which moves with its prices) from when it fired.
    """

    __slots__ = ("_cap_ns", "due", "last_to", "live", "next_ns", "seen_ns", "wall", "wheel")

    def __init__(self, now_ns: int = 0, wall: Callable[[], int] | None = None) -> None:
        self.wheel: TimingWheel[K] = TimingWheel(now_ns)
        self.due: list[tuple[int, K, int]] = []
        self.next_ns = FAR_NS  # no deadline before this (a cancel leaves it low: a spare look)
        self.wall = wall
        self.live = True
        self.seen_ns = 0  # the newest event time seen (a price's)
        self.last_to = 0  # the last time fired to
        self._cap_ns = 0 if wall is not None else FAR_NS

    @property
    def now_ns(self) -> int:
        return self.wheel.now_ns

    def see(self, event_ns: int) -> None:
        """An event time newer than any before. The first: a wheel that ran on the clock until
        then goes back to it (a replay of history starts)."""
        if not self.seen_ns:
            self.rewind(self.cap(event_ns))
        self.seen_ns = event_ns

    def cap(self, event_ns: int) -> int:
        """``event_ns``, no later than the wall clock."""
        if event_ns > self._cap_ns and self.wall is not None:
            self._cap_ns = self.wall()
        return min(event_ns, self._cap_ns)

    def schedule(self, key: K, deadline_ns: int) -> None:
        """Due at ``deadline_ns``; one at or before the wheel's time is due at once (late from now,
        when it became known)."""
        wheel = self.wheel
        if deadline_ns <= wheel.now_ns:
            wheel.cancel(key)
            known = wheel.now_ns if self.wall is None else self.wall()
            heapq.heappush(self.due, (deadline_ns, key, known))
        else:
            wheel.schedule(key, deadline_ns)
        if deadline_ns < self.next_ns:
            self.next_ns = deadline_ns

    @property
    def backlog(self) -> int:
        """Timers due at the last :meth:`fire` and not yet handled."""
        due = self.due
        return len(due) if due and due[0][0] <= self.last_to else 0

    def fire(self, to_ns: int, deadline_of: Callable[[K], int | None]) -> None:
        """Advance the wheel to ``to_ns``: what it fires joins the heap at its current deadline
        (``deadline_of``; None: gone)."""
        known = 0
        if not self.live:
            known = to_ns if self.wall is None else self.wall()
        due = self.due
        push = heapq.heappush
        for key in self.wheel.advance(to_ns):
            deadline = deadline_of(key)
            if deadline is not None:
                push(due, (deadline, key, known))
        self.last_to = to_ns
        self.refresh()

    def run(
        self,
        to_ns: int,
        limit: int | None,
        deadline_of: Callable[[K], int | None],
        handle: Callable[[K, int], bool],
    ) -> tuple[int, list[int]]:
        """Handle the due timers with deadline <= ``to_ns``, earliest first, at most ``limit``
        (stale ones, whose ``deadline_of`` differs now, are skipped and counted in it):
        ``handle(key, deadline)``, False if it failed. Returns how many were handled, and the
        lateness of each that did not fail: from its deadline (or when it became known, if later)
        to when it was handled (``wall()``, else ``to_ns``), taken as it is handled."""
        due = self.due
        wall = self.wall
        pop = heapq.heappop
        lates: list[int] = []
        n = handled = 0
        while due and due[0][0] <= to_ns and (limit is None or n < limit):
            deadline, key, known = pop(due)
            n += 1
            if deadline_of(key) != deadline:
                continue
            handled += 1
            if not handle(key, deadline):
                continue
            late = (to_ns if wall is None else wall()) - (known if known > deadline else deadline)
            lates.append(late if late > 0 else 0)
        if n:
            self.refresh()
        return handled, lates

    def next_deadline_ns(self) -> int | None:
        self.refresh()
        return None if self.next_ns == FAR_NS else self.next_ns

    def refresh(self) -> None:
        nxt = self.wheel.next_deadline_ns()
        if self.due and (nxt is None or self.due[0][0] < nxt):
            nxt = self.due[0][0]
        self.next_ns = FAR_NS if nxt is None else nxt

    def rewind(self, to_ns: int) -> None:
        """Move time back to ``to_ns`` (O(n)): the timers due after it go back on the wheel."""
        if to_ns >= self.wheel.now_ns:
            return
        self.wheel.rewind(to_ns)
        keep = []
        for item in self.due:
            if item[0] > to_ns:
                self.wheel.schedule(item[1], item[0])
            else:
                keep.append(item)
        heapq.heapify(keep)
        self.due = keep
        self.refresh()
