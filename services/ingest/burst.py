"""When a burst's messages go out before the burst ends. Pure.

The publisher flushes when the event loop turns. One socket read can hold hundreds of frames, all
routed in one turn: the first frame's messages would wait for the last one's. ``BurstFlush`` is
told when each frame was routed and flushes once the frames not flushed yet span ``after``
seconds, so a message waits at most about that long for the rest of its burst. Consecutive
messages are mostly of different assets' topics, each its own send either way: an early flush
costs one flush call, not extra frames on the wire.
"""

from __future__ import annotations

from collections.abc import Callable

FLUSH_AFTER_S = 0.0005


class BurstFlush:
    __slots__ = ("_since", "after", "flush", "flushes")

    def __init__(self, flush: Callable[[], None], after: float = FLUSH_AFTER_S) -> None:
        self.flush = flush
        self.after = after
        self.flushes = 0
        self._since = 0.0  # when the first frame not flushed here began routing (0.0: none)

    def routed(self, began: float, ended: float) -> None:
        """A frame was routed from ``began`` to ``ended`` (a monotonic clock, seconds).

        The loop's own flushes are not seen here: the first frame after one finds an old
        ``_since`` and flushes at once (it is the one that waited longest in the socket)."""
        since = self._since
        if not since:
            self._since = began
        elif ended - since >= self.after:
            self.flushes += 1
            self._since = 0.0
            self.flush()
