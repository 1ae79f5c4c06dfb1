from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.registry.wheel import HeapTimers, TimingWheel

S = 1_000_000_000
MS = 1_000_000
DAY = 86_400 * S
START = 1_700_000_000 * S + 123_456_789  # not aligned to any tick on purpose


def test_fires_exactly_at_deadline_never_early() -> None:
    w: TimingWheel[str] = TimingWheel(START)
    w.schedule("a", START + S)
    assert w.advance(START + S - 1) == []
    assert w.advance(START + S) == ["a"]
    assert len(w) == 0


def test_past_deadline_fires_on_next_advance() -> None:
    w: TimingWheel[str] = TimingWheel(START)
    w.advance(START + 10 * S)
    w.schedule("late", START)  # out of order: already due
    assert w.advance(START + 10 * S) == ["late"]


def test_cancel_and_reschedule() -> None:
    w: TimingWheel[int] = TimingWheel(START)
    w.schedule(1, START + 5 * S)
    w.schedule(2, START + 5 * S)
    assert w.cancel(1)
    assert not w.cancel(1)
    w.schedule(2, START + 9 * S)  # replaces
    assert w.deadline(2) == START + 9 * S
    assert w.advance(START + 6 * S) == []
    assert w.advance(START + 9 * S) == [2]


def test_seven_day_ttls_across_day_boundaries_and_cascades() -> None:
    w: TimingWheel[int] = TimingWheel(START)
    deadlines = {i: START + i * (7 * DAY // 1000) + i for i in range(1, 1001)}
    for k, d in deadlines.items():
        w.schedule(k, d)
    fired: dict[int, int] = {}
    t = START
    while t < START + 8 * DAY:
        t += 3_600 * S + 7  # hourly steps, off-grid
        for k in w.advance(t):
            fired[k] = t
    assert set(fired) == set(deadlines)
    for k, at in fired.items():
        assert deadlines[k] <= at < deadlines[k] + 3_600 * S + 7


def test_overflow_beyond_span() -> None:
    w: TimingWheel[str] = TimingWheel(START, bits=4, levels=2)  # span 256 ms
    w.schedule("far", START + 10 * S)
    w.schedule("near", START + 100 * MS)
    assert w.advance(START + 5 * S) == ["near"]
    assert w.next_deadline_ns() == START + 10 * S
    assert w.advance(START + 10 * S - 1) == []
    assert w.advance(START + 10 * S) == ["far"]


def test_next_deadline() -> None:
    w: TimingWheel[str] = TimingWheel(START)
    assert w.next_deadline_ns() is None
    w.schedule("b", START + 3 * DAY)
    w.schedule("a", START + 2 * S)
    assert w.next_deadline_ns() == START + 2 * S
    w.cancel("a")
    assert w.next_deadline_ns() == START + 3 * DAY


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 20 * DAY), min_size=1, max_size=40), st.integers(0, 3))
def test_next_bound_is_a_lower_bound_that_reaches_the_deadline(offsets: list[int], cancels: int) -> None:
    """Advancing to the bound again and again reaches the exact next deadline, one cascade per
    level (overflow included), and never fires anything early on the way."""
    w: TimingWheel[int] = TimingWheel(START, bits=4, levels=3)  # span 4 s: overflow is exercised
    for k, off in enumerate(offsets):
        w.schedule(k, START + off)
    for k in range(min(cancels, len(offsets) - 1)):
        w.cancel(k)
    exact = w.next_deadline_ns()
    assert exact is not None
    looks = 0
    while (bound := w.next_bound_ns()) != exact:
        assert bound is not None and w.now_ns <= bound < exact
        assert w.advance(bound) == []
        looks += 1
        assert looks <= 4
    assert w.advance(exact) != []


def test_next_bound_of_an_empty_wheel() -> None:
    w: TimingWheel[str] = TimingWheel(START)
    assert w.next_bound_ns() is None
    w.schedule("a", START + 2 * DAY)
    w.advance(START + 2 * DAY)
    assert w.next_bound_ns() is None


def test_time_never_goes_back() -> None:
    w: TimingWheel[str] = TimingWheel(START)
    w.advance(START + S)
    w.schedule("x", START + S)
    assert w.advance(START) == ["x"]
    assert w.now_ns == START + S


def test_bad_parameters() -> None:
    with pytest.raises(ValueError):
        TimingWheel(0, tick_ns=0)


ops = st.lists(
    st.one_of(
        st.tuples(st.just("schedule"), st.integers(0, 40), st.integers(-5 * S, 8 * DAY)),
        st.tuples(st.just("cancel"), st.integers(0, 40), st.just(0)),
        st.tuples(
            st.just("advance"),
            st.just(0),
            st.one_of(st.integers(0, 2 * S), st.integers(0, DAY), st.integers(0, 3 * DAY)),
        ),
    ),
    max_size=120,
)


@pytest.mark.parametrize(
    ("tick", "bits", "levels"), [(1 * MS, 10, 3), (1 * MS, 6, 6), (S, 6, 4), (7 * MS, 3, 4)]
)
@settings(max_examples=150, deadline=None)
@given(ops=ops, start=st.integers(0, DAY))
def test_matches_heap_reference(
    tick: int, bits: int, levels: int, ops: list[tuple[str, int, int]], start: int
) -> None:
    now = START + start
    wheel: TimingWheel[int] = TimingWheel(now, tick_ns=tick, bits=bits, levels=levels)
    heap: HeapTimers[int] = HeapTimers(now)
    for op, key, value in ops:
        if op == "schedule":
            wheel.schedule(key, now + value)
            heap.schedule(key, now + value)
        elif op == "cancel":
            assert wheel.cancel(key) == heap.cancel(key)
        else:
            now += value
            assert sorted(wheel.advance(now)) == sorted(heap.advance(now))
        assert len(wheel) == len(heap)
    now += 20 * DAY
    assert sorted(wheel.advance(now)) == sorted(heap.advance(now))
    assert len(wheel) == 0
