"""Rate-limited logging for skips that a bad stream could repeat thousands of times a second.

Per reason, the first ``burst`` messages of each ``interval`` are logged; the rest are only
counted, and one summary line with the count suppressed is written when the interval is over
(at that reason's next message, or at :meth:`flush`, which a service calls now and then: sync
after each block).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class RateLimitedLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 10,
        interval: float = 60.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.burst = burst
        self.interval = interval
        self.level = level
        self.clock = clock
        self.suppressed = 0  # lines not written, over the log's lifetime
        self._windows: dict[str, _Window] = {}

    def __call__(self, reason: str, msg: str, *args: object) -> None:
        now = self.clock()
        window = self._windows.get(reason)
        if window is None or now - window.start >= self.interval:
            if window is not None:
                self._summary(reason, window, now)
            window = self._windows[reason] = _Window(now)
        if window.logged < self.burst:
            window.logged += 1
            self.logger.log(self.level, msg, *args)
        else:
            window.suppressed += 1
            self.suppressed += 1

    def flush(self) -> None:
        """Write the summary of every reason whose interval is over (cheap when there is none)."""
        if not self._windows:
            return
        now = self.clock()
        for reason, window in list(self._windows.items()):
            if now - window.start >= self.interval:
                self._summary(reason, window, now)
                del self._windows[reason]

    def _summary(self, reason: str, window: _Window, now: float) -> None:
        if window.suppressed:
            self.logger.log(
                self.level,
                "%d more %s message(s) suppressed in the last %.0f s",
                window.suppressed,
                reason,
                now - window.start,
            )
