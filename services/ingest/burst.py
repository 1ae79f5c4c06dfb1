"""When a burst's messages go out before the burst ends. Pure.

The publisher flushes when the event loop turns. One socket read can hold hundreds of frames, all
routed in one turn: the first frame's messages would wait for the last one's. ``BurstFlush`` is
told when each frame was routed and flushes once the frames routed in this turn and not flushed
yet span ``after`` seconds, so a message waits at most about that long for the rest of its burst.
Consecutive messages are mostly of different assets' topics, each its own send either way: an
early flush costs one flush call, not extra frames on the wire.

A turn's end ends the burst: the first frame of a turn schedules, with ``defer`` (the loop's
``call_soon``), the reset that runs when the loop turns, where the publisher's own flush runs too.
(Counting from the first frame of an earlier turn made every burst after a pause flush at its
first frame: a second wakeup of ZeroMQ's I/O thread per burst, in the middle of it; the pipeline
bench's ingest flushed 1 000-1 180 times a second, 650-780 since.)
"""

from __future__ import annotations

from collections.abc import Callable

FLUSH_AFTER_S = 0.0005


class BurstFlush:
    __slots__ = ("_since", "after", "defer", "flush", "flushes")

    def __init__(
        self,
        flush: Callable[[], None],
        defer: Callable[[Callable[[], None]], object],
        after: float = FLUSH_AFTER_S,
    ) -> None:
        self.flush = flush
        self.defer = defer
        self.after = after
        self.flushes = 0
        self._since = 0.0  # when this turn's first frame not flushed here began routing (0.0: none)

    def routed(self, began: float, ended: float) -> None:
        """A frame was routed from ``began`` to ``ended`` (a monotonic clock, seconds)."""
        since = self._since
        if not since:
            self._since = began
            self.defer(self.turned)
        elif ended - since >= self.after:
            self.flushes += 1
            self._since = ended  # what follows in this turn is a new span (its reset is scheduled)
            self.flush()

    def turned(self) -> None:
        """The loop turned (and the publisher flushed): the burst is over."""
        self._since = 0.0
