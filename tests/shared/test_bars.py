"""shared/bars.py: bars on event time closed by a watermark, driven by hand-made event sequences."""

from __future__ import annotations

import random

import pytest

from shared.bars import Bar, BarBuilder, Watermark

S = 1_000_000_000
T0 = 1_700_000_000 * S  # a multiple of 10 s
L = 2 * S  # allowed lateness


class Stream:
    """One series through a watermark and a builder, as a service drives them."""

    def __init__(self, size_ns: int = 10 * S, lateness_ns: int = L) -> None:
        self.wm = Watermark(lateness_ns)
        self.bars = BarBuilder(size_ns)
        self.closed: list[Bar] = []

    def tick(self, event_ns: int, price: float, now_ns: int) -> bool:
        self.wm.observe(event_ns, now_ns)
        self.closed += self.bars.close_through(self.wm.point(now_ns))
        return self.bars.add(event_ns, price)

    def time(self, now_ns: int) -> None:
        self.closed += self.bars.close_through(self.wm.point(now_ns))


def ohlc(b: Bar) -> tuple[int, float, float, float, float, int]:
    return (b.start_ns, b.open, b.high, b.low, b.close, b.ticks)


def test_a_bucket_closes_when_event_time_passes_its_end_plus_the_lateness() -> None:
    s = Stream()
    s.tick(T0 + 1 * S, 1.0, T0 + 1 * S)
    s.tick(T0 + 9 * S, 3.0, T0 + 9 * S)
    s.tick(T0 + 10 * S, 2.0, T0 + 10 * S)  # the next bucket; the first is still open
    s.tick(T0 + 11 * S, 0.5, T0 + 11 * S)
    assert s.closed == []
    s.tick(T0 + 12 * S - 1, 2.5, T0 + 12 * S - 1)  # 1 ns short of end + lateness
    assert s.closed == []
    s.tick(T0 + 12 * S, 2.2, T0 + 12 * S)
    assert [ohlc(b) for b in s.closed] == [(T0, 1.0, 3.0, 1.0, 3.0, 2)]
    assert s.closed[0].end_ns == T0 + 10 * S
    assert [ohlc(b) for b in s.bars.bars] == [(T0 + 10 * S, 2.0, 2.5, 0.5, 2.2, 4)]


def test_an_input_within_the_lateness_joins_its_own_bar_not_the_next() -> None:
    s = Stream()
    s.tick(T0 + 5 * S, 1.0, T0 + 5 * S)
    s.tick(T0 + 10 * S, 2.0, T0 + 10 * S)
    # published at 9.9 s, arriving at 11.5 s after a tick of the next bucket: the first bar's
    assert s.tick(T0 + 9_900_000_000, 7.0, T0 + 11_500_000_000)
    s.tick(T0 + 12 * S, 2.0, T0 + 12 * S)
    assert [ohlc(b) for b in s.closed] == [(T0, 1.0, 7.0, 1.0, 7.0, 2)]
    assert s.bars.late == 0


def test_inputs_later_than_the_lateness_are_counted_and_kept_out_of_every_bar() -> None:
    s = Stream()
    s.tick(T0 + 5 * S, 1.0, T0 + 5 * S)
    s.tick(T0 + 13 * S, 2.0, T0 + 13 * S)  # closes [T0, T0 + 10 s)
    assert not s.tick(T0 + 9 * S, 99.0, T0 + 13 * S)
    assert s.bars.late == 1
    s.tick(T0 + 25 * S, 3.0, T0 + 25 * S)
    assert [ohlc(b) for b in s.closed] == [(T0, 1.0, 1.0, 1.0, 1.0, 1), (T0 + 10 * S, 2.0, 2.0, 2.0, 2.0, 1)]
    assert all(99.0 not in (b.high, b.close) for b in [*s.closed, *s.bars.bars])


def test_a_live_stream_that_goes_quiet_closes_by_the_wall_clock() -> None:
    s = Stream()
    s.tick(T0 + 3 * S, 1.0, T0 + 3 * S + 100_000_000)  # 0.1 s behind: live
    assert s.wm.live
    s.time(T0 + 12 * S - 1)
    assert s.closed == []
    s.time(T0 + 12 * S)
    assert [ohlc(b) for b in s.closed] == [(T0, 1.0, 1.0, 1.0, 1.0, 1)]
    # and then an input for the closed bucket is late, even though no later event came
    assert not s.tick(T0 + 9 * S, 5.0, T0 + 12 * S + 1)
    assert s.bars.late == 1


def test_a_replay_of_history_is_not_live_and_the_wall_clock_closes_nothing() -> None:
    s = Stream()
    now = T0 + 86400 * S  # replayed a day later
    s.tick(T0 + 3 * S, 1.0, now)
    assert not s.wm.live
    s.time(now + 3600 * S)
    assert s.closed == []
    # only the replayed event time closes it
    s.tick(T0 + 12 * S, 2.0, now + 3600 * S)
    assert [b.start_ns for b in s.closed] == [T0]


def test_an_event_time_ahead_of_the_wall_clock_closes_nothing_early() -> None:
    s = Stream()
    s.tick(T0 + 3 * S, 1.0, T0 + 3 * S)
    s.tick(T0 + 3600 * S, 2.0, T0 + 4 * S)  # an hour ahead of the clock: counts as now
    assert s.closed == [] and s.wm.event_ns == T0 + 4 * S
    assert s.tick(T0 + 5 * S, 3.0, T0 + 5 * S)  # not late


def test_empty_buckets_make_no_bar_and_the_point_never_goes_back() -> None:
    s = Stream()
    s.tick(T0 + 1 * S, 1.0, T0 + 1 * S)
    s.time(T0 + 100 * S)  # live: closes the first; the empty buckets after it make nothing
    s.tick(T0 + 101 * S, 2.0, T0 + 100 * S + 1)
    s.time(T0 + 200 * S)
    assert [b.start_ns for b in s.closed] == [T0, T0 + 100 * S]
    point = s.wm.point(T0 + 200 * S)
    s.wm.observe(T0 + 150 * S, T0 + 10_000 * S)  # a late, stale input: not live any more
    assert not s.wm.live and s.wm.point(T0 + 10_000 * S) == point


def test_zero_lateness_closes_a_bucket_at_the_first_input_of_a_later_one() -> None:
    s = Stream(lateness_ns=0)
    s.tick(T0 + 1 * S, 1.0, T0 + 1 * S)
    s.tick(T0 + 10 * S, 2.0, T0 + 10 * S)
    assert [b.start_ns for b in s.closed] == [T0]
    assert not s.tick(T0 + 9 * S, 3.0, T0 + 10 * S)


def test_a_shell_can_close_through_a_boundary_for_every_builder() -> None:
    wm = Watermark(L)
    a, b = BarBuilder(10 * S), BarBuilder(60 * S)
    wm.observe(T0 + 5 * S, T0 + 5 * S)
    a.add(T0 + 5 * S, 1.0)
    b.add(T0 + 5 * S, 1.0)
    wm.close_through(T0 + 10 * S)
    assert [x.start_ns for x in a.close_through(wm.last_point)] == [T0]
    assert b.close_through(wm.last_point) == [] and b.current is not None
    assert not a.add(T0 + 9 * S, 1.0) and b.add(T0 + 9 * S, 2.0)


@pytest.mark.parametrize("seed", range(5))
def test_bars_depend_on_the_events_only_not_on_how_fast_they_arrive(seed: int) -> None:
    """The same in-order events replayed at any pace (not live) give the same bars as live."""
    rng = random.Random(seed)
    events: list[tuple[int, float]] = []
    t = T0
    for _ in range(2000):
        t += rng.choice([1, 10, 100, 1000, 5000, 30_000]) * 1_000_000
        events.append((t, rng.uniform(0.1, 0.9)))

    def run(arrival: list[int]) -> list[tuple[int, float, float, float, float, int]]:
        s = Stream()
        for (ev, price), now in zip(events, arrival, strict=True):
            s.time(now)
            assert s.tick(ev, price, now)
        return [ohlc(b) for b in s.closed]

    live = run([ev + 1_000_000 for ev, _ in events])  # 1 ms behind, the wall clock closing quiet bars
    later = T0 + 86400 * S
    one_khz = run([later + i * 1_000_000 for i in range(len(events))])
    fastest = run([later] * len(events))
    assert live == one_khz == fastest
    assert len(live) > 10


def test_the_reads_for_interpreted_callers_match_the_bars() -> None:
    """``prices_at``, ``close_before`` and ``rows``: what alerts reads, scanned inside the builder."""
    b = BarBuilder(10 * S)
    assert b.prices_at(T0, 0.5) is None and b.close_before(T0, 0.5) == 0.5 and b.rows() == []
    b.add(T0 + 1 * S, 1.0)
    b.add(T0 + 21 * S, 3.0)  # two open bars: within the lateness nothing closed them
    b.add(T0 + 2 * S, 2.0)
    expected = [(T0, 1.0, 2.0, 1.0, 2.0, 2), (T0 + 20 * S, 3.0, 3.0, 3.0, 3.0, 1)]
    assert [ohlc(x) for x in b.bars] == b.rows() == expected
    assert b.prices_at(T0, 0.5) == (1.0, 2.0, 1.0, 2.0, 0.5)  # no bar before it: the default
    assert b.prices_at(T0 + 20 * S, 0.5) == (3.0, 3.0, 3.0, 3.0, 2.0)  # the newest bar before it
    assert b.prices_at(T0 + 10 * S, 0.5) is None
    assert b.close_before(T0 + 20 * S, 0.5) == 2.0
    assert b.close_before(T0 + 30 * S, 0.5) == 3.0
