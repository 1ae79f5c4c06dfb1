"""Bad-input logging for the registry process: one RateLimitedLog, and a filter that sends the
per-input warnings of shared/ code (the Puller's "skipped N undecodable message(s) on PULL", the
snapshot server's "skipped a malformed snapshot request") through it. shared/ writes one line per bad
frame; behind this filter a flood of garbage writes a burst per minute and then a summary line."""

from __future__ import annotations

import logging

from shared.ratelog import RateLimitedLog

SHARED_LOGGERS = ("poolwire.bus", "poolwire.snapshot")


class RateLimitFilter(logging.Filter):
    """Passes everything but WARNING records, which go through ``limiter`` keyed by their template."""

    def __init__(self, limiter: RateLimitedLog) -> None:
        super().__init__()
        self.limiter = limiter

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        self.limiter(f"{record.name}: {record.msg}", "%s: %s", record.name, record.getMessage())
        return False

    def install(self) -> RateLimitFilter:
        for name in SHARED_LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def remove(self) -> None:
        for name in SHARED_LOGGERS:
            logging.getLogger(name).removeFilter(self)
