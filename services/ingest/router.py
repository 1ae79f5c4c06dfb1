"""The message router (ENG-002): frames in, normalized messages out. Pure: no sockets, no awaits.

``Router.handle_frame(conn_id, data)`` decodes one WebSocket frame, keeps a local book per asset
(checking the server's SHA-1 hash), and publishes through the ``publish(topic, msg)`` callable:

- ``md.book.<asset>`` BookSnapshot, ``md.change.<asset>`` BookChange, ``md.trade.<asset>`` Trade,
  ``md.tick_size.<asset>`` TickSizeChange, ``md.market.<asset>`` MarketLifecycle;
- ``px.pm.<asset>`` Price (the book mid) whenever the mid changes.

Ownership: each asset is read from one connection, its owner; the same asset arriving on another
connection is dropped. During a recycling handoff the asset also has a candidate connection. The
old owner's events keep flowing and their keys (book hash, or a trade's fields) are remembered;
the candidate's events that were already published are dropped as duplicates, and its first event
that was not is published and makes the candidate the owner, after which the old connection's
events are dropped. The two connections carry the same ordered stream, so the handoff has no gap
and no duplicate.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from services.ingest import parse
from services.ingest.book import LocalBook
from services.ingest.hashcheck import UNPINNED, HashChecker, ResyncRequest
from services.ingest.protocol import (
    BestBidAskEvent,
    BookEvent,
    LastTradePriceEvent,
    MarketResolvedEvent,
    NewMarketEvent,
    Num,
    PriceChangeEntry,
    PriceChangeEvent,
    TickSizeChangeEvent,
    decode_frame,
)
from shared.clock import Clock, RealClock
from shared.messages import (
    BookChange,
    BookLevel,
    BookSnapshot,
    MarketLifecycle,
    Message,
    Price,
    TickSizeChange,
    Trade,
)

Publish = Callable[[str, Message], None]
LifecycleKind = Literal["new", "resolved"]
LifecycleHandler = Callable[[LifecycleKind, str, list[str], str], None]  # kind, market, assets, winner
SkipLog = Callable[..., None]  # (reason, msg, *args): a shared.ratelog.RateLimitedLog

RECENT_CAP = 4096  # keys remembered per asset during a handoff
SEEN_LIFECYCLE_CAP = 10_000


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


class AssetState:
    __slots__ = (
        "ask",
        "asset",
        "bid",
        "book",
        "book_ns",
        "booked",
        "candidate",
        "checks",
        "hash",
        "held",
        "last_resync",
        "market",
        "mid",
        "mid_ns",
        "owner",
        "recent",
        "stale",
        "variant",
    )

    def __init__(self, asset: str, owner: str) -> None:
        self.asset = asset
        self.market = ""
        self.owner = owner
        self.candidate: str | None = None
        self.recent: set[str] | None = None
        self.held: list[tuple[str, Callable[..., None], tuple[Any, ...]]] | None = None
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


def _tick_size(book: LocalBook) -> float:
    return (parse.number(book.tick_size) or 0.0) if book.tick_size else 0.0


def _excerpt(data: bytes | str) -> str:
    return repr(data[:80]) + ("..." if len(data) > 80 else "")


def _topic_filter(root: str, prefix: str) -> Callable[[str], bool] | None:
    """Which assets' topics ``root + asset`` start with ``prefix``; None when no topic can."""
    if len(prefix) <= len(root):
        return (lambda _asset: True) if root.startswith(prefix) else None
    if not prefix.startswith(root):
        return None
    rest = prefix[len(root) :]
    return lambda asset: asset.startswith(rest)


def _is_notice(text: bytes | str) -> bool:
    if isinstance(text, bytes):
        try:
            text = text.decode()
        except UnicodeDecodeError:
            return False
    return len(text) < 200 and all(ch.isupper() or ch in " _-!." for ch in text)


class Router:
    def __init__(
        self,
        publish: Publish,
        *,
        clock: Clock | None = None,
        verify_hashes: bool = True,
        hash_check_every: int = 1,
        resync_interval: float = 30.0,
        on_resync: ResyncRequest | None = None,
        on_lifecycle: LifecycleHandler | None = None,
        owns: Callable[[str], bool] | None = None,
        defer_checks: Callable[[Callable[[], object]], object] | None = None,
        before_checks: Callable[[], None] | None = None,
        skip_log: SkipLog | None = None,
    ) -> None:
        self.publish = publish
        self.skip_log: SkipLog = skip_log or (lambda reason, msg, *args: None)
        # sharded: broadcasts (new_market, market_resolved) name every market's assets; this
        # instance publishes and reports only those of its own share
        self.owns = owns
        self.clock: Clock = clock or RealClock()
        self.verify_hashes = verify_hashes
        self.on_lifecycle = on_lifecycle
        self.stats = RouterStats()
        self.assets: dict[str, AssetState] = {}
        # With ``defer_checks`` (the event loop's call_soon), book hashes are checked once the frames
        # at hand are routed, after ``before_checks`` (the publisher's flush): SHA-1 over a book is
        # most of a change's cost, and checked inline it delays every message behind it in a burst.
        # Without it, once per asset at the end of each frame.
        self.hashes = HashChecker(
            clock=self.clock,
            resync_interval=resync_interval,
            every=hash_check_every,
            on_resync=on_resync,
            skip_log=self.skip_log,
            defer=defer_checks,
            before=before_checks,
        )
        self._seen_lifecycle: OrderedDict[tuple[str, str], None] = OrderedDict()
        # hashed fields WebSocket books often lack, from Gamma or a REST book: asset -> (size, neg)
        self.params: dict[str, tuple[str, bool]] = {}

    def set_params(self, assets: Iterable[str], min_order_size: str, neg_risk: bool) -> None:
        """The market's ``min_order_size`` and ``neg_risk`` (Gamma's ``orderMinSize`` and
        ``negRisk``, or a REST book's): hashed with the books that do not carry them."""
        for asset in assets:
            self.params[asset] = (min_order_size, neg_risk)
            st = self.assets.get(asset)
            if st is not None:
                st.book.min_order_size, st.book.neg_risk = min_order_size, neg_risk

    # -- ownership -------------------------------------------------------------------------------

    def assign(self, assets: Iterable[str], conn_id: str) -> None:
        """``conn_id`` now owns these assets (a new subscription or a reconnect)."""
        states = self.assets
        for asset in assets:
            st = states.get(asset)
            if st is None:
                st = states[asset] = AssetState(asset, conn_id)
                params = self.params.get(asset)
                if params is not None:
                    st.book.min_order_size, st.book.neg_risk = params
            else:
                st.owner = conn_id
                st.candidate = None
                st.recent = None
                st.held = None

    def release(self, assets: Iterable[str]) -> None:
        for asset in assets:
            self.assets.pop(asset, None)
            self.hashes.cancel(asset)

    def begin_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        """``new_conn`` subscribes the same assets; it takes over once it delivers something new."""
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                st.candidate = new_conn
                st.recent = {st.hash} if st.hash else set()

    def complete_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        """The old connection is gone: ``new_conn`` owns what it has not taken over yet.

        Its duplicates of what the old one published are still dropped until it delivers
        something new.
        """
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None and st.candidate == new_conn:
                if st.held is not None:  # publish its book (a resync) and what followed it
                    self._switch(st, st.held)
                else:
                    st.owner = new_conn
                    st.candidate = None

    def abort_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None and st.candidate == new_conn:
                st.candidate = None
                st.recent = None
                st.held = None

    def switched(self, assets: Iterable[str], new_conn: str) -> int:
        """How many of these assets ``new_conn`` already owns."""
        n = 0
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None and st.owner == new_conn:
                n += 1
        return n

    def _route(
        self,
        st: AssetState,
        conn: str,
        key: str,
        apply: Callable[..., None],
        args: tuple[Any, ...],
        book: bool,
    ) -> None:
        """Publish, hold or drop an event that is not the plain owner case (handoff, stray)."""
        recent = st.recent
        stats = self.stats
        if conn == st.owner:
            if recent is None:
                apply(*args)
            elif st.candidate is not None:  # old owner during a handoff: remember what went out
                if len(recent) < RECENT_CAP:
                    recent.add(key)
                apply(*args)
                held = st.held
                if held and held[0][0] == key:  # caught up with the candidate's book: switch
                    stats.handoff_duplicates += 1  # that book, already out from the old owner
                    self._switch(st, held[1:])
            elif key in recent:  # new owner still replaying what the old one published
                stats.handoff_duplicates += 1
            else:
                st.recent = None  # past the overlap
                apply(*args)
            return
        if conn == st.candidate and recent is not None:
            held = st.held
            if held is not None:
                held.append((key, apply, args))
                if len(held) > RECENT_CAP:  # the old connection never catches up: stop waiting
                    self._switch(st, held)
            elif key in recent:
                stats.handoff_duplicates += 1
            elif book:  # a book ahead of what the old owner delivered: hold it until it catches up
                st.held = [(key, apply, args)]
            else:
                self._switch(st, [(key, apply, args)])
            return
        stats.not_owner_drops += 1

    def _switch(self, st: AssetState, replay: list[tuple[str, Callable[..., None], tuple[Any, ...]]]) -> None:
        assert st.candidate is not None
        st.owner = st.candidate
        st.candidate = None
        st.recent = None
        st.held = None
        self.stats.handoff_switches += 1
        for _, apply, args in replay:
            apply(*args)

    # -- state (Clone snapshots) -------------------------------------------------------------------

    def book_snapshot(self, asset: str) -> BookSnapshot | None:
        """The asset's book now, as ``md.book.<asset>`` carries it; None before its first book."""
        st = self.assets.get(asset)
        if st is None or not st.booked:
            return None
        book = st.book
        bids = [BookLevel(float(p), float(s)) for p, s in book.bids.items()]
        asks = [BookLevel(float(p), float(s)) for p, s in book.asks.items()]
        bids.sort(key=lambda lv: lv.price, reverse=True)
        asks.sort(key=lambda lv: lv.price)
        return BookSnapshot(
            asset=asset,
            market=st.market,
            bids=bids,
            asks=asks,
            hash=st.hash,
            tick_size=_tick_size(book),
            event_ns=st.book_ns,
        )

    def snapshot(self, prefix: str = "") -> list[Message]:
        """What a consumer rebuilds from the stream, now: for each asset followed, its book
        (``md.book.<asset>``, once one was published) and its mid (``px.pm.<asset>``, once known).

        ``prefix`` keeps the items whose topic starts with it (``md.book.``, ``px.pm.<asset>``...).
        Held events of a handoff are not in it: they were not published either.
        """
        books = _topic_filter("md.book.", prefix)
        prices = _topic_filter("px.pm.", prefix)
        items: list[Message] = []
        if books is None and prices is None:
            return items
        for asset, st in self.assets.items():
            if books is not None and st.booked and books(asset):
                book = self.book_snapshot(asset)
                assert book is not None
                items.append(book)
            if prices is not None and st.mid > 0.0 and prices(asset):
                items.append(
                    Price(
                        symbol=f"pm.{asset}",
                        price=st.mid,
                        bid=st.bid,
                        ask=st.ask,
                        source="book",
                        event_ns=st.mid_ns,
                    )
                )
        return items

    # -- frames ----------------------------------------------------------------------------------

    def handle_frame(self, conn_id: str, data: bytes | str) -> int:
        """Route one frame from ``conn_id``; returns how many events it held (0 for text).

        Never raises: bad input is counted and skipped by reason, and a bug that raises is counted
        (``internal_errors``) and logged, so that one frame cannot take the connection down."""
        try:
            return self._handle_frame(conn_id, data)
        except Exception as exc:
            self.stats.internal_errors += 1
            self.skip_log("internal_error", "ingest: routing a frame from %s failed: %r", conn_id, exc)
            return 1

    def _handle_frame(self, conn_id: str, data: bytes | str) -> int:
        stats = self.stats
        stats.frames += 1
        first = data[:1]
        if first not in ("{", "[", b"{", b"["):
            stripped = data.strip()
            if not stripped or stripped[:1] not in ("{", "[", b"{", b"["):
                if _is_notice(stripped):
                    stats.text_frames += 1  # a server notice such as "NO NEW ASSETS"
                else:
                    stats.decode_errors += 1
                    self.skip_log(
                        "decode_error",
                        "ingest: skipped a non-JSON frame from %s: %s",
                        conn_id,
                        _excerpt(data),
                    )
                return 0
        decoded = decode_frame(data)
        if decoded.errors:
            stats.decode_errors += decoded.errors
            self.skip_log(
                "decode_error",
                "ingest: %d item(s) of a frame from %s did not decode: %s",
                decoded.errors,
                conn_id,
                _excerpt(data),
            )
        if decoded.unknown_types:
            stats.unknown_events += len(decoded.unknown_types)
            self.skip_log(
                "unknown_event", "ingest: skipped unknown event type(s) %s", decoded.unknown_types[:5]
            )
        by_type = stats.by_type
        for ev in decoded.events:
            kind = type(ev)
            if kind is PriceChangeEvent:
                self._price_change(conn_id, ev)
                name = "price_change"
            elif kind is LastTradePriceEvent:
                stats.updates += 1
                self._trade(conn_id, ev)
                name = "last_trade_price"
            elif kind is BookEvent:
                stats.updates += 1
                self._book(conn_id, ev)
                name = "book"
            elif kind is BestBidAskEvent:
                self._best_bid_ask(conn_id, ev)
                name = "best_bid_ask"
            elif kind is TickSizeChangeEvent:
                self._tick_size(conn_id, ev)
                name = "tick_size_change"
            elif kind is NewMarketEvent:
                self._lifecycle("new", ev.market, ev.assets_ids, "", ev.question, ev.timestamp)
                name = "new_market"
            else:
                assert isinstance(ev, MarketResolvedEvent)
                self._lifecycle(
                    "resolved", ev.market, ev.assets_ids, ev.winning_asset_id, ev.question, ev.timestamp
                )
                name = "market_resolved"
            by_type[name] = by_type.get(name, 0) + 1
        self.hashes.end_of_frame()
        n = len(decoded.events)
        stats.events += n
        return n + len(decoded.unknown_types) + decoded.errors

    def _emit(self, topic: str, msg: Message) -> None:
        self.stats.published += 1
        self.publish(topic, msg)

    def _mid(self, st: AssetState, bid: float, ask: float, ts_ns: int) -> None:
        if bid > 0.0 and ask > 0.0:
            mid = (bid + ask) * 0.5
            if mid != st.mid:
                st.mid = mid
                st.bid = bid
                st.ask = ask
                st.mid_ns = ts_ns
                self._emit(
                    f"px.pm.{st.asset}",
                    Price(
                        symbol=f"pm.{st.asset}", price=mid, bid=bid, ask=ask, source="book", event_ns=ts_ns
                    ),
                )

    def _unknown_asset(self, asset: str, kind: str) -> None:
        self.stats.unknown_assets += 1
        self.skip_log("unknown_asset", "ingest: skipped a %s for asset %.80r, not followed", kind, asset)

    def _bad_value(self, asset: str, kind: str, what: object) -> None:
        self.stats.bad_values += 1
        self.skip_log("bad_value", "ingest: skipped a %s of %.80r: bad %.120r", kind, asset, what)

    def _price_change(self, conn: str, ev: PriceChangeEvent) -> None:
        if not ev.price_changes:
            if ev.changes is not None or ev.asset_id:
                self.stats.legacy_events += 1
                self.skip_log("legacy", "ingest: skipped a legacy flat price_change of %.80r", ev.asset_id)
            else:
                self.stats.decode_errors += 1
                self.skip_log("decode_error", "ingest: skipped a price_change without changes")
            return
        self.stats.updates += len(ev.price_changes)
        assets = self.assets
        market = ev.market
        ts = ev.timestamp
        ts_ns = parse.event_ns(ts)
        if ts_ns is None:
            self._bad_value(ev.price_changes[0].asset_id, "price_change", ("timestamp", ts))
            return
        for e in ev.price_changes:
            st = assets.get(e.asset_id)
            if st is None:
                self._unknown_asset(e.asset_id, "price_change")
            elif conn == st.owner and st.recent is None:
                self._apply_change(st, e, market, ts, ts_ns)
            else:
                key = e.hash or f"c:{ts}:{e.side}:{e.price}:{e.size}"
                self._route(st, conn, key, self._apply_change, (st, e, market, ts, ts_ns), False)

    def _apply_change(self, st: AssetState, e: PriceChangeEntry, market: str, ts: Num, ts_ns: int) -> None:
        side = parse.side(e.side)
        price = parse.price(e.price)
        size = parse.number(e.size)
        if side is None or price is None or size is None:
            self._bad_value(st.asset, "price_change", (e.side, e.price, e.size))
            return
        if market:
            st.market = market
        is_buy = side == "buy"
        book = st.book
        book.apply(is_buy, e.price, e.size)
        st.book_ns = ts_ns
        key = e.hash
        if key:
            st.hash = key
            if self.verify_hashes:
                self.hashes.on_change(st, str(ts), key)
        else:
            self.hashes.cancel(st.asset)
        bid = (parse.number(e.best_bid) if e.best_bid else None) or book.best_bid()
        ask = (parse.number(e.best_ask) if e.best_ask else None) or book.best_ask()
        self._emit(
            f"md.change.{st.asset}",
            BookChange(
                asset=st.asset,
                market=st.market,
                side=side,
                price=price,
                size=size,
                best_bid=bid,
                best_ask=ask,
                hash=key,
                event_ns=ts_ns,
            ),
        )
        self._mid(st, bid, ask, ts_ns)

    def run_checks(self) -> int:
        """Check the deferred hashes now; returns how many were checked."""
        return self.hashes.run()

    def _book(self, conn: str, ev: BookEvent) -> None:
        st = self.assets.get(ev.asset_id)
        if st is None:
            self._unknown_asset(ev.asset_id, "book")
            return
        if conn == st.owner and st.recent is None:
            self._apply_book(st, ev)
        else:
            self._route(st, conn, ev.hash or f"k:{ev.timestamp}", self._apply_book, (st, ev), True)

    def _apply_book(self, st: AssetState, ev: BookEvent) -> None:
        bids = ev.bids or ev.buys or []
        asks = ev.asks or ev.sells or []
        snap_bids = parse.levels_best_first(bids, descending=True)
        snap_asks = parse.levels_best_first(asks, descending=False)
        ts_ns = parse.event_ns(ev.timestamp)
        if snap_bids is None or snap_asks is None or ts_ns is None:
            self._bad_value(st.asset, "book", "level or timestamp")
            return
        self.hashes.cancel(st.asset)
        if ev.market:
            st.market = ev.market
        book = st.book
        if ev.tick_size is not None:
            book.tick_size = ev.tick_size
        if ev.last_trade_price is not None:
            book.last_trade_price = ev.last_trade_price
        if ev.min_order_size is not None:
            book.min_order_size = ev.min_order_size
        if ev.neg_risk is not None:
            book.neg_risk = ev.neg_risk
        if ev.hash and ev.hash == st.hash and not st.stale:
            self.stats.unchanged_books += 1  # same state we already have (reconnect, resync)
            return
        st.stale = False
        book.reset(((lv.price, lv.size) for lv in bids), ((lv.price, lv.size) for lv in asks))
        st.hash = ev.hash
        if self.verify_hashes and ev.hash:
            self.hashes.on_book(st, str(ev.timestamp), ev.hash)  # pins a rule, never resyncs
        st.booked = True
        st.book_ns = ts_ns
        self._emit(
            f"md.book.{st.asset}",
            BookSnapshot(
                asset=st.asset,
                market=st.market,
                bids=snap_bids,
                asks=snap_asks,
                hash=ev.hash,
                tick_size=_tick_size(book),
                event_ns=ts_ns,
            ),
        )
        self._mid(
            st, snap_bids[0].price if snap_bids else 0.0, snap_asks[0].price if snap_asks else 0.0, ts_ns
        )

    def _trade(self, conn: str, ev: LastTradePriceEvent) -> None:
        st = self.assets.get(ev.asset_id)
        if st is None:
            self._unknown_asset(ev.asset_id, "trade")
            return
        if conn == st.owner and st.recent is None:
            self._apply_trade(st, ev)
        else:
            self._route(
                st,
                conn,
                f"t:{ev.timestamp}:{ev.side}:{ev.price}:{ev.size}",
                self._apply_trade,
                (st, ev),
                False,
            )

    def _apply_trade(self, st: AssetState, ev: LastTradePriceEvent) -> None:
        price = parse.price(ev.price)
        size = parse.number(ev.size)
        fee = parse.number(ev.fee_rate_bps)
        side = parse.side(ev.side)
        ts_ns = parse.event_ns(ev.timestamp)
        if price is None or size is None or fee is None or side is None or ts_ns is None:
            self._bad_value(st.asset, "trade", (ev.price, ev.size, ev.fee_rate_bps, ev.side, ev.timestamp))
            return
        st.book.last_trade_price = ev.price  # part of the hashed document
        self.hashes.cancel(st.asset)
        self._emit(
            f"md.trade.{st.asset}",
            Trade(
                asset=st.asset,
                market=ev.market or st.market,
                price=price,
                size=size,
                side=side,
                fee_rate_bps=fee,
                event_ns=ts_ns,
            ),
        )

    def _tick_size(self, conn: str, ev: TickSizeChangeEvent) -> None:
        st = self.assets.get(ev.asset_id)
        if st is None:
            self._unknown_asset(ev.asset_id, "tick_size_change")
            return
        if conn == st.owner and st.recent is None:
            self._apply_tick_size(st, ev)
        else:
            self._route(
                st, conn, f"s:{ev.timestamp}:{ev.new_tick_size}", self._apply_tick_size, (st, ev), False
            )

    def _apply_tick_size(self, st: AssetState, ev: TickSizeChangeEvent) -> None:
        old = parse.number(ev.old_tick_size or 0.0)
        new = parse.price(ev.new_tick_size)
        ts_ns = parse.event_ns(ev.timestamp)
        if old is None or new is None or ts_ns is None:
            self._bad_value(st.asset, "tick_size_change", (ev.old_tick_size, ev.new_tick_size, ev.timestamp))
            return
        st.book.tick_size = ev.new_tick_size
        self.hashes.cancel(st.asset)
        self._emit(
            f"md.tick_size.{st.asset}",
            TickSizeChange(
                asset=st.asset,
                market=ev.market or st.market,
                old_tick_size=old,
                new_tick_size=new,
                event_ns=ts_ns,
            ),
        )

    def _best_bid_ask(self, conn: str, ev: BestBidAskEvent) -> None:
        st = self.assets.get(ev.asset_id)
        if st is None:
            self._unknown_asset(ev.asset_id, "best_bid_ask")
            return
        if conn == st.owner and st.recent is None:
            self._apply_best_bid_ask(st, ev)
        else:
            self._route(
                st,
                conn,
                f"b:{ev.timestamp}:{ev.best_bid}:{ev.best_ask}",
                self._apply_best_bid_ask,
                (st, ev),
                False,
            )

    def _apply_best_bid_ask(self, st: AssetState, ev: BestBidAskEvent) -> None:
        bid = parse.number(ev.best_bid or 0.0)
        ask = parse.number(ev.best_ask or 0.0)
        ts_ns = parse.event_ns(ev.timestamp)
        if bid is None or ask is None or ts_ns is None:
            self._bad_value(st.asset, "best_bid_ask", (ev.best_bid, ev.best_ask, ev.timestamp))
            return
        self._mid(st, bid, ask, ts_ns)

    def _lifecycle(
        self, kind: LifecycleKind, market: str, assets: list[str], winner: str, question: str, ts: Num
    ) -> None:
        ts_ns = parse.event_ns(ts)
        if ts_ns is None:
            self._bad_value(market, kind, ("timestamp", ts))
            return
        # Broadcast to every connection with custom features: publish once per market and kind.
        if self.owns is not None:
            owns = self.owns
            assets = [a for a in assets if owns(a)]
            if not assets:
                return
        seen_key = (kind, market or ",".join(assets))
        seen = self._seen_lifecycle
        if seen_key in seen:
            return
        seen[seen_key] = None
        if len(seen) > SEEN_LIFECYCLE_CAP:
            seen.popitem(last=False)
        for asset in assets:
            self._emit(
                f"md.market.{asset}",
                MarketLifecycle(
                    asset=asset,
                    market=market,
                    status=kind,
                    winning_asset=winner,
                    question=question,
                    event_ns=ts_ns,
                ),
            )
        if self.on_lifecycle is not None:
            self.on_lifecycle(kind, market, list(assets), winner)
