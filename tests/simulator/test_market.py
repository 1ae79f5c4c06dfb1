import hashlib
import json

from services.simulator.market import MarketSim, server_hash


def stdlib_hash(doc: dict[str, object]) -> str:
    keys = ("market", "asset_id", "timestamp", "hash", "bids", "asks", "min_order_size", "tick_size",
            "neg_risk", "last_trade_price")  # fmt: skip
    defaults: dict[str, object] = {"hash": "", "min_order_size": "", "tick_size": "", "neg_risk": False,
                                   "last_trade_price": ""}  # fmt: skip
    ordered = {k: ("" if k == "hash" else doc.get(k, defaults.get(k))) for k in keys}
    return hashlib.sha1(json.dumps(ordered, separators=(",", ":")).encode()).hexdigest()


def test_server_hash_is_the_compact_json_formula_byte_for_byte() -> None:
    sim = MarketSim(40, seed=7)
    checked = 0
    for step in range(300):
        sim.step(1_700_000_000_000 + step)
        for asset in sim.assets.values():
            doc = asset.book_doc()
            assert server_hash(doc) == stdlib_hash(doc)
            checked += 1
    assert checked == 300 * 40
