from __future__ import annotations

import json
from typing import Any

from services.ingest.book import book_hash
from services.ingest.router import Router
from services.simulator.market import MarketSim, server_hash
from shared.clock import FakeClock
from shared.messages import BookChange, BookSnapshot, MarketLifecycle, Message, Price, TickSizeChange, Trade
from tests.ingest import frames

Out = list[tuple[str, Message]]


def make(**kw: Any) -> tuple[Router, Out]:
    out: Out = []
    router = Router(lambda t, m: out.append((t, m)), **kw)
    return router, out


def test_book_snapshot_best_first_and_mid() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    assert router.handle_frame("c1", frames.BOOK_DUMP) == 1
    (t1, book), (t2, px) = out
    assert t1 == f"md.book.{frames.ASSET}" and isinstance(book, BookSnapshot)
    assert [lv.price for lv in book.bids] == [0.48, 0.47, 0.01]
    assert [lv.price for lv in book.asks] == [0.52, 0.53, 0.99]
    assert book.tick_size == 0.01 and book.event_ns == 1757908892351_000_000
    assert t2 == f"px.pm.{frames.ASSET}" and isinstance(px, Price)
    assert px.symbol == f"pm.{frames.ASSET}" and px.price == 0.5 and (px.bid, px.ask) == (0.48, 0.52)


def test_price_change_normalized_and_mid_moves() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    router.handle_frame("c1", frames.BOOK_DUMP)
    out.clear()
    router.handle_frame("c1", frames.PRICE_CHANGE)
    # the NO asset is not followed: counted, not published
    assert router.stats.unknown_assets == 1
    (t1, ch), (_t2, px) = out
    assert t1 == f"md.change.{frames.ASSET}" and isinstance(ch, BookChange)
    assert (ch.side, ch.price, ch.size, ch.best_bid, ch.best_ask) == ("buy", 0.49, 200.0, 0.49, 0.52)
    assert ch.market == frames.MARKET and ch.hash == "56621a121a47ed9333273e21c83b660cff37ae50"
    assert isinstance(px, Price) and px.price == (0.49 + 0.52) / 2
    assert router.assets[frames.ASSET].book.bids["0.49"] == "200"


def test_trade_tick_size_best_bid_ask() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    router.handle_frame("c1", frames.LAST_TRADE_PRICE)
    router.handle_frame("c1", frames.TICK_SIZE_CHANGE)
    router.handle_frame("c1", frames.BEST_BID_ASK)
    kinds = [type(m) for _, m in out]
    assert kinds == [Trade, TickSizeChange, Price]
    trade = out[0][1]
    assert isinstance(trade, Trade) and (trade.side, trade.price, trade.size) == ("buy", 0.456, 219.217767)
    tick = out[1][1]
    assert isinstance(tick, TickSizeChange) and tick.new_tick_size == 0.001
    assert router.stats.by_type == {"last_trade_price": 1, "tick_size_change": 1, "best_bid_ask": 1}


def test_lifecycle_broadcast_published_once() -> None:
    seen: list[tuple[str, str, list[str], str]] = []
    router, out = make(on_lifecycle=lambda k, m, a, w: seen.append((k, m, a, w)))
    for conn in ("c1", "c2", "c3"):  # broadcast to every connection
        router.handle_frame(conn, frames.MARKET_RESOLVED)
        router.handle_frame(conn, frames.NEW_MARKET)
    assert [k for k, *_ in seen] == ["resolved", "new"]
    statuses = [(m.status, m.asset[:5]) for _, m in out if isinstance(m, MarketLifecycle)]
    assert statuses == [("resolved", "76043"), ("resolved", "31690"), ("new", "76043"), ("new", "31690")]
    assert seen[0][3].startswith("76043")


def test_bad_frames_counted_and_good_ones_kept() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    junk_frames: list[str | bytes] = [
        "PONG",
        "NO NEW ASSETS",
        "",
        "{oops",
        "[1,2]",
        b"\x00\xff",
        '{"event_type":"nope"}',
    ]
    for junk in junk_frames:
        router.handle_frame("c1", junk)
    router.handle_frame("c1", frames.PRICE_CHANGE_LEGACY)
    router.handle_frame("c1", frames.LAST_TRADE_PRICE)
    s = router.stats
    assert s.text_frames == 3 and s.decode_errors == 4 and s.unknown_events == 1 and s.legacy_events == 1
    assert [type(m) for _, m in out] == [Trade]


def test_not_owner_dropped() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "c1")
    router.handle_frame("c2", frames.LAST_TRADE_PRICE)
    assert out == [] and router.stats.not_owner_drops == 1


def test_hash_formula_matches_simulator() -> None:
    doc = {
        "market": "0xabc",
        "asset_id": "1",
        "timestamp": "123",
        "bids": [{"price": "0.4", "size": "10"}],
        "asks": [{"price": "0.6", "size": "5"}],
        "tick_size": "0.01",
        "last_trade_price": "0.5",
    }
    ours = book_hash("0xabc", "1", "123", [("0.4", "10")], [("0.6", "5")], "", "0.01", False, "0.5")
    assert ours == server_hash(doc)


def feed(sim: MarketSim, router: Router, conns: list[str], steps: int, t0: int, deliver: Any = None) -> int:
    """Drive the simulator; every event is sent, as a frame, to each connection in ``conns``."""
    n = 0
    for i in range(steps):
        for ev in sim.step(t0 + i):
            text = json.dumps(ev)
            for c in deliver(i) if deliver else conns:
                router.handle_frame(c, text)
            n += 1
    return n


def test_hashes_verify_against_simulator_stream() -> None:
    sim = MarketSim(20, seed=7)
    router, _out = make(verify_hashes=True)
    router.assign(sim.assets, "c1")
    frames.gamma_params(router, sim)
    router.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    feed(sim, router, ["c1"], 3000, 1_700_000_000_000)
    s = router.hashes.stats
    assert s.checks > 3000 and s.mismatches == 0 and s.resyncs == 0 and s.unverifiable == 0
    # the local books equal the simulator's books
    for asset_id, a in sim.assets.items():
        bids, asks = a.levels()
        local = router.assets[asset_id].book
        assert local.sorted_bids() == [(lv["price"], lv["size"]) for lv in bids]
        assert local.sorted_asks() == [(lv["price"], lv["size"]) for lv in asks]


def test_hash_mismatch_resyncs_rate_limited() -> None:
    clock = FakeClock()
    asked: list[tuple[str, str]] = []
    sim = MarketSim(2, seed=3)
    router, _ = make(clock=clock, resync_interval=30.0, on_resync=lambda c, a: asked.append((c, a)))
    router.assign(sim.assets, "c1")
    frames.gamma_params(router, sim)
    router.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    # corrupt our local books: every following change mismatches
    for st in router.assets.values():
        st.book.apply(True, "0.001", "1")
    feed(sim, router, ["c1"], 50, 1_700_000_000_000)
    assert router.hashes.stats.mismatches >= 50
    assert len(asked) == 2 and {a for _, a in asked} == set(sim.assets)  # once per asset
    assert router.hashes.stats.resyncs_suppressed > 0
    clock.advance(31)
    feed(sim, router, ["c1"], 50, 1_700_000_001_000)
    assert len(asked) == 4


def change_hashes(out: Out) -> dict[str, list[str]]:
    """Per asset, the hashes of the changes published, in order (order across assets is free)."""
    per: dict[str, list[str]] = {}
    for _, m in out:
        if isinstance(m, BookChange):
            per.setdefault(m.asset, []).append(m.hash)
    return per


def reference_stream(seed: int, steps: int) -> dict[str, list[str]]:
    sim = MarketSim(6, seed=seed)
    router, out = make(verify_hashes=False)
    router.assign(sim.assets, "old")
    router.handle_frame("old", json.dumps([a.book_event() for a in sim.assets.values()]))
    feed(sim, router, ["old"], steps, 1_700_000_000_000)
    return change_hashes(out)


def run_handoff(seed: int, steps: int, old_lag: int, new_lag: int) -> tuple[Router, Out]:
    """Old and new connections carry the same stream, each delayed by its own lag (in events)."""
    sim = MarketSim(6, seed=seed)
    router, out = make(verify_hashes=False)
    router.assign(sim.assets, "old")
    router.handle_frame("old", json.dumps([a.book_event() for a in sim.assets.values()]))
    queues: dict[str, list[str]] = {"old": [], "new": []}
    lags = {"old": old_lag, "new": new_lag}
    start, stop = steps // 3, 2 * steps // 3
    for i in range(steps):
        if i == start:  # the replacement subscribes: its book dump reflects the state now
            router.begin_handoff(sim.assets, "new")
            queues["new"].append(json.dumps([a.book_event() for a in sim.assets.values()]))
        for ev in sim.step(1_700_000_000_000 + i):
            text = json.dumps(ev)
            if i < stop:
                queues["old"].append(text)
            if i >= start:
                queues["new"].append(text)
        for conn, q in queues.items():
            while len(q) > lags[conn]:
                router.handle_frame(conn, q.pop(0))
        if i == stop:  # the old connection closes: what it had in flight is lost
            queues["old"].clear()
            router.complete_handoff(sim.assets, "new")
    for text in queues["new"]:
        router.handle_frame("new", text)
    return router, out


def test_handoff_no_gap_no_duplicate() -> None:
    expected = reference_stream(11, 600)
    for old_lag, new_lag in [(0, 0), (0, 5), (5, 0), (3, 3), (20, 1), (1, 20)]:
        router, out = run_handoff(11, 600, old_lag, new_lag)
        assert change_hashes(out) == expected, (old_lag, new_lag)
        assert all(
            st.owner == "new" and st.candidate is None and st.held is None for st in router.assets.values()
        )
        if new_lag > old_lag:
            assert router.stats.handoff_duplicates > 0


def test_held_book_the_old_owner_then_delivers_is_one_counted_duplicate() -> None:
    router, out = make(verify_hashes=False)
    router.assign([frames.ASSET], "old")
    router.begin_handoff([frames.ASSET], "new")
    router.handle_frame("new", frames.BOOK_DUMP)  # the new connection is ahead: its book is held
    assert out == [] and router.assets[frames.ASSET].held is not None
    router.handle_frame("old", frames.BOOK_DUMP)  # the old one catches up: published once, switched
    assert [t for t, _ in out].count(f"md.book.{frames.ASSET}") == 1
    assert router.assets[frames.ASSET].owner == "new"
    assert router.stats.handoff_duplicates == 1 and router.stats.handoff_switches == 1
