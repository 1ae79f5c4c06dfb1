"""shared.ratelog: a flood of one bad input gives a bounded number of log lines, and says how many."""

from __future__ import annotations

import logging

import pytest

from shared.ratelog import RateLimitedLog


def test_a_flood_logs_the_burst_then_one_summary_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelog"), burst=3, interval=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        for i in range(500):
            log("bad_frame", "bad frame %d", i)
        log("bad_ttl", "bad ttl")  # another reason has its own burst
        assert [r.getMessage() for r in caplog.records] == [
            "bad frame 0",
            "bad frame 1",
            "bad frame 2",
            "bad ttl",
        ]
        now[0] = 59.0
        log.flush()
        assert len(caplog.records) == 4  # the interval is not over yet
        now[0] = 61.0
        log.flush()
    assert caplog.records[-1].getMessage() == "497 more bad_frame message(s) suppressed in the last 61 s"
    assert len(caplog.records) == 5  # bad_ttl suppressed nothing: no summary
    assert log.suppressed == 497
    with caplog.at_level(logging.WARNING, logger="test.ratelog"):
        log("bad_frame", "bad frame again")  # a new interval: logged again
    assert caplog.records[-1].getMessage() == "bad frame again"
