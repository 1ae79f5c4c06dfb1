"""Issue 13, ingest: hostile and faulty input, in-process (the real process: test_hostile_process.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.ingest.force import REASON_MALFORMED, REASON_RATE, ForceGate, is_token_id
from services.ingest.protocol import PriceChangeEvent, decode_frame
from services.ingest.router import Router
from services.simulator.market import MarketSim
from shared.clock import FakeClock
from shared.messages import ENCODER, BookChange, BookSnapshot, Message
from shared.ratelog import RateLimitedLog
from tests.ingest import frames

Out = list[tuple[str, Message]]


def skip_counts(router: Router) -> int:
    s = router.stats
    return (
        s.decode_errors
        + s.unknown_events
        + s.legacy_events
        + s.text_frames
        + s.unknown_assets
        + s.bad_values
        + s.internal_errors
    )


# -- ForceSubscribe gate --------------------------------------------------------------------------


def test_force_gate_takes_known_ids_and_caps_unknown_ones_per_minute() -> None:
    clock = FakeClock()
    gate = ForceGate(100, clock.monotonic)
    known = {"1", "2"}
    made_up = [str(10**20 + i) for i in range(2000)]
    first = gate.admit(made_up[:1000], known.__contains__)
    second = gate.admit([*made_up[1000:], "1", "2", "not-an-id", "12" * 40], known.__contains__)
    assert len(first.taken) == 100 and first.refused == {REASON_RATE: 900}
    assert second.taken == ["1", "2"]  # the budget is spent, known ids still pass
    assert second.refused == {REASON_RATE: 1000, REASON_MALFORMED: 2}
    assert gate.refused == {REASON_RATE: 1900, REASON_MALFORMED: 2}
    clock.advance(59.0)
    assert gate.admit(["77"], known.__contains__).taken == []
    clock.advance(1.0)  # a new minute, a new budget
    assert gate.admit(["77", "77", "78"], known.__contains__).taken == ["77", "78"]


def test_token_ids_are_decimal_uint256() -> None:
    assert is_token_id(frames.ASSET) and is_token_id("9" * 78)
    assert not any(is_token_id(x) for x in ["", "9" * 79, "0x12", "1 2", "١٢", "-1"])


# -- decoding -------------------------------------------------------------------------------------


def test_deep_nesting_empty_arrays_and_bad_entries_are_counted_not_raised() -> None:
    assert decode_frame("[" * 100_000).errors == 1  # msgspec raises RecursionError on this
    assert decode_frame("[" * 50_000 + "]" * 50_000).errors == 1
    assert decode_frame("[]").errors == 1
    good = {"asset_id": "1", "price": "0.5", "size": "10", "side": "BUY", "hash": "h"}
    frame = json.dumps(
        {
            "event_type": "price_change",
            "market": "m",
            "timestamp": "5",
            "price_changes": [good, {"asset_id": 2}],
        }
    )
    d = decode_frame(frame)
    assert d.errors == 1
    (ev,) = d.events
    assert isinstance(ev, PriceChangeEvent) and [e.asset_id for e in ev.price_changes] == ["1"]


# -- routing --------------------------------------------------------------------------------------


def followed_book() -> tuple[Router, Out]:
    out: Out = []
    router = Router(lambda t, m: out.append((t, m)), verify_hashes=False)
    router.assign([frames.ASSET, frames.ASSET_NO], "c1")
    router.handle_frame("c1", frames.BOOK_DUMP)
    out.clear()
    return router, out


def change(asset: str, price: str, size: str, side: str = "BUY") -> dict[str, str]:
    return {"asset_id": asset, "price": price, "size": size, "side": side, "hash": ""}


@pytest.mark.parametrize(
    "bad",
    [
        change(frames.ASSET, "nan", "10"),
        change(frames.ASSET, "0.49", "1e400"),  # infinite
        change(frames.ASSET, "0.49", "-5"),
        change(frames.ASSET, "0", "5"),
        change(frames.ASSET, "0.49", "5", side="HOLD"),
        change(frames.ASSET, "0.49", "5" * 400),  # a number too wide for a float
    ],
)
def test_a_bad_value_skips_its_entry_and_keeps_its_neighbour(bad: dict[str, str]) -> None:
    router, out = followed_book()
    before = dict(router.assets[frames.ASSET].book.bids)
    ev = {
        "event_type": "price_change",
        "market": frames.MARKET,
        "timestamp": "1757908892400",
        "price_changes": [bad, change(frames.ASSET_NO, "0.51", "7", side="SELL")],
    }
    router.handle_frame("c1", json.dumps(ev))
    assert router.stats.bad_values == 1
    assert router.assets[frames.ASSET].book.bids == before
    assert [(type(m), m.asset) for _, m in out if isinstance(m, BookChange)] == [
        (BookChange, frames.ASSET_NO)
    ]


def test_times_outside_int64_and_huge_numbers_are_bad_values_not_crashes() -> None:
    router, out = followed_book()
    for ts in [10**30, "1e400", -1, "soon"]:
        trade = json.loads(frames.LAST_TRADE_PRICE)
        trade["timestamp"] = ts
        router.handle_frame("c1", json.dumps(trade))
        pc = json.loads(frames.PRICE_CHANGE)
        pc["timestamp"] = ts
        router.handle_frame("c1", json.dumps(pc))
        book = json.loads(frames.BOOK_DUMP)[0]
        book["timestamp"] = ts
        book["hash"] = f"other-{ts}"
        router.handle_frame("c1", json.dumps(book))
    trade = json.loads(frames.LAST_TRADE_PRICE)
    trade["fee_rate_bps"] = 10**400
    router.handle_frame("c1", json.dumps(trade))
    assert out == [] and router.stats.bad_values == 13 and router.stats.internal_errors == 0
    for _, m in out:
        ENCODER.encode(m)


def test_a_raising_bug_is_counted_and_logged_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    clock = FakeClock()
    skip_log = RateLimitedLog(logging.getLogger("test.ingest"), burst=2, clock=clock.monotonic)

    def publish(topic: str, msg: Message) -> None:
        raise RuntimeError("publisher broke")

    router = Router(publish, verify_hashes=False, skip_log=skip_log)
    router.assign([frames.ASSET], "c1")
    with caplog.at_level(logging.WARNING, logger="test.ingest"):
        for _ in range(50):
            assert router.handle_frame("c1", frames.LAST_TRADE_PRICE) == 1
            router.handle_frame("c1", "{garbage")
    assert router.stats.internal_errors == 50 and router.stats.decode_errors == 50
    assert len(caplog.records) == 4  # two reasons, a burst of two lines each
    clock.advance(61.0)
    with caplog.at_level(logging.WARNING, logger="test.ingest"):
        skip_log.flush()
    assert "48 more internal_error" in caplog.text and "48 more decode_error" in caplog.text


# -- fuzz: Hypothesis-generated frames ------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
STRING_FIELDS = {
    "book": ["asset_id", "market", "hash"],
    "price_change": ["market"],
    "last_trade_price": ["asset_id", "price"],
    "tick_size_change": ["asset_id", "new_tick_size"],
    "best_bid_ask": ["asset_id", "best_bid"],
}


def sample_events() -> dict[str, dict[str, Any]]:
    return {
        "book": json.loads(frames.BOOK_DUMP)[0],
        "price_change": json.loads(frames.PRICE_CHANGE),
        "last_trade_price": json.loads(frames.LAST_TRADE_PRICE),
        "tick_size_change": json.loads(frames.TICK_SIZE_CHANGE),
        "best_bid_ask": json.loads(frames.BEST_BID_ASK),
    }


@st.composite
def bad_frames(draw: st.DrawFn, unknown_asset: str | None = None) -> str:
    """A frame no valid server sends: random JSON, random text, a real event truncated, or a real
    event with one string field of another type (a real entry given a bad field too)."""
    kind = draw(st.sampled_from(["json", "text", "truncated", "retyped", "bad_entry"]))
    if kind == "json":
        value = draw(json_values)
        if value == [] or (isinstance(value, str) and value.isupper()):
            value = [value]
        return json.dumps(value)
    if kind == "text":
        return draw(st.text(max_size=60).filter(lambda t: not t.strip().startswith(("{", "["))))
    event_type = draw(st.sampled_from(sorted(STRING_FIELDS)))
    ev = sample_events()[event_type]
    if unknown_asset is not None:
        ev["asset_id"] = unknown_asset
        for e in ev.get("price_changes", ()):
            e["asset_id"] = unknown_asset
    if kind == "truncated":
        text = json.dumps(ev)
        return text[: draw(st.integers(0, len(text) - 1))]
    wrong = draw(json_values.filter(lambda v: not isinstance(v, str)))
    if kind == "bad_entry" and "price_changes" in ev:
        ev["price_changes"][0][draw(st.sampled_from(["asset_id", "price", "size", "side"]))] = wrong
    else:
        ev[draw(st.sampled_from(STRING_FIELDS[event_type]))] = wrong
    return json.dumps(draw(st.sampled_from([ev, [ev]])))


@settings(max_examples=400, deadline=None)
@given(st.lists(bad_frames(), min_size=1, max_size=5))
def test_fuzz_bad_frames_never_raise_and_each_is_counted(batch: list[str]) -> None:
    sim = MarketSim(4, seed=3)
    out: Out = []
    router = Router(lambda t, m: out.append((t, m)))
    router.assign([*sim.assets, frames.ASSET, frames.ASSET_NO], "c1")
    router.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    books = {a: dict(st_.book.bids) for a, st_ in router.assets.items()}
    for frame in batch:
        before = skip_counts(router)
        router.handle_frame("c1", frame)
        assert skip_counts(router) > before, f"not counted: {frame!r}"
    assert router.stats.internal_errors == 0
    for _, m in out:
        ENCODER.encode(m)  # everything published fits the wire (int64 times)
    # sim's books were not touched by the fuzz (it names the fixture's assets only)
    assert {a: dict(st_.book.bids) for a, st_ in router.assets.items() if a in sim.assets} == {
        a: b for a, b in books.items() if a in sim.assets
    }
    assert all(
        not isinstance(m, BookSnapshot) or m.asset not in sim.assets for _, m in out[len(sim.assets) * 2 :]
    )
