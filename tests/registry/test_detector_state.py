"""Detector state across restarts: export, store, import, and continue exactly."""

from __future__ import annotations

import logging
import random
import sqlite3
from pathlib import Path

import msgspec
import pytest

from services.registry.detectors import Detectors
from services.registry.pair_state import CandleState, PairState
from services.registry.patterns import Detection
from services.registry.restore import restore_detectors
from services.registry.store import ZoneStore
from services.registry.zones import BSL, FVG_BEARISH, FVG_BULLISH, SSL
from shared.bars import Watermark

S = 1_000_000_000
M = 60 * S
T0 = 1_700_000_000 * S - (1_700_000_000 * S) % (3600 * S)
TIMEFRAMES = {"M1": M, "M5": 5 * M}
SYMBOLS = ["pm.a", "pm.b", "pm.c"]

Step = tuple[str, str, int, float]  # ("tick", symbol, ts, price) or ("time", "", now, 0.0)


def price_stream(seed: int = 7, n: int = 6000) -> list[Step]:
    """A random walk per symbol with jumps (FVGs), empty buckets, late ticks and timer passes."""
    rng = random.Random(seed)
    prices = dict.fromkeys(SYMBOLS, 1.0)
    t = T0
    steps: list[Step] = []
    for _ in range(n):
        t += rng.randrange(1, 15) * S
        if rng.random() < 0.01:
            t += rng.randrange(2, 12) * M  # a quiet stretch: empty buckets
        sym = rng.choice(SYMBOLS)
        prices[sym] *= 1 + rng.gauss(0, 0.004) + (rng.choice((-0.03, 0.03)) if rng.random() < 0.02 else 0)
        late = rng.random() < 0.02
        steps.append(("tick", sym, t - rng.randrange(60, 400) * S if late else t, prices[sym]))
        if rng.random() < 0.03:
            steps.append(("time", "", t, 0.0))
    return steps


def run(det: Detectors, steps: list[Step], first: int = 0) -> list[tuple[int, Detection]]:
    """Feed ``steps``; each detection with the index (in the whole stream) of the step that made it."""
    found: list[tuple[int, Detection]] = []
    for i, (what, sym, ts, price) in enumerate(steps, start=first):
        out = det.on_price(sym, ts, price) if what == "tick" else det.on_time(ts)
        found.extend((i, d) for d in out)
    return found


def key(item: tuple[int, Detection]) -> tuple[object, ...]:
    i, d = item
    return (i, d.created_ns, d.symbol, d.timeframe, d.kind, d.top, d.bottom, d.strength)


def fresh() -> Detectors:
    return Detectors(dict(TIMEFRAMES), swing_bars=2)


STEPS = price_stream()
WHOLE = sorted(run(fresh(), STEPS), key=key)


def test_the_stream_exercises_every_detector() -> None:
    kinds = {d.kind for _, d in WHOLE}
    assert {FVG_BULLISH, FVG_BEARISH, BSL, SSL} <= kinds
    det = fresh()
    run(det, STEPS)
    assert det.stats.late_ticks > 10


@pytest.mark.parametrize("split", [1, 2, len(STEPS) // 3, len(STEPS) // 2, len(STEPS) - 5])
def test_state_restored_into_fresh_detectors_continues_exactly(split: int) -> None:
    det = fresh()
    before = run(det, STEPS[:split])
    state = det.state()
    as_taken = msgspec.msgpack.encode(state)
    run(det, STEPS[split:], first=split)
    assert msgspec.msgpack.encode(state) == as_taken  # a copy: going on does not change it
    resumed = fresh()
    report = resumed.restore(state)
    assert (report.restored, report.resized, report.dropped) == (len(state), 0, [])
    after = run(resumed, STEPS[split:], first=split)
    assert sorted(before + after, key=key) == WHOLE


def test_starting_empty_at_the_split_misses_detections_that_straddle_it() -> None:
    split = len(STEPS) // 2
    before = run(fresh(), STEPS[:split])
    after = run(fresh(), STEPS[split:], first=split)
    assert sorted(before + after, key=key) != WHOLE


def test_state_through_a_store_file_with_batched_flushes(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    split = len(STEPS) // 2
    store = ZoneStore(path)
    det = fresh()
    before: list[tuple[int, Detection]] = []
    for start in range(0, split, 50):  # flush every 50 steps, as the service does every batch
        before += run(det, STEPS[start : min(start + 50, split)], first=start)
        store.states_changed(det.changed())
        store.flush()
    # Killed here: a second store on the same file sees what the last flush committed.
    reopened = ZoneStore(path)
    stored = reopened.load_detector_state()
    assert {(s.symbol, s.timeframe): s for s in stored} == {(s.symbol, s.timeframe): s for s in det.state()}
    resumed = fresh()
    assert resumed.restore(stored).restored == len(SYMBOLS) * len(TIMEFRAMES)
    after = run(resumed, STEPS[split:], first=split)
    assert sorted(before + after, key=key) == WHOLE
    reopened.close()
    store.close()


def test_only_changed_pairs_are_reported() -> None:
    det = fresh()
    det.on_price("pm.a", T0 + 10 * S, 1.0)
    det.on_price("pm.b", T0 + 10 * S, 1.0)
    assert {(s.symbol, s.timeframe) for s in det.changed()} == {
        ("pm.a", "M1"),
        ("pm.a", "M5"),
        ("pm.b", "M1"),
        ("pm.b", "M5"),
    }
    assert det.changed() == []
    det.on_price("pm.a", T0 + 2 * M, 1.1)  # closes pm.a's M1 candle, extends its M5 one
    assert {(s.symbol, s.timeframe) for s in det.changed()} == {("pm.a", "M1"), ("pm.a", "M5")}
    det.on_price("pm.a", T0 + 30 * S, 1.2)  # late for M1; M5's open candle takes it
    assert [(s.symbol, s.timeframe) for s in det.changed()] == [("pm.a", "M5")]
    det.on_time(T0 + 5 * M)  # closes every open candle but pm.a's M1 (its bucket runs to 3 min)
    assert {(s.symbol, s.timeframe) for s in det.changed()} == {
        ("pm.a", "M1"),
        ("pm.a", "M5"),
        ("pm.b", "M1"),
        ("pm.b", "M5"),
    }


def test_restored_last_closed_bucket_keeps_late_ticks_dropped() -> None:
    det = fresh()
    det.on_price("pm.a", T0, 1.0)
    det.on_time(T0 + M)  # M1 candle closed by time: no open M1 candle
    (m1,) = [s for s in det.state() if s.timeframe == "M1"]
    assert m1.current is None and m1.last_closed_start == T0
    resumed = fresh()
    resumed.restore(det.state())
    assert resumed.on_price("pm.a", T0 + 30 * S, 2.0) == []
    assert resumed.stats.late_ticks == 1  # late for M1 (its M5 candle takes it)


def test_a_restored_open_candle_whose_bucket_ended_closes_on_time_or_on_the_next_tick() -> None:
    closed = [CandleState(T0 + i * M, T0 + (i + 1) * M, 1.0, 1.1, 0.9, 1.0) for i in range(2)]
    gap_candle = CandleState(T0 + 2 * M, T0 + 3 * M, 1.5, 1.6, 1.4, 1.5)  # low 1.4 > 1.1: a bullish FVG
    state = PairState(
        symbol="pm.a",
        timeframe="M1",
        tf_ns=M,
        swing_bars=2,
        last_closed_start=T0 + M,
        current=gap_candle,
        closed=closed,
    )
    by_time = fresh()
    by_time.restore([state])
    (fvg,) = by_time.on_time(T0 + 60 * M)
    assert (fvg.kind, fvg.top, fvg.bottom, fvg.created_ns) == (FVG_BULLISH, 1.4, 1.1, T0 + 3 * M)
    by_tick = fresh()
    by_tick.restore([state])
    assert [d.created_ns for d in by_tick.on_price("pm.a", T0 + 60 * M, 1.5)] == [T0 + 3 * M]
    same_bucket = fresh()
    same_bucket.restore([state])
    same_bucket.on_price("pm.a", T0 + 2 * M + 30 * S, 2.0)
    assert state.current == CandleState(T0 + 2 * M, T0 + 3 * M, 1.5, 1.6, 1.4, 1.5)  # restore copied it


def test_states_that_do_not_fit_the_config_are_dropped_with_a_reason() -> None:
    det = fresh()
    run(det, STEPS[:500])
    states = det.state()
    only_m1 = Detectors({"M1": M}, swing_bars=2)
    report = only_m1.restore(states)
    assert report.restored == len(SYMBOLS)
    assert {(d.timeframe, d.reason) for d in report.dropped} == {
        ("M5", "timeframe not configured for detectors")
    }
    m1 = next(s for s in states if s.timeframe == "M1")
    bad = [
        PairState(symbol="pm.a", timeframe="M1", tf_ns=5 * M, swing_bars=2),
        PairState(symbol="", timeframe="M1", tf_ns=M, swing_bars=2),
        PairState(symbol="pm.a", timeframe="M1", tf_ns=M, swing_bars=2, closed=m1.closed[::-1]),
        PairState(
            symbol="pm.a",
            timeframe="M1",
            tf_ns=M,
            swing_bars=2,
            last_closed_start=T0,
            current=CandleState(T0 + 7, T0 + M + 7, 1.0, 1.0, 1.0, 1.0),
        ),
    ]
    report = fresh().restore(bad)
    assert report.restored == 0
    assert [d.reason for d in report.dropped] == [
        f"timeframe length changed ({5 * M} ns stored, {M} ns now)",
        "empty symbol",
        "closed candles out of order",
        "open candle inconsistent",
    ]


@pytest.mark.parametrize("swing_bars", [1, 3])
def test_a_different_swing_bars_keeps_the_candles_with_the_window_resized(swing_bars: int) -> None:
    det = fresh()
    split = len(STEPS) // 2
    run(det, STEPS[:split])
    resumed = Detectors(dict(TIMEFRAMES), swing_bars=swing_bars)
    report = resumed.restore(det.state())
    assert report.resized == report.restored == len(SYMBOLS) * len(TIMEFRAMES)
    for st in resumed.state():
        assert len(st.closed) <= max(3, 2 * swing_bars + 1) and st.swing_bars == swing_bars
    # Later on, it finds exactly what detectors run with the new N from the start find.
    tail = len(STEPS) * 3 // 4
    expected = [x for x in run(Detectors(dict(TIMEFRAMES), swing_bars=swing_bars), STEPS) if x[0] >= tail]
    got = [x for x in run(resumed, STEPS[split:], first=split) if x[0] >= tail]
    assert sorted(got, key=key) == sorted(expected, key=key)


def test_corrupt_state_rows_are_counted_logged_and_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    store = ZoneStore(path)
    det = fresh()
    run(det, STEPS[:300])
    store.states_changed(det.state())
    store.flush()
    db = sqlite3.connect(path)
    db.execute("UPDATE detector_state SET body = ? WHERE symbol = 'pm.a' AND timeframe = 'M1'", (b"\xc1",))
    db.execute(
        "UPDATE detector_state SET body = ? WHERE symbol = 'pm.b' AND timeframe = 'M5'",
        (b"\x93\x01\x02\x03",),
    )
    db.commit()
    db.close()
    loader = ZoneStore(path)
    with caplog.at_level(logging.WARNING, "poolwire.registry.store"):
        loaded = loader.load_detector_state()
    assert loader.corrupt_states == 2
    loader.close()
    assert len(loaded) == len(SYMBOLS) * len(TIMEFRAMES) - 2
    assert ("pm.a", "M1") not in {(s.symbol, s.timeframe) for s in loaded}
    assert sum("does not decode" in r.getMessage() for r in caplog.records) == 2
    store.close()


def test_the_service_drops_states_of_a_removed_timeframe_from_the_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    store = ZoneStore(path)
    det = fresh()
    run(det, STEPS[:300])
    store.states_changed(det.state())
    store.close()

    store = ZoneStore(path)
    only_m1 = Detectors({"M1": M}, swing_bars=2)
    with caplog.at_level(logging.INFO, "poolwire.registry"):
        restore_detectors(only_m1, store)
    dropped = [
        r.getMessage() for r in caplog.records if "dropped: timeframe not configured" in r.getMessage()
    ]
    assert len(dropped) == len(SYMBOLS)
    assert only_m1.changed() == []  # restoring is not a change
    store.close()
    store = ZoneStore(path)
    assert {s.timeframe for s in store.load_detector_state()} == {"M1"}
    store.close()


def test_zones_and_detector_state_commit_together(tmp_path: Path) -> None:
    from shared.messages import Zone

    path = tmp_path / "registry.sqlite"
    store = ZoneStore(path)
    det = fresh()
    run(det, STEPS[:100])
    store.states_changed(det.changed())
    store.changed(
        Zone(
            id="z1",
            symbol="pm.a",
            timeframe="M1",
            kind="custom",
            top=1.0,
            bottom=0.5,
            strength=1.0,
            created_ns=T0,
            expires_ns=T0 + M,
        )
    )
    assert store.pending == 1 + len(SYMBOLS) * len(TIMEFRAMES)
    assert store.flush() == store.writes == 1 + len(SYMBOLS) * len(TIMEFRAMES)
    assert store.pending == 0
    other = ZoneStore(path)
    assert [z.id for z in other.load()] == ["z1"] and len(other.load_detector_state()) == 6
    other.close()
    store.close()


def test_a_limited_export_takes_closed_candles_first_and_leaves_the_rest_for_the_next() -> None:
    d = Detectors({"M1": 60 * S}, swing_bars=2)
    for sym in ("a", "b", "c", "d"):
        d.on_price(sym, T0, 1.0)
    d.changed()  # all exported
    d.on_price("a", T0 + S, 1.1)  # open candles move
    d.on_price("b", T0 + 2 * S, 1.2)
    d.on_price("d", T0 + 61 * S, 1.3)  # closes d's first candle: d's window moved
    assert d.pending == 3
    first = d.changed(limit=2)
    assert [st.symbol for st in first] == ["d", "a"]  # the closed candle first, then oldest change
    assert len(first[0].closed) == 1 and first[1].current is not None and first[1].current.high == 1.1
    assert [st.symbol for st in d.changed(limit=2)] == ["b"]
    assert d.changed() == [] and d.pending == 0


@pytest.mark.parametrize("lateness_s", [0, 2])
def test_the_tick_fast_path_gives_what_the_full_path_gives(lateness_s: int) -> None:
    """Most ticks only update each timeframe's newest candle (Detectors' fast path): the same
    detections, late ticks, changed states and exported state as ticks all taken the full way."""
    full_way = Detectors(dict(TIMEFRAMES), swing_bars=2, lateness_ns=lateness_s * S)
    fast = Detectors(dict(TIMEFRAMES), swing_bars=2, lateness_ns=lateness_s * S)
    slow_ticks = ticks = 0
    for i, (what, sym, ts, price) in enumerate(STEPS):
        if what == "tick":
            ticks += 1
            full_way._open.clear()  # no fast path: every tick goes the full way
            assert fast.on_price(sym, ts, price) == full_way.on_price(sym, ts, price)
            # a fast tick gathers into its symbol's fast path; a slow one hands what was gathered
            # to the candles first, and leaves it empty
            slow_ticks += fast._open[sym].ticks == 0
        else:
            assert fast.on_time(ts) == full_way.on_time(ts)
        if i % 3 == 0:  # often: a fast tick after the export of its symbol's last slow one
            assert fast.changed(2) == full_way.changed(2)
    assert fast.changed() == full_way.changed()
    assert fast.state() == full_way.state()
    assert fast.stats == full_way.stats and fast.stats.late_ticks > 10
    assert slow_ticks < 0.7 * ticks  # the fast path took the rest


@pytest.mark.parametrize("lateness_s", [0, 2])
def test_watermark_advance_is_observe_then_point(lateness_s: int) -> None:
    """The tick path's one call gives what the two calls give: the same point and the same mark."""
    rng = random.Random(7)
    one, two = Watermark(lateness_s * S), Watermark(lateness_s * S)
    now, kinds = T0, set()
    for _ in range(2_000):
        now += rng.choice((0, S // 2, 3 * S))
        event = now + rng.randrange(-10 * S, 2 * S)  # late, on time, or ahead of the clock
        two.observe(event, now)
        assert one.advance(event, now) == two.point(now)
        assert (one.event_ns, one.live, one.last_point) == (two.event_ns, two.live, two.last_point)
        kinds.add(one.live)
    assert kinds == {True, False}  # both a live stream and one behind the clock were seen
