"""Timers on event time for the registry core: the timing wheel (wheel.py), and the timers it fired
that no caller handled yet (README, "Event time")."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Hashable
from typing import Final, Generic, TypeVar

from services.registry.wheel import TimingWheel

K = TypeVar("K", bound=Hashable)
FAR_NS: Final = 2**63 - 1  # no deadline


class DueTimers(Generic[K]):
    """A :class:`TimingWheel` and, beside it, the timers due at its time but not yet handled (in
    the order they fell due, each with the time from which it counts as late). They are handled in
    pieces (a loop turn's worth), all of them before the next price; one rescheduled meanwhile
    (evicted into its grace period) stays there, stale, and is skipped: the wheel has it again.
    Each timer's lateness runs from its deadline, or from when it became known if that is later
    (``known``: 0 for the deadline), to when it is handled.

    ``wall``, the wall clock if any: an event time never passes it (as candles.py's
    Watermark: a forged time cannot fire timers early), and lateness is taken on it. ``live`` is
    the caller's: a timer fired on a live point (the clock) is late from its deadline; else (a
    replay's event time, which moves with its prices) from when it fired.
    """

    __slots__ = ("_cap_ns", "due", "live", "next_ns", "seen_ns", "wall", "wheel")

    def __init__(self, now_ns: int = 0, wall: Callable[[], int] | None = None) -> None:
        self.wheel: TimingWheel[K] = TimingWheel(now_ns)
        self.due: deque[tuple[K, int]] = deque()
        # No price needs to look before this: the next deadline (a cancel leaves it low: a spare
        # look), 0 while timers are due.
        self.next_ns = FAR_NS
        self.wall = wall
        self.live = True
        self.seen_ns = 0  # the newest event time seen (a price's)
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
            self.due.append((key, wheel.now_ns if self.wall is None else self.wall()))
            self.next_ns = 0
        else:
            wheel.schedule(key, deadline_ns)
            if deadline_ns < self.next_ns:
                self.next_ns = deadline_ns

    def fire(self, to_ns: int) -> None:
        """Advance the wheel to ``to_ns``: what it fires is due."""
        fired = self.wheel.advance(to_ns)
        if fired:
            known = 0
            if not self.live:
                known = to_ns if self.wall is None else self.wall()
            self.due.extend([(key, known) for key in fired])
        self.refresh()

    def next_deadline_ns(self) -> int | None:
        """The earliest deadline on the wheel (the wheel's time while timers are due)."""
        if self.due:
            return self.wheel.now_ns
        self.refresh()
        return None if self.next_ns == FAR_NS else self.wheel.next_deadline_ns()

    def next_wake_ns(self) -> int | None:
        """When a timer loop should next advance: the earliest deadline if it is in a slot of one
        tick, else the start of the earliest slot, whose advance cascades its timers down ahead of
        their deadlines (the cascade of a burst sharing a deadline cost 0.5-2 ms at the deadline
        itself); None when nothing is scheduled. O(1), where the exact deadline is the minimum
        of a slot of thousands."""
        if self.due:
            return self.wheel.now_ns
        self.refresh()
        return None if self.next_ns == FAR_NS else self.next_ns

    def refresh(self) -> None:
        if self.due:
            self.next_ns = 0
            return
        nxt = self.wheel.next_bound_ns()
        self.next_ns = FAR_NS if nxt is None else nxt

    def rewind(self, to_ns: int) -> None:
        """Move time back to ``to_ns`` (O(n)). A due timer stays due: a caller that knew of it
        (a zone restored past its deadline) expires it."""
        if to_ns < self.wheel.now_ns:
            self.wheel.rewind(to_ns)
            self.refresh()
