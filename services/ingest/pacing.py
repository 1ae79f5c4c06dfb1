"""At most one turn of ingest's event loop a period, under load: interrupt moderation. Pure.

The exchange's frames arrive one by one, over many sockets, and each that finds the loop asleep
wakes it. Under load most wakeups carry one or two frames, and a wakeup costs more than the frame:
on the 2-core machine of the benchmarks, ingest at 10 k updates/s woke 3 000-3 500 times a second.
The three services in one process spent 31 us of CPU an update on the shared cores, waking ~4 000
times a second, and 21 us with a core of their own, waking ~850 times (fewer, larger wakeups).

``TurnPacer`` does what a network card's interrupt moderation does. When frames begin to be routed
less than ``period`` after the loop last went idle (they come faster than one wakeup a period),
the loop, its work done, sleeps until ``period`` after they began: what the exchange writes
meanwhile waits in the sockets' buffers, and the next turn reads it all at once. A frame after a
quiet spell is routed at once, as before: a quiet feed pays nothing; under load a frame waits at
most a period, and the loop wakes about once a period.

The sleep comes ``settle_turns`` turns of the loop after the frames, so that what they published is
read in-process first: co-hosted services (``python -m services``) read ingest's messages a turn
after they are sent, and the next service's a turn after that. The loop sleeps whole: nothing else
in the process runs meanwhile (ZeroMQ's I/O thread does, and sends what was published).
"""

from __future__ import annotations

import time
from collections.abc import Callable

SETTLE_TURNS = 4  # ingest's flush, registry's read and flush, alerts' read


class TurnPacer:
    __slots__ = (
        "_began",
        "_idle_at",
        "_pending",
        "_turns_left",
        "clock",
        "defer",
        "napped_s",
        "naps",
        "period",
        "settle_turns",
        "sleep",
    )

    def __init__(
        self,
        period: float,
        defer: Callable[[Callable[[], None]], object],
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        settle_turns: int = SETTLE_TURNS,
    ) -> None:
        self.period = period
        self.defer = defer  # the loop's call_soon: runs a callback at the loop's next turn
        self.clock = clock
        self.sleep = sleep
        self.settle_turns = settle_turns
        self.naps = 0
        self.napped_s = 0.0
        self._pending = False
        self._began = 0.0  # when this stretch's first frame began routing
        self._idle_at = -period  # when the loop last went idle (after its sleep, if any)
        self._turns_left = 0

    def woke(self, now: float) -> None:
        """A frame is being routed (``now``: the clock's time)."""
        if self._pending or not self.period:
            return
        self._pending = True
        self._began = now
        self._turns_left = self.settle_turns
        self.defer(self._settle)

    def _settle(self) -> None:
        if self._turns_left:
            self._turns_left -= 1
            self.defer(self._settle)
            return
        self._pending = False
        began = self._began
        if began - self._idle_at < self.period:
            wait = began + self.period - self.clock()
            if wait > 0:
                self.naps += 1
                self.napped_s += wait
                self.sleep(wait)
        self._idle_at = self.clock()
