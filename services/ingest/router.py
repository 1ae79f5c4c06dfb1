"""The message router (ENG-002): frames in, normalized messages out. Pure: no sockets, no awaits.

``Router.handle_frame(conn_id, data)`` decodes one WebSocket frame, keeps a local book per asset
(checking the server's SHA-1 hash), and publishes through the ``publish(topic, msg)`` callable:

- ``md.book.<asset>`` BookSnapshot, ``md.change.<asset>`` BookChange, ``md.trade.<asset>`` Trade,
  ``md.tick_size.<asset>`` TickSizeChange, ``md.market.<asset>`` MarketLifecycle, and
  ``px.pm.<asset>`` Price (the book mid) whenever the mid changes (shared.constants' builders).

The work is split: ``parse.py`` reads venue values and builds the messages, ``handoff.py`` says
which connection may publish an asset (ownership, the recycling handoff), ``hashcheck.py`` checks
the books' hashes and asks for resyncs, ``state.py`` holds the per-asset state and builds the
Clone snapshot. This module dispatches each event of a frame and applies it to the asset's state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final, Literal

from services.ingest import parse
from services.ingest.hashcheck import HashChecker, ResyncRequest
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
from services.ingest.state import AssetState, Broadcasts, RouterStats, book_snapshot, snapshot
from shared.clock import Clock, RealClock
from shared.constants import md_topic
from shared.messages import BookChange, BookSnapshot, Message

Publish = Callable[[str, Message], None]
LifecycleKind = Literal["new", "resolved"]
LifecycleHandler = Callable[[LifecycleKind, str, list[str], str], None]  # kind, market, assets, winner
SkipLog = Callable[..., None]  # (reason, msg, *args): a shared.ratelog.RateLimitedLog
_SIDES_AS_SENT: Final = parse.SIDES_AS_SENT
_PRICES: Final = parse.PRICES
_INF: Final = float("inf")


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
        self.clock: Clock = clock or RealClock()
        self.verify_hashes = verify_hashes
        self.on_lifecycle = on_lifecycle
        self.stats = RouterStats()
        self.assets: dict[str, AssetState] = {}
        # checks after the frames at hand are routed and flushed (``defer_checks``), or at the end
        # of each frame: hashcheck.py
        self.hashes = HashChecker(
            clock=self.clock,
            resync_interval=resync_interval,
            every=hash_check_every,
            on_resync=on_resync,
            skip_log=self.skip_log,
            defer=defer_checks,
            before=before_checks,
        )
        self._broadcasts = Broadcasts(owns)
        # hashed fields WebSocket books often lack, from Gamma or a REST book: asset -> (size, neg)
        self.params: dict[str, tuple[str, bool]] = {}

    def set_params(self, assets: Iterable[str], min_order_size: str, neg_risk: bool) -> None:
        """The market's ``min_order_size`` and ``neg_risk`` (Gamma's ``orderMinSize`` and
        ``negRisk``): hashed with the books that do not carry them (a REST book does)."""
        for asset in assets:
            self.params[asset] = (min_order_size, neg_risk)
            st = self.assets.get(asset)
            if st is not None:
                st.book.min_order_size, st.book.neg_risk = min_order_size, neg_risk

    # -- ownership (handoff.py) --------------------------------------------------------------------

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
                st.assign(conn_id)

    def release(self, assets: Iterable[str]) -> None:
        for asset in assets:
            self.assets.pop(asset, None)
            self.hashes.cancel(asset)

    def begin_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        """``new_conn`` subscribes the same assets; it takes over once it delivers something new."""
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                st.begin(new_conn, st.hash)

    def complete_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        """The old connection is gone: ``new_conn`` owns what it has not taken over yet."""
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                st.complete(new_conn, self.stats)

    def abort_handoff(self, assets: Iterable[str], new_conn: str) -> None:
        for asset in assets:
            st = self.assets.get(asset)
            if st is not None:
                st.abort(new_conn)

    # -- state (Clone snapshots, state.py) ---------------------------------------------------------

    def book_snapshot(self, asset: str) -> BookSnapshot | None:
        """The asset's book now, as ``md.book.<asset>`` carries it; None before its first book."""
        st = self.assets.get(asset)
        return None if st is None else book_snapshot(st)

    def snapshot(self, prefix: str = "") -> list[Message]:
        """Each asset's book and mid as a consumer rebuilds them from the stream now (state.py);
        ``prefix`` keeps the items whose topic starts with it. A handoff's held events are not in it."""
        return snapshot(self.assets.items(), prefix)

    # -- frames ------------------------------------------------------------------------------------

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
        if data[:1] not in parse.JSON_START and (text := parse.text_frame(data)) is not None:
            if text == "notice":  # a server notice such as "NO NEW ASSETS"
                stats.text_frames += 1
            else:
                stats.decode_errors += 1
                self.skip_log("decode_error", "ingest: skipped a non-JSON frame from %s: %s", conn_id, parse.excerpt(data))  # fmt: skip
            return 0
        decoded = decode_frame(data)
        if decoded.errors or decoded.unknown_types:
            stats.count_skipped(decoded, self.skip_log, conn_id, data)
        by_type = stats.by_type
        for ev in decoded.events:
            match ev:
                case PriceChangeEvent():
                    self._price_change(conn_id, ev)
                    name = "price_change"
                case LastTradePriceEvent():
                    stats.updates += 1
                    self._dispatch(conn_id, ev, f"t:{ev.timestamp}:{ev.side}:{ev.price}:{ev.size}", self._apply_trade)  # fmt: skip
                    name = "last_trade_price"
                case BookEvent():
                    stats.updates += 1
                    self._dispatch(conn_id, ev, ev.hash or f"k:{ev.timestamp}", self._apply_book, True)
                    name = "book"
                case BestBidAskEvent():
                    self._dispatch(conn_id, ev, f"b:{ev.timestamp}:{ev.best_bid}:{ev.best_ask}", self._apply_best_bid_ask)  # fmt: skip
                    name = "best_bid_ask"
                case TickSizeChangeEvent():
                    self._dispatch(conn_id, ev, f"s:{ev.timestamp}:{ev.new_tick_size}", self._apply_tick_size)  # fmt: skip
                    name = "tick_size_change"
                case NewMarketEvent():
                    self._lifecycle("new", ev.market, ev.assets_ids, "", ev.question, ev.timestamp)
                    name = "new_market"
                case MarketResolvedEvent():
                    self._lifecycle(
                        "resolved", ev.market, ev.assets_ids, ev.winning_asset_id, ev.question, ev.timestamp
                    )
                    name = "market_resolved"
            by_type[name] = by_type.get(name, 0) + 1
        self.hashes.end_of_frame()
        n = len(decoded.events)
        stats.events += n
        return n + len(decoded.unknown_types) + decoded.errors

    def _dispatch(
        self, conn: str, ev: Any, key: str, apply: Callable[[AssetState, Any], None], book: bool = False
    ) -> None:
        """An event of one asset: applied when ``conn`` owns the asset, else as the handoff says."""
        st = self.assets.get(ev.asset_id)
        if st is None:
            self._unknown_asset(ev.asset_id, type(ev).__struct_config__.tag)
        elif conn == st.owner and st.recent is None:
            apply(st, ev)
        else:
            st.offer(conn, key, apply, (st, ev), book, self.stats)

    def _emit(self, topic: str, msg: Message) -> None:
        self.stats.published += 1
        self.publish(topic, msg)

    def _mid(self, st: AssetState, bid: float, ask: float, ts_ns: int) -> None:
        if bid > 0.0 and ask > 0.0 and (bid + ask) * 0.5 != st.mid:
            self._emit(st.price_topic, st.set_mid(bid, ask, ts_ns))

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
        apply = self._apply_change
        for e in ev.price_changes:
            st = assets.get(e.asset_id)
            if st is None:
                self._unknown_asset(e.asset_id, "price_change")
            elif conn == st.owner and st.recent is None:
                apply(st, e, market, ts, ts_ns)
            else:
                key = e.hash or f"c:{ts}:{e.side}:{e.price}:{e.size}"
                st.offer(conn, key, apply, (st, e, market, ts, ts_ns), False, self.stats)

    def _apply_change(self, st: AssetState, e: PriceChangeEntry, market: str, ts: Num, ts_ns: int) -> None:
        # the hot path, once per entry: parse.side, change_values and best_or inlined (same readings)
        side_text, price_text, size_text = e.side, e.price, e.size
        side = _SIDES_AS_SENT.get(side_text) or parse.side(side_text)
        price = _PRICES.get(price_text) or parse.price_value(price_text)
        try:
            size = float(size_text)
        except ValueError:
            size = -1.0
        if side is None or price is None or not 0.0 <= size < _INF:
            self._bad_value(st.asset, "price_change", (side_text, price_text, size_text))
            return
        if market:
            st.market = market
        book = st.book
        (book.bid_side if side == "buy" else book.ask_side).set(price_text, size_text, size > 0.0)
        st.book_ns = ts_ns
        key = e.hash
        if key:
            st.hash = key
            if self.verify_hashes:
                self.hashes.on_change(st, ts if type(ts) is str else str(ts), key)
        else:
            self.hashes.cancel(st.asset)
        bid = _PRICES.get(e.best_bid) or parse.best_or(e.best_bid, 0.0) or book.best_bid()
        ask = _PRICES.get(e.best_ask) or parse.best_or(e.best_ask, 0.0) or book.best_ask()
        stats = self.stats
        stats.published += 1
        self.publish(
            st.change_topic,
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
        if bid > 0.0 and ask > 0.0 and (bid + ask) * 0.5 != st.mid:
            stats.published += 1
            self.publish(st.price_topic, st.set_mid(bid, ask, ts_ns))

    def apply_book(self, ev: BookEvent) -> bool:
        """A book from elsewhere (a REST resync) applied as the asset's state, whoever owns it;
        False when the asset is not followed."""
        st = self.assets.get(ev.asset_id)
        if st is not None:
            self._apply_book(st, ev)
        return st is not None

    def run_checks(self) -> int:
        """Check the deferred hashes now; returns how many were checked."""
        return self.hashes.run()

    def _apply_book(self, st: AssetState, ev: BookEvent) -> None:
        levels = parse.book_levels(ev)
        if levels is None:
            self._bad_value(st.asset, "book", "level or timestamp")
            return
        snap_bids, snap_asks, ts_ns = levels
        self.hashes.cancel(st.asset)
        if ev.market:
            st.market = ev.market
        book = st.book
        book.take_fields(ev.tick_size, ev.last_trade_price, ev.min_order_size, ev.neg_risk)
        if ev.hash and ev.hash == st.hash and not st.stale:
            self.stats.unchanged_books += 1  # same state we already have (reconnect, resync)
            return
        st.stale = False
        bids = ev.bids or ev.buys or []
        asks = ev.asks or ev.sells or []
        book.reset(((lv.price, lv.size) for lv in bids), ((lv.price, lv.size) for lv in asks))
        st.hash = ev.hash
        if self.verify_hashes and ev.hash:
            self.hashes.on_book(st, str(ev.timestamp), ev.hash)  # pins a rule, never resyncs
        st.booked = True
        st.book_ns = ts_ns
        self._emit(
            md_topic("book", st.asset),
            BookSnapshot(
                asset=st.asset,
                market=st.market,
                bids=snap_bids,
                asks=snap_asks,
                hash=ev.hash,
                tick_size=parse.tick_size(book.tick_size),
                event_ns=ts_ns,
            ),
        )
        self._mid(
            st, snap_bids[0].price if snap_bids else 0.0, snap_asks[0].price if snap_asks else 0.0, ts_ns
        )

    def _apply_trade(self, st: AssetState, ev: LastTradePriceEvent) -> None:
        trade = parse.trade(ev, st.market)
        if trade is None:
            self._bad_value(st.asset, "trade", (ev.price, ev.size, ev.fee_rate_bps, ev.side, ev.timestamp))
            return
        st.book.last_trade_price = ev.price  # part of the hashed document
        self.hashes.cancel(st.asset)
        self._emit(md_topic("trade", st.asset), trade)

    def _apply_tick_size(self, st: AssetState, ev: TickSizeChangeEvent) -> None:
        change = parse.tick_size_change(ev, st.market)
        if change is None:
            self._bad_value(st.asset, "tick_size_change", (ev.old_tick_size, ev.new_tick_size, ev.timestamp))
            return
        st.book.tick_size = ev.new_tick_size
        self.hashes.cancel(st.asset)
        self._emit(md_topic("tick_size", st.asset), change)

    def _apply_best_bid_ask(self, st: AssetState, ev: BestBidAskEvent) -> None:
        read = parse.best_bid_ask(ev)
        if read is None:
            self._bad_value(st.asset, "best_bid_ask", (ev.best_bid, ev.best_ask, ev.timestamp))
            return
        self._mid(st, *read)

    def _lifecycle(
        self, kind: LifecycleKind, market: str, assets: list[str], winner: str, question: str, ts: Num
    ) -> None:
        ts_ns = parse.event_ns(ts)
        if ts_ns is None:
            self._bad_value(market, kind, ("timestamp", ts))
            return
        assets = self._broadcasts.take(kind, market, assets)
        if not assets:
            return
        for msg in parse.lifecycle(kind, market, assets, winner, question, ts_ns):
            self._emit(md_topic("market", msg.asset), msg)
        if self.on_lifecycle is not None:
            self.on_lifecycle(kind, market, list(assets), winner)
