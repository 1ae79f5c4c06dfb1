"""BurstFlush: a burst routed in one loop turn sends its first messages before its end."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from services.ingest.burst import BurstFlush
from services.ingest.metrics import IngestCollector
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions


def test_a_long_burst_is_flushed_every_half_millisecond_and_a_short_one_is_left_to_the_loop() -> None:
    flushed_after: list[int] = []
    frames = 0
    burst = BurstFlush(lambda: flushed_after.append(frames), lambda _: None, after=0.0005)
    t = 100.0
    for _ in range(10):  # 10 frames of 0.1 ms: 1 ms in all
        frames += 1
        burst.routed(t, t + 0.0001)
        t += 0.0001
    # the frames not flushed span 0.5 ms at the 5th frame's end, and again at the 10th's
    assert flushed_after == [5, 10] and burst.flushes == 2

    quiet = BurstFlush(lambda: flushed_after.append(-1), lambda _: None, after=0.0005)
    quiet.routed(200.0, 200.0001)
    quiet.routed(200.0001, 200.0002)
    assert quiet.flushes == 0  # short: the loop's own flush sends it


def test_a_turn_of_the_loop_ends_the_burst() -> None:
    turns: list[Callable[[], None]] = []  # what the loop runs when it turns (call_soon)
    burst = BurstFlush(lambda: None, turns.append, after=0.0005)
    burst.routed(1.0, 1.0001)
    assert len(turns) == 1  # the first frame of a turn schedules the burst's end
    burst.routed(1.0001, 1.0002)
    assert len(turns) == 1
    turns.pop()()  # the loop turned: the publisher flushed these two itself
    # A later turn's first frame starts a span of its own: no flush for the pause before it (it was
    # one per burst, waking ZeroMQ's I/O thread in the middle of every burst).
    burst.routed(2.0, 2.0001)
    burst.routed(2.0001, 2.0002)
    assert burst.flushes == 0 and len(turns) == 1
    for i in range(2, 6):  # the same turn goes on past 0.5 ms: flushed inside it, once
        burst.routed(2.0 + i * 0.0001, 2.0 + (i + 1) * 0.0001)
    assert burst.flushes == 1 and len(turns) == 1


def test_flushes_inside_bursts_are_exported() -> None:
    router = Router(lambda t, m: None, verify_hashes=False)
    subscriptions = Subscriptions()
    pool = ConnectionPool(subscriptions, router, Limits(), lambda cid: None)  # type: ignore[arg-type,return-value]
    collector = IngestCollector(pool, router, subscriptions)
    burst = BurstFlush(lambda: None, lambda _: None, after=0.0005)
    collector.burst_flushes = lambda: burst.flushes
    registry = CollectorRegistry()
    registry.register(collector)
    for i in range(12):  # 1.2 ms of frames in one turn: two flushes inside it
        burst.routed(1.0 + i * 0.0001, 1.0 + (i + 1) * 0.0001)
    assert "poolwire_ingest_burst_flushes_total 2.0" in generate_latest(registry).decode()
