from __future__ import annotations

import msgspec
import pytest

from services.registry.config import RegistryConfig
from services.registry.detectors import Detectors
from services.registry.patterns import Candle, PatternDetector
from services.registry.zones import BSL, FVG_BEARISH, FVG_BULLISH, SSL

S = 1_000_000_000
M = 60 * S
T0 = 1_700_000_000 * S - (1_700_000_000 * S) % (3600 * S)  # an hour boundary


def candle(i: int, o: float, h: float, lo: float, c: float) -> Candle:
    return Candle(T0 + i * M, T0 + (i + 1) * M, o, h, lo, c)


def test_candle_buckets_and_late_ticks() -> None:
    det = Detectors({"M1": M})

    def candles() -> list[Candle]:
        return list(det._pairs["pm.a"][0][1].candles)

    det.on_price("pm.a", T0 + 5 * S, 1.0)
    det.on_price("pm.a", T0 + 59 * S, 3.0)
    det.on_price("pm.a", T0 + 30 * S, 0.5)
    det.on_price("pm.a", T0 + M, 2.0)  # first tick of the next bucket closes the first
    assert candles() == [Candle(T0, T0 + M, 1.0, 3.0, 0.5, 0.5, ticks=3)]
    det.on_price("pm.a", T0 + 59 * S, 9.0)  # late: its candle is closed
    assert det.stats.late_ticks == 1
    builder = det._pairs["pm.a"][0][0]
    assert builder.current is not None and builder.current.high == 2.0
    det.on_time(T0 + 2 * M - 1)
    assert len(candles()) == 1
    det.on_time(T0 + 2 * M)
    assert candles()[-1] == Candle(T0 + M, T0 + 2 * M, 2.0, 2.0, 2.0, 2.0)
    det.on_price("pm.a", T0 + 90 * S, 1.0, T0 + 2 * M)  # closed by time: still late
    assert det.stats.late_ticks == 2
    det.on_price("pm.a", T0 + 10 * M, 1.0)  # gap of empty buckets: just a new candle
    assert builder.current is not None and builder.current.start_ns == T0 + 10 * M
    assert len(candles()) == 2


def test_candles_close_on_event_time_plus_the_lateness_and_a_replay_is_not_closed_by_the_clock() -> None:
    det = Detectors({"M1": M}, lateness_ns=2 * S)
    later = T0 + 86400 * S  # replayed a day later, tick by tick
    det.on_price("pm.a", T0 + 5 * S, 1.0, later)
    det.on_price("pm.a", T0 + M, 2.0, later)  # the next bucket; the first waits for the lateness
    det.on_price("pm.a", T0 + 59 * S, 3.0, later)  # within the lateness: its own candle
    assert det.on_time(later + 3600 * S) == [] and det.stats.candles == {"M1": 0}  # not live
    det.on_price("pm.a", T0 + M + 2 * S, 2.5, later)
    assert det.stats.candles == {"M1": 1} and det.stats.late_ticks == 0
    assert list(det._pairs["pm.a"][0][1].candles) == [Candle(T0, T0 + M, 1.0, 3.0, 1.0, 3.0, ticks=2)]
    # live: a quiet symbol's candle closes when the wall clock passes its end plus the lateness
    det.on_price("pm.b", T0 + 5 * S, 1.0, T0 + 5 * S + 10**6)
    assert det.next_due_ns() == T0 + M + 2 * S
    det.on_time(T0 + M + 2 * S - 1)
    assert det.stats.candles == {"M1": 1}
    det.on_time(T0 + M + 2 * S)
    assert det.stats.candles == {"M1": 2}


def test_fvg_bullish_and_bearish_on_hand_built_candles() -> None:
    d = PatternDetector("pm.a", "M1", swing_bars=5)
    assert d.on_candle(candle(0, 1.0, 1.1, 0.9, 1.05)) == []
    assert d.on_candle(candle(1, 1.05, 1.5, 1.0, 1.45)) == []
    (fvg,) = d.on_candle(candle(2, 1.45, 1.6, 1.3, 1.55))  # c3.low 1.3 > c1.high 1.1
    assert (fvg.kind, fvg.top, fvg.bottom) == (FVG_BULLISH, 1.3, 1.1)
    assert fvg.created_ns == T0 + 3 * M
    assert abs(fvg.strength - 0.2 / 0.5) < 1e-12
    d = PatternDetector("pm.a", "M1", swing_bars=5)
    d.on_candle(candle(0, 2.0, 2.1, 1.9, 1.95))
    d.on_candle(candle(1, 1.95, 1.96, 1.5, 1.55))
    (fvg,) = d.on_candle(candle(2, 1.55, 1.7, 1.4, 1.45))  # c3.high 1.7 < c1.low 1.9
    assert (fvg.kind, fvg.top, fvg.bottom) == (FVG_BEARISH, 1.9, 1.7)
    # Overlapping candles: no gap.
    d = PatternDetector("pm.a", "M1", swing_bars=5)
    for i, c in enumerate([(1.0, 1.2, 0.9, 1.1), (1.1, 1.3, 1.0, 1.2), (1.2, 1.4, 1.15, 1.3)]):
        assert d.on_candle(candle(i, *c)) == []


def test_fvg_min_gap_filters_small_gaps() -> None:
    d = PatternDetector("pm.a", "M1", swing_bars=5, fvg_min_gap=0.5)
    d.on_candle(candle(0, 1.0, 1.1, 0.9, 1.05))
    d.on_candle(candle(1, 1.05, 1.5, 1.0, 1.45))
    assert d.on_candle(candle(2, 1.45, 1.6, 1.3, 1.55)) == []


def test_swing_pivots_are_confirmed_only_after_n_bars() -> None:
    d = PatternDetector("pm.a", "M1", swing_bars=2)
    highs = [1.0, 1.2, 2.0, 1.5, 1.4]  # pivot high at index 2
    lows = [0.5, 0.4, 0.9, 0.2, 0.3]  # not a pivot low at 2; index 3 could be, needs 2 more bars
    found = []
    for i, (h, lo) in enumerate(zip(highs, lows, strict=True)):
        out = d.on_candle(candle(i, lo + 0.1, h, lo, h - 0.1))
        found.append([x.kind for x in out if x.kind in (BSL, SSL)])
    assert found == [[], [], [], [], [BSL]]  # known only when bar 4 closes: no look-ahead
    bsl = next(x for x in d.on_candle(candle(5, 0.5, 0.6, 0.45, 0.55)) if x.kind == SSL)
    # Bar 6 closed: bar 3 (low 0.2) is a swing low of bars 1..5.
    assert (bsl.top, bsl.bottom, bsl.created_ns) == (0.30000000000000004, 0.2, T0 + 6 * M)


def test_swing_high_zone_is_the_upper_wick() -> None:
    d = PatternDetector("pm.a", "M1", swing_bars=1)
    d.on_candle(candle(0, 1.0, 1.1, 0.9, 1.05))
    d.on_candle(candle(1, 1.05, 1.5, 1.0, 1.2))
    (bsl,) = [x for x in d.on_candle(candle(2, 1.2, 1.3, 1.1, 1.15)) if x.kind == BSL]
    assert (bsl.top, bsl.bottom) == (1.5, 1.2)


def test_detectors_over_the_price_stream() -> None:
    det = Detectors({"M1": M, "M5": 5 * M}, swing_bars=1)
    found = []
    # Three one-minute candles with a bullish gap: ticks at 1.0-1.1, 1.2-1.5, 1.3-1.6.
    ticks = [(0, 1.0), (30, 1.1), (60, 1.2), (90, 1.5), (120, 1.3), (150, 1.6), (180, 1.6)]
    for sec, price in ticks:
        found += det.on_price("pm.a", T0 + sec * S, price)
    kinds = [(d.timeframe, d.kind) for d in found]
    assert ("M1", FVG_BULLISH) in kinds
    fvg = next(d for d in found if d.kind == FVG_BULLISH)
    assert (fvg.top, fvg.bottom, fvg.created_ns) == (1.3, 1.1, T0 + 3 * M)
    assert det.stats.candles == {"M1": 3, "M5": 0}
    det.on_price("pm.a", T0 + 10 * S, 1.0)  # late for M1, fine for M5 (its candle is open)
    assert det.stats.late_ticks == 1
    det.on_time(T0 + 5 * M)
    assert det.stats.candles == {"M1": 4, "M5": 1}


def test_fvg_rule_body_also_wants_the_middle_body_in_the_gaps_direction() -> None:
    up_body = [
        candle(0, 1.0, 1.1, 0.9, 1.05),
        candle(1, 1.05, 1.5, 1.0, 1.45),
        candle(2, 1.45, 1.6, 1.3, 1.55),
    ]
    # the same gap with c2 closing below its open (a red middle candle)
    down_body = [*up_body[:1], candle(1, 1.45, 1.5, 1.0, 1.05), up_body[2]]
    bearish_red = [
        candle(0, 2.0, 2.1, 1.9, 1.95),
        candle(1, 1.95, 1.96, 1.5, 1.55),
        candle(2, 1.55, 1.7, 1.4, 1.45),
    ]
    bearish_green = [*bearish_red[:1], candle(1, 1.55, 1.96, 1.5, 1.95), bearish_red[2]]

    def kinds(rule: str, candles: list[Candle]) -> list[str]:
        d = PatternDetector("pm.a", "M1", swing_bars=5, fvg_rule=rule)  # type: ignore[arg-type]
        return [x.kind for c in candles for x in d.on_candle(c)]

    assert kinds("gap", up_body) == kinds("body", up_body) == [FVG_BULLISH]
    assert kinds("gap", down_body) == [FVG_BULLISH] and kinds("body", down_body) == []
    assert kinds("gap", bearish_red) == kinds("body", bearish_red) == [FVG_BEARISH]
    assert kinds("gap", bearish_green) == [FVG_BEARISH] and kinds("body", bearish_green) == []
    # a doji in the middle (open == close) points nowhere
    doji = [*up_body[:1], candle(1, 1.2, 1.5, 1.0, 1.2), up_body[2]]
    assert kinds("gap", doji) == [FVG_BULLISH] and kinds("body", doji) == []


def test_fvg_rule_is_read_from_the_config_and_defaults_to_gap() -> None:
    assert RegistryConfig().detectors.fvg_rule == "gap"
    cfg = msgspec.convert({"detectors": {"fvg_rule": "body"}}, RegistryConfig)
    assert cfg.detectors.fvg_rule == "body"
    with pytest.raises(msgspec.ValidationError, match="fvg_rule"):
        msgspec.convert({"detectors": {"fvg_rule": "wick"}}, RegistryConfig)
    # the detectors of every pair get it
    det = Detectors({"M1": M}, fvg_rule="body")
    det.on_price("pm.a", T0, 1.0)
    assert all(p.body_rule for _, p in det._pairs["pm.a"])


def test_max_symbols_drops_the_least_recently_ticked_symbol() -> None:
    det = Detectors({"M1": M}, max_symbols=3)
    for sym in ("pm.a", "pm.b", "pm.c"):
        det.on_price(sym, T0, 1.0)
    det.on_price("pm.a", T0 + 1, 1.1)  # a is now the most recently ticked: b is the oldest
    det.on_price("pm.d", T0 + 2, 1.0)
    assert det.symbols == 3
    assert det.take_evicted() == ["pm.b"]
    assert det.take_evicted() == []
    assert det.stats.evicted_symbols == 1
    assert {st.symbol for st in det.state()} == {"pm.a", "pm.c", "pm.d"}
    assert {st.symbol for st in det.changed()} == {"pm.a", "pm.c", "pm.d"}  # b's change is gone
    det.on_price("pm.b", T0 + 3, 2.0)  # comes back with fresh candles; c goes
    assert det.take_evicted() == ["pm.c"]
    (b,) = [st for st in det.state() if st.symbol == "pm.b"]
    assert b.current is not None and b.current.open == 2.0 and b.closed == []


def test_no_limit_keeps_every_symbol() -> None:
    det = Detectors({"M1": M}, max_symbols=0)
    for i in range(500):
        det.on_price(f"pm.{i}", T0, 1.0)
    assert det.symbols == 500 and det.take_evicted() == []


def test_on_time_in_pieces_closes_the_same_candles_as_one_pass() -> None:
    whole, pieces = Detectors({"M1": M}, lateness_ns=2 * S), Detectors({"M1": M}, lateness_ns=2 * S)
    for det in (whole, pieces):
        for i in range(10):  # live symbols (event time = arrival), then quiet
            det.on_price(f"pm.{i}", T0 + i, 1.0 + i, T0 + i)
    later = T0 + M + 2 * S
    whole.on_time(later)
    symbols = pieces.symbol_list()
    pieces.on_time(later, symbols[:3])
    assert pieces.stats.candles == {"M1": 3}
    pieces.on_time(later, ["pm.gone", *symbols[3:]])  # an evicted symbol is skipped
    assert pieces.stats.candles == whole.stats.candles == {"M1": 10}
    assert sorted(map(repr, pieces.state())) == sorted(map(repr, whole.state()))
