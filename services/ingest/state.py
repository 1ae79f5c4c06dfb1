"""The router's state per asset, and the Clone snapshot built from it (what a consumer rebuilds
from the stream). Pure."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from services.ingest import parse
from services.ingest.book import LocalBook
from services.ingest.handoff import Ownership
from services.ingest.hashcheck import UNPINNED
from services.ingest.protocol import Decoded
from shared.constants import md_topic, pm_symbol, px_topic
from shared.messages import BookLevel, BookSnapshot, Message, Price

BOOK_TOPICS = md_topic("book", "")  # the roots of an asset's topics: root + asset
PRICE_TOPICS = px_topic(pm_symbol(""))


@dataclass(slots=True)
class RouterStats:
    frames: int = 0
    events: int = 0
    updates: int = 0  # market updates applied: price_change entries, trades, books
    text_frames: int = 0  # non-JSON text other than PONG ("NO NEW ASSETS", ...)
    decode_errors: int = 0  # frames or items that did not decode
    unknown_events: int = 0  # an event_type we do not know
    legacy_events: int = 0  # older flat price_change schema: recognised, not applied
    unknown_assets: int = 0  # events for assets we do not follow
    bad_values: int = 0  # events skipped for a value no valid frame holds (NaN, inf, negative, ...)
    internal_errors: int = 0  # frames whose routing raised (a bug): the frame's rest is lost
    not_owner_drops: int = 0  # an asset's events arriving on a connection that does not own it
    handoff_duplicates: int = 0  # candidate events already published by the old owner
    handoff_switches: int = 0
    unchanged_books: int = 0  # a book equal to the state we already had: not republished
    published: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def count_skipped(
        self, decoded: Decoded, skip_log: Callable[..., None], conn: str, data: bytes | str
    ) -> None:
        """What a frame held that did not decode, or of a type we do not know: counted and logged."""
        if decoded.errors:
            self.decode_errors += decoded.errors
            skip_log(
                "decode_error",
                "ingest: %d item(s) of a frame from %s did not decode: %s",
                decoded.errors,
                conn,
                parse.excerpt(data),
            )
        if decoded.unknown_types:
            self.unknown_events += len(decoded.unknown_types)
            skip_log("unknown_event", "ingest: skipped unknown event type(s) %s", decoded.unknown_types[:5])


class AssetState(Ownership):
    """One asset followed: who owns its stream (``Ownership``), its local book, its last mid."""

    __slots__ = (
        "ask",
        "asset",
        "bid",
        "book",
        "book_ns",
        "booked",
        "change_topic",
        "checks",
        "hash",
        "last_resync",
        "market",
        "mid",
        "mid_ns",
        "price_topic",
        "stale",
        "variant",
    )

    def __init__(self, asset: str, owner: str) -> None:
        super().__init__(owner)
        self.asset = asset
        self.change_topic = md_topic("change", asset)  # the hot ones: built once
        self.price_topic = px_topic(pm_symbol(asset))
        self.market = ""
        self.book = LocalBook()
        self.booked = False  # a book was applied (and published): the local book is the state
        self.book_ns = 0  # exchange time of the last book or change applied
        self.hash = ""
        self.bid = 0.0
        self.ask = 0.0
        self.mid = 0.0
        self.mid_ns = 0  # exchange time of the last mid published
        self.checks = 0
        self.last_resync = -1e18
        self.variant = UNPINNED  # the hash rule its books reproduce (hashcheck.py)
        self.stale = False  # its local book failed a check: the next book is applied whatever its hash

    def set_mid(self, bid: float, ask: float, ts_ns: int) -> Price:
        """A new mid (``bid``, ``ask`` > 0): remembered, and the message that carries it."""
        self.mid = mid = (bid + ask) * 0.5
        self.bid = bid
        self.ask = ask
        self.mid_ns = ts_ns
        return parse.mid_price(self.asset, mid, bid, ask, ts_ns)


class Broadcasts:
    """``new_market`` / ``market_resolved`` come on every connection with custom features: each
    market's once per kind (the last ``cap`` remembered), and, sharded (``owns``), only the assets
    of this instance's share."""

    def __init__(self, owns: Callable[[str], bool] | None = None, cap: int = 10_000) -> None:
        self.owns = owns
        self.cap = cap
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()

    def take(self, kind: str, market: str, assets: list[str]) -> list[str]:
        """The assets to announce; none when this market's ``kind`` was announced already."""
        owns = self.owns
        if owns is not None:
            assets = [a for a in assets if owns(a)]
            if not assets:
                return assets
        key = (kind, market or ",".join(assets))
        seen = self._seen
        if key in seen:
            return []
        seen[key] = None
        if len(seen) > self.cap:
            seen.popitem(last=False)
        return assets


def book_snapshot(st: AssetState) -> BookSnapshot | None:
    """The asset's book now, as ``md.book.<asset>`` carries it; None before its first book."""
    if not st.booked:
        return None
    book = st.book
    bids = [BookLevel(float(p), float(s)) for p, s in book.bids.items()]
    asks = [BookLevel(float(p), float(s)) for p, s in book.asks.items()]
    bids.sort(key=lambda lv: lv.price, reverse=True)
    asks.sort(key=lambda lv: lv.price)
    return BookSnapshot(
        asset=st.asset,
        market=st.market,
        bids=bids,
        asks=asks,
        hash=st.hash,
        tick_size=parse.tick_size(book.tick_size),
        event_ns=st.book_ns,
    )


def topic_filter(root: str, prefix: str) -> Callable[[str], bool] | None:
    """Which assets' topics ``root + asset`` start with ``prefix``; None when no topic can."""
    if len(prefix) <= len(root):
        return (lambda _asset: True) if root.startswith(prefix) else None
    if not prefix.startswith(root):
        return None
    rest = prefix[len(root) :]
    return lambda asset: asset.startswith(rest)


def snapshot(states: Iterable[tuple[str, AssetState]], prefix: str = "") -> list[Message]:
    """For each asset, its book (``md.book.<asset>``, once one was published) and its mid
    (``px.pm.<asset>``, once known), kept when the topic starts with ``prefix``."""
    books = topic_filter(BOOK_TOPICS, prefix)
    prices = topic_filter(PRICE_TOPICS, prefix)
    items: list[Message] = []
    if books is None and prices is None:
        return items
    for asset, st in states:
        if books is not None and st.booked and books(asset):
            book = book_snapshot(st)
            assert book is not None
            items.append(book)
        if prices is not None and st.mid > 0.0 and prices(asset):
            items.append(parse.mid_price(asset, st.mid, st.bid, st.ask, st.mid_ns))
    return items
