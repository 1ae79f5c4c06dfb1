"""Issue 12: real Polymarket book hashes verified without resync storms.

The expected hashes are computed here from the rule as measured on real frames (hashlib + json),
never with ingest's own function."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from services.ingest.discovery import decimal_str, parse_page
from services.ingest.hashcheck import UNVERIFIABLE
from services.ingest.router import Router
from services.simulator.market import RULE_UNKNOWN, MarketSim
from shared.clock import FakeClock
from shared.messages import BookChange, Message
from tests.ingest import frames
from tests.ingest.test_router import feed

Out = list[tuple[str, Message]]
MARKET = "0x5f65177b394277fd294cd75650044e32ba009a95022d88a0c1d565897d72f8f1"
ASSET = "71321045679252212594626385532706912750332728571942532289631379312455583992563"
BIDS = [("0.01", "1000"), ("0.48", "30.5"), ("0.850", "12")]  # ascending; "0.850" kept verbatim
ASKS = [("0.99", "500"), ("0.90", "60")]  # descending


def rule_hash(ts: str, bids: list[tuple[str, str]], asks: list[tuple[str, str]], ltp: str | None) -> str:
    """The rule: sha1 of compact JSON (non-ASCII kept), keys in the server's order."""
    doc: dict[str, Any] = {
        "market": MARKET,
        "asset_id": ASSET,
        "timestamp": ts,
        "hash": "",
        "bids": [{"price": p, "size": s} for p, s in bids],
        "asks": [{"price": p, "size": s} for p, s in asks],
        "min_order_size": "5",
        "tick_size": "0.01",
        "neg_risk": True,
    }
    if ltp is not None:
        doc["last_trade_price"] = ltp
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha1(text.encode()).hexdigest()


def ws_book(ts: str | int, h: str, *, params: bool) -> str:
    """A WebSocket book: often without min_order_size and neg_risk (then from Gamma or REST)."""
    ev: dict[str, Any] = {
        "event_type": "book",
        "market": MARKET,
        "asset_id": ASSET,
        "timestamp": ts,  # a number in some frames: hashed as its string
        "hash": h,
        "bids": [{"price": p, "size": s} for p, s in BIDS],
        "asks": [{"price": p, "size": s} for p, s in ASKS],
        "tick_size": "0.01",
        "last_trade_price": "0.870",
    }
    if params:
        ev |= {"min_order_size": "5", "neg_risk": True}
    return json.dumps(ev)


def change(ts: str, entries: list[tuple[str, str, str, str]]) -> str:
    return json.dumps(
        {
            "event_type": "price_change",
            "market": MARKET,
            "timestamp": ts,
            "price_changes": [
                {"asset_id": ASSET, "price": p, "size": s, "side": side, "hash": h}
                for p, s, side, h in entries
            ],
        }
    )


def router(**kw: Any) -> tuple[Router, Out, list[str]]:
    out: Out = []
    resyncs: list[str] = []
    r = Router(lambda t, m: out.append((t, m)), on_resync=lambda c, a: resyncs.append(a), **kw)
    r.assign([ASSET], "c1")
    return r, out, resyncs


def test_2026_book_pins_the_10_field_rule_and_its_changes_verify() -> None:
    r, out, resyncs = router()
    r.handle_frame("c1", ws_book(1779000000000, rule_hash("1779000000000", BIDS, ASKS, "0.870"), params=True))
    assert r.assets[ASSET].variant == 10 and r.hashes.stats.pins == 1
    # two entries for the asset in one frame: the last one's hash covers both, verified once
    bids = [*BIDS[:2], ("0.850", "20"), ("0.86", "7")]
    h1 = rule_hash("1779000000100", [*BIDS[:2], ("0.850", "20")], ASKS, "0.870")
    h2 = rule_hash("1779000000100", bids, ASKS, "0.870")
    checks = r.hashes.stats.checks
    r.handle_frame("c1", change("1779000000100", [("0.850", "20", "BUY", h1), ("0.86", "7", "BUY", h2)]))
    assert r.hashes.stats.checks - checks == 1
    assert r.hashes.stats.mismatches == 0 and resyncs == []
    assert sum(isinstance(m, BookChange) for _, m in out) == 2


def test_2025_book_pins_the_9_field_rule_with_gamma_fields() -> None:
    r, _, resyncs = router()
    r.set_params([ASSET], "5", True)  # from Gamma: orderMinSize, negRisk
    r.handle_frame("c1", ws_book("1760000000000", rule_hash("1760000000000", BIDS, ASKS, None), params=False))
    assert r.assets[ASSET].variant == 9
    asks = [("0.99", "500"), ("0.90", "0")]
    h = rule_hash("1760000000001", BIDS, asks[:1], None)
    r.handle_frame("c1", change("1760000000001", [("0.90", "0", "SELL", h)]))
    assert r.hashes.stats.checks == 3 and r.hashes.stats.mismatches == 0 and resyncs == []  # 10, 9, change


def test_a_ws_book_without_its_fields_is_unverifiable_not_a_mismatch() -> None:
    r, _, resyncs = router()
    r.handle_frame("c1", ws_book("1760000000000", rule_hash("1760000000000", BIDS, ASKS, None), params=False))
    assert r.assets[ASSET].variant == UNVERIFIABLE and r.hashes.stats.unverifiable == 1
    r.handle_frame("c1", change("1760000000001", [("0.90", "0", "SELL", "whatever")]))
    assert r.hashes.stats.unverified_changes == 1 and r.hashes.stats.mismatches == 0 and resyncs == []


def test_no_resync_storm_under_a_rule_no_variant_reproduces() -> None:
    sim = MarketSim(20, seed=11, hash_fields=RULE_UNKNOWN)
    r = Router(lambda t, m: None, clock=FakeClock(), on_resync=lambda c, a: resyncs.append(a))
    resyncs: list[str] = []
    r.assign(sim.assets, "c1")
    frames.gamma_params(r, sim)
    r.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    assert r.hashes.stats.unverifiable == 20
    changes = 0
    t = 1_700_000_000_000
    while changes < 1000:
        for ev in sim.step(t):
            r.handle_frame("c1", json.dumps(ev))
            changes += len(ev.get("price_changes", ()))
        t += 1
    assert resyncs == [] and r.hashes.stats.resyncs == 0 and r.hashes.stats.mismatches == 0
    assert r.hashes.stats.unverified_changes >= 1000


def test_rule_switch_mid_run_resyncs_once_then_repins() -> None:
    clock = FakeClock()
    sim = MarketSim(4, seed=2, hash_fields=10)
    resyncs: list[str] = []
    r = Router(lambda t, m: None, clock=clock, on_resync=lambda c, a: resyncs.append(a))
    r.assign(sim.assets, "c1")
    frames.gamma_params(r, sim)
    r.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    feed(sim, r, ["c1"], 200, 1_700_000_000_000)
    assert {st.variant for st in r.assets.values()} == {10} and r.hashes.stats.mismatches == 0
    sim.hash_fields = 9  # the server changes its rule
    feed(sim, r, ["c1"], 200, 1_700_000_001_000)
    assert sorted(resyncs) == sorted(sim.assets)  # once per asset, however many mismatches
    for a in sim.assets.values():  # the resync's books, hashed the new way
        a.rehash(a.timestamp, 9)
    r.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))
    assert {st.variant for st in r.assets.values()} == {9}
    before = r.hashes.stats.mismatches
    feed(sim, r, ["c1"], 200, 1_700_000_002_000)
    assert r.hashes.stats.mismatches == before and len(resyncs) == 4


def test_legacy_flat_price_changes_are_all_counted() -> None:
    r, out, _ = router()
    legacy = json.loads(frames.PRICE_CHANGE_LEGACY)
    r.handle_frame("c1", frames.PRICE_CHANGE_LEGACY)
    del legacy["changes"]
    r.handle_frame("c1", json.dumps(legacy))  # flat, without its changes
    assert r.stats.legacy_events == 2 and out == []


def test_gamma_carries_the_fields_websocket_books_lack() -> None:
    sim = MarketSim(6, seed=1)
    body = json.dumps({"markets": [sim.gamma_market(m) for m in sim.markets]}).encode()
    page = parse_page(body)
    assert [(decimal_str(m.orderMinSize or 0), m.negRisk) for m in page.markets] == [
        (m.min_order_size, m.neg_risk) for m in sim.markets
    ]
    assert decimal_str(5.0) == "5" and decimal_str(0.01) == "0.01" and decimal_str("15") == "15"
    ws = sim.markets[0].assets[0].book_event()
    assert "min_order_size" not in ws and "neg_risk" not in ws
