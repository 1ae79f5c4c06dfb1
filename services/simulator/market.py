"""A pure model of Polymarket markets: books that move, trades, and the frames the server sends.

Each market has two assets (YES and NO). The NO book mirrors the YES book (a YES bid at p is a
NO ask at 1 - p), so one change yields a ``price_change`` with an entry for each asset, as the
real server sends. Prices are kept as integer ticks (cents); everything on the wire is the
server's decimal strings. Hashes follow the server's formula, computed here independently of
the ingest service (its own code, whose bytes are tested equal to stdlib json's), so the two check
each other.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import msgspec

TICKS = 100  # 0.01 tick size: prices 0.01 .. 0.99


def price_str(tick: int) -> str:
    return f"{tick / TICKS:.2f}".rstrip("0").rstrip(".") if tick % 10 == 0 else f"{tick / TICKS:.2f}"


_COMPACT_JSON = msgspec.json.Encoder()


RULE_UNKNOWN = 0  # a rule ingest does not know (the server changed it): books unverifiable


def server_hash(doc: dict[str, Any], fields: int = 10) -> str:
    """SHA-1 of the compact JSON of the book in the server's key order, with ``hash`` empty: 10
    fields (2026-05: with ``last_trade_price``) or 9 (2025-10: without); ``RULE_UNKNOWN`` hashes
    the keys sorted instead, a rule no client reproduces.

    msgspec writes the same bytes as ``json.dumps(..., separators=(",", ":"))`` for these documents
    (strings and booleans; tested), 1.5x cheaper: the exchange's stand-in should take little CPU.
    """
    ordered = {
        "market": doc["market"],
        "asset_id": doc["asset_id"],
        "timestamp": doc["timestamp"],
        "hash": "",
        "bids": doc["bids"],
        "asks": doc["asks"],
        "min_order_size": doc.get("min_order_size", ""),
        "tick_size": doc.get("tick_size", ""),
        "neg_risk": doc.get("neg_risk", False),
        "last_trade_price": doc.get("last_trade_price", ""),
    }
    if fields == 9:
        del ordered["last_trade_price"]
    elif fields == RULE_UNKNOWN:
        ordered = dict(sorted(ordered.items()))
    return hashlib.sha1(_COMPACT_JSON.encode(ordered)).hexdigest()


@dataclass
class SimAsset:
    asset_id: str
    market: SimMarket
    is_yes: bool
    timestamp: str = "0"
    hash: str = ""
    last_trade_price: str = ""

    def levels(self) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """(bids ascending, asks descending): the server's order, best level last."""
        m = self.market
        if self.is_yes:
            bids = sorted(m.bids.items())
            asks = sorted(m.asks.items(), reverse=True)
        else:  # mirror: NO bid at 1 - p for each YES ask at p
            bids = sorted(((TICKS - p, s) for p, s in m.asks.items()))
            asks = sorted(((TICKS - p, s) for p, s in m.bids.items()), reverse=True)
        return (
            [{"price": price_str(p), "size": s} for p, s in bids],
            [{"price": price_str(p), "size": s} for p, s in asks],
        )

    def book_doc(self) -> dict[str, Any]:
        bids, asks = self.levels()
        return {
            "market": self.market.condition_id,
            "asset_id": self.asset_id,
            "timestamp": self.timestamp,
            "hash": self.hash,
            "bids": bids,
            "asks": asks,
            "min_order_size": self.market.min_order_size,
            "tick_size": "0.01",
            "neg_risk": self.market.neg_risk,
            "last_trade_price": self.last_trade_price,
        }

    def rehash(self, timestamp: str, fields: int = 10) -> None:
        self.timestamp = timestamp
        self.hash = server_hash(self.book_doc(), fields)

    def book_event(self, with_params: bool = False) -> dict[str, Any]:
        """The book as the WebSocket sends it: like the real server, without ``min_order_size``
        and ``neg_risk`` (REST and Gamma carry them) unless ``with_params``."""
        doc = self.book_doc()
        if not with_params:
            del doc["min_order_size"], doc["neg_risk"]
        return {"event_type": "book", **doc}

    def best(self) -> tuple[str, str]:
        m = self.market
        if self.is_yes:
            bid, ask = max(m.bids, default=0), min(m.asks, default=0)
        else:
            bid = TICKS - min(m.asks) if m.asks else 0
            ask = TICKS - max(m.bids) if m.bids else 0
        return (price_str(bid) if bid else "0"), (price_str(ask) if ask else "1")


@dataclass
class SimMarket:
    index: int
    condition_id: str
    question: str
    bids: dict[int, str] = field(default_factory=dict)  # YES book, tick -> size
    asks: dict[int, str] = field(default_factory=dict)
    closed: bool = False
    assets: list[SimAsset] = field(default_factory=list)
    min_order_size: str = "5"
    neg_risk: bool = False


class MarketSim:
    """N assets (N/2 markets) with moving books. ``step`` makes one event, as the server's frames."""

    def __init__(self, n_assets: int, *, seed: int = 1, depth: int = 10, hash_fields: int = 10) -> None:
        self.rng = random.Random(seed)
        self.depth = depth
        self.hash_fields = hash_fields  # the server's hash rule: 10, 9 or RULE_UNKNOWN; may change mid-run
        self.markets: list[SimMarket] = []
        self.assets: dict[str, SimAsset] = {}
        self._next_index = 0
        self._open: list[SimMarket] | None = None  # open markets, rebuilt after one opens or closes
        for _ in range(max(1, (n_assets + 1) // 2)):
            self.add_market("0")

    def add_market(self, timestamp: str) -> SimMarket:
        rng = self.rng
        i = self._next_index
        self._next_index += 1
        m = SimMarket(
            i, "0x" + f"{rng.getrandbits(256):064x}", f"Will event {i} happen?", neg_risk=i % 3 == 1
        )
        mid = rng.randint(10, 90)
        for k in range(self.depth):
            if mid - 1 - k >= 1:
                m.bids[mid - 1 - k] = str(rng.randint(10, 5000))
            if mid + 1 + k <= TICKS - 1:
                m.asks[mid + 1 + k] = str(rng.randint(10, 5000))
        for is_yes in (True, False):
            asset_id = str(rng.getrandbits(252))  # real token ids are ~77-digit decimals
            a = SimAsset(asset_id, m, is_yes)
            m.assets.append(a)
            self.assets[asset_id] = a
            a.rehash(timestamp, self.hash_fields)
        self.markets.append(m)
        self._open = None
        return m

    def open_markets(self) -> list[SimMarket]:
        if self._open is None:
            self._open = [m for m in self.markets if not m.closed]
        return list(self._open)

    def _change(self, m: SimMarket, yes_bid_side: bool, tick: int, size: str, ts: str) -> dict[str, Any]:
        book = m.bids if yes_bid_side else m.asks
        if size == "0":
            book.pop(tick, None)
        else:
            book[tick] = size
        entries = []
        for a in m.assets:
            a.rehash(ts, self.hash_fields)
            # a YES bid is a NO ask at 1 - p
            is_buy = yes_bid_side if a.is_yes else not yes_bid_side
            p = tick if a.is_yes else TICKS - tick
            best_bid, best_ask = a.best()
            entries.append(
                {
                    "asset_id": a.asset_id,
                    "price": price_str(p),
                    "size": size,
                    "side": "BUY" if is_buy else "SELL",
                    "hash": a.hash,
                    "best_bid": best_bid,
                    "best_ask": best_ask,
                }
            )
        return {
            "market": m.condition_id,
            "price_changes": entries,
            "timestamp": ts,
            "event_type": "price_change",
        }

    def step(self, now_ms: int) -> list[dict[str, Any]]:
        """One market event: a level change, or a trade followed by the change it caused."""
        rng = self.rng
        ts = str(now_ms)
        live = self._open
        if live is None:
            live = self._open = [m for m in self.markets if not m.closed]
        if not live:
            return []
        m = live[rng.randrange(len(live))]
        bid_side = rng.random() < 0.5
        book = m.bids if bid_side else m.asks
        other = m.asks if bid_side else m.bids
        best = (max(book) if bid_side else min(book)) if book else None
        roll = rng.random()
        if roll < 0.15 and best is not None:  # a trade hits the best level
            level = int(book[best])
            traded = max(1, min(level, rng.randint(1, 500)))
            taker_yes_side = "SELL" if bid_side else "BUY"
            asset = m.assets[0] if rng.random() < 0.5 else m.assets[1]
            p = best if asset.is_yes else TICKS - best
            side = taker_yes_side if asset.is_yes else ("BUY" if taker_yes_side == "SELL" else "SELL")
            asset.last_trade_price = price_str(p)
            trade = {
                "asset_id": asset.asset_id,
                "event_type": "last_trade_price",
                "fee_rate_bps": "0",
                "market": m.condition_id,
                "price": price_str(p),
                "side": side,
                "size": str(traded),
                "timestamp": ts,
            }
            left = level - traded
            if left <= 0 and len(book) <= 2:
                left = rng.randint(10, 500)  # never empty a side
            return [trade, self._change(m, bid_side, best, str(max(0, left)), ts)]
        if roll < 0.55 or best is None:  # a new level near the top, never crossing
            lo, hi = (
                (1, (min(other) - 1) if other else TICKS - 1)
                if bid_side
                else (
                    (max(other) + 1) if other else 1,
                    TICKS - 1,
                )
            )
            anchor = best if best is not None else (lo + hi) // 2
            step = rng.randint(-6, 1) if bid_side else rng.randint(-1, 6)
            tick = min(hi, max(lo, anchor + step))
            if lo > hi:
                return []
            return [self._change(m, bid_side, tick, str(rng.randint(10, 5000)), ts)]
        if roll < 0.75 and len(book) > self.depth // 2:  # a level goes away
            ticks = sorted(book, reverse=bid_side)[: self.depth]
            return [self._change(m, bid_side, ticks[rng.randrange(len(ticks))], "0", ts)]
        ticks = sorted(book, reverse=bid_side)[:5]  # a size changes
        return [self._change(m, bid_side, ticks[rng.randrange(len(ticks))], str(rng.randint(10, 5000)), ts)]

    def resolve(self, m: SimMarket, ts: str) -> dict[str, Any]:
        m.closed = True
        self._open = None
        winner = m.assets[0] if self.rng.random() < 0.5 else m.assets[1]
        return {
            "id": str(m.index),
            "question": m.question,
            "market": m.condition_id,
            "slug": f"event-{m.index}",
            "description": "",
            "assets_ids": [a.asset_id for a in m.assets],
            "outcomes": ["Yes", "No"],
            "winning_asset_id": winner.asset_id,
            "winning_outcome": "Yes" if winner.is_yes else "No",
            "timestamp": ts,
            "event_type": "market_resolved",
        }

    def new_market_event(self, m: SimMarket, ts: str) -> dict[str, Any]:
        return {
            "id": str(m.index),
            "question": m.question,
            "market": m.condition_id,
            "slug": f"event-{m.index}",
            "description": "",
            "assets_ids": [a.asset_id for a in m.assets],
            "outcomes": ["Yes", "No"],
            "timestamp": ts,
            "event_type": "new_market",
        }

    def gamma_market(self, m: SimMarket) -> dict[str, Any]:
        """A market as Gamma lists it: ``clobTokenIds`` is a JSON-encoded string."""
        return {
            "id": str(m.index),
            "question": m.question,
            "conditionId": m.condition_id,
            "slug": f"event-{m.index}",
            "clobTokenIds": json.dumps([a.asset_id for a in m.assets]),
            "outcomes": json.dumps(["Yes", "No"]),
            "active": True,
            "closed": m.closed,
            "endDate": "2030-01-01T00:00:00Z",
            "orderMinSize": int(m.min_order_size),
            "orderPriceMinTickSize": 0.01,
            "negRisk": m.neg_risk,
        }
