from __future__ import annotations

from services.ingest.protocol import (
    BestBidAskEvent,
    BookEvent,
    LastTradePriceEvent,
    MarketResolvedEvent,
    NewMarketEvent,
    PriceChangeEvent,
    TickSizeChangeEvent,
    decode_frame,
    initial_subscribe_frame,
    ms_to_ns,
    operation_frame,
)
from tests.ingest import frames


def test_book_dump_is_array_wrapped() -> None:
    d = decode_frame(frames.BOOK_DUMP)
    assert d.errors == 0
    (ev,) = d.events
    assert isinstance(ev, BookEvent)
    assert ev.asset_id == frames.ASSET
    assert [lv.price for lv in ev.bids] == ["0.01", "0.47", "0.48"]  # ascending, best last
    assert [lv.price for lv in ev.asks] == ["0.99", "0.53", "0.52"]  # descending, best last
    assert ev.tick_size == "0.01" and ev.last_trade_price == "0.500"


def test_every_event_type_decodes() -> None:
    cases = [
        (frames.PRICE_CHANGE, PriceChangeEvent),
        (frames.PRICE_CHANGE_LEGACY, PriceChangeEvent),
        (frames.TICK_SIZE_CHANGE, TickSizeChangeEvent),
        (frames.LAST_TRADE_PRICE, LastTradePriceEvent),
        (frames.BEST_BID_ASK, BestBidAskEvent),
        (frames.NEW_MARKET, NewMarketEvent),
        (frames.MARKET_RESOLVED, MarketResolvedEvent),
    ]
    for text, kind in cases:
        d = decode_frame(text)
        assert d.errors == 0 and not d.unknown_types, text
        assert len(d.events) == 1 and isinstance(d.events[0], kind)


def test_price_change_schemas() -> None:
    (cur,) = decode_frame(frames.PRICE_CHANGE).events
    assert len(cur.price_changes) == 2 and cur.changes is None
    assert cur.price_changes[0].best_bid == "0.49"
    (old,) = decode_frame(frames.PRICE_CHANGE_LEGACY).events
    assert old.price_changes == [] and old.changes is not None and len(old.changes) == 2


def test_resolved_names_winner() -> None:
    (ev,) = decode_frame(frames.MARKET_RESOLVED).events
    assert ev.winning_asset_id == ev.assets_ids[0]
    assert len(ev.assets_ids) == 2


def test_bad_input_is_counted_not_raised() -> None:
    assert decode_frame("{not json").errors == 1
    assert decode_frame(b"\xff\xfe").errors == 1
    assert decode_frame('{"event_type":"book"}').errors == 1  # no asset_id
    d = decode_frame('{"event_type":"something_new","x":1}')
    assert d.unknown_types == ["something_new"] and d.errors == 0
    mixed = "[" + frames.LAST_TRADE_PRICE + ',{"event_type":"zzz"},7,' + frames.TICK_SIZE_CHANGE + "]"
    d = decode_frame(mixed)
    assert [type(e).__name__ for e in d.events] == ["LastTradePriceEvent", "TickSizeChangeEvent"]
    assert d.unknown_types == ["zzz"] and d.errors == 1


def test_client_frames() -> None:
    assert initial_subscribe_frame(["1", "2"]) == (
        '{"assets_ids":["1","2"],"type":"market","initial_dump":true,"custom_feature_enabled":false}'
    )
    assert operation_frame("subscribe", ["3"]) == '{"operation":"subscribe","assets_ids":["3"]}'


def test_timestamps() -> None:
    assert ms_to_ns("1757908892351") == 1757908892351_000_000
    assert ms_to_ns(5) == 5_000_000
    assert ms_to_ns("x") == -1  # unreadable: the router counts a bad value
    assert ms_to_ns(10**30) == -1 and ms_to_ns(-5) == -1  # outside int64 ns
