"""Typed decoding of the Polymarket CLOB market-channel frames (msgspec, no sockets).

A frame is a text WebSocket message: one JSON object, a JSON array of them (the initial book dump
comes array-wrapped), or a non-JSON text such as ``PONG`` or ``NO NEW ASSETS``. Every event is a
tagged Struct selected by its ``event_type``. Unknown fields are ignored, so the server may add
fields freely; an unknown ``event_type`` or a frame that is not valid JSON is classified, counted
and skipped by the caller, never raised.
"""

from __future__ import annotations

import typing
from typing import Any

import msgspec
from msgspec import Struct

# Prices, sizes and timestamps arrive as decimal strings; a few producers send numbers.
Num = str | float | int


class Level(Struct, gc=False):
    price: str
    size: str


class BookEvent(Struct, tag_field="event_type", tag="book"):
    """Full book of one asset. Real snapshots list bids ascending and asks descending (best last)."""

    asset_id: str
    market: str = ""
    bids: list[Level] = []
    asks: list[Level] = []
    buys: list[Level] | None = None  # older name of bids
    sells: list[Level] | None = None  # older name of asks
    timestamp: Num = "0"
    hash: str = ""
    tick_size: str | None = None
    last_trade_price: str | None = None
    min_order_size: str | None = None
    neg_risk: bool | None = None


class PriceChangeEntry(Struct, gc=False):
    """One level change of the current ``price_change`` schema; ``hash`` is the resulting book's."""

    asset_id: str
    price: str
    size: str
    side: str  # "BUY" | "SELL"
    hash: str = ""
    best_bid: str = ""
    best_ask: str = ""


class LegacyChange(Struct, gc=False):
    price: str
    size: str
    side: str


class PriceChangeEvent(Struct, tag_field="event_type", tag="price_change"):
    """``price_change``: current schema in ``price_changes``; the older flat one in ``changes``."""

    market: str = ""
    timestamp: Num = "0"
    price_changes: list[PriceChangeEntry] = []
    # older flat schema (one asset per event): recognised and counted, not applied
    asset_id: str = ""
    changes: list[LegacyChange] | None = None
    hash: str = ""


class TickSizeChangeEvent(Struct, tag_field="event_type", tag="tick_size_change"):
    asset_id: str
    market: str = ""
    old_tick_size: str = ""
    new_tick_size: str = ""
    timestamp: Num = "0"


class LastTradePriceEvent(Struct, tag_field="event_type", tag="last_trade_price"):
    asset_id: str
    price: str
    size: str = "0"
    side: str = ""
    market: str = ""
    fee_rate_bps: Num = "0"
    timestamp: Num = "0"


class BestBidAskEvent(Struct, tag_field="event_type", tag="best_bid_ask"):
    asset_id: str
    market: str = ""
    best_bid: str = ""
    best_ask: str = ""
    spread: str = ""
    timestamp: Num = "0"


class NewMarketEvent(Struct, tag_field="event_type", tag="new_market"):
    """Broadcast (custom features): a market opened; names assets nobody subscribed to yet."""

    market: str = ""
    assets_ids: list[str] = []
    question: str = ""
    id: str = ""
    slug: str = ""
    outcomes: list[str] = []
    timestamp: Num = "0"


class MarketResolvedEvent(Struct, tag_field="event_type", tag="market_resolved"):
    """Broadcast (custom features): a market resolved; its assets are over."""

    market: str = ""
    assets_ids: list[str] = []
    winning_asset_id: str = ""
    winning_outcome: str = ""
    question: str = ""
    id: str = ""
    timestamp: Num = "0"


Event = (
    BookEvent
    | PriceChangeEvent
    | TickSizeChangeEvent
    | LastTradePriceEvent
    | BestBidAskEvent
    | NewMarketEvent
    | MarketResolvedEvent
)
EVENT_TYPES: tuple[type[Any], ...] = typing.get_args(Event)


_KNOWN_TAGS = frozenset(t.__struct_config__.tag for t in EVENT_TYPES)


class _Untyped(Struct):
    event_type: str = ""


_FRAME_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event | list[Event])
_ONE_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(Event)
_RAW_LIST: msgspec.json.Decoder[list[msgspec.Raw]] = msgspec.json.Decoder(list[msgspec.Raw])
_UNTYPED: msgspec.json.Decoder[_Untyped] = msgspec.json.Decoder(_Untyped)


class Decoded(Struct):
    """What one frame held: typed events, plus counts of what could not be used."""

    events: list[Any]
    unknown_types: list[str] = []  # event_type values we do not know (skipped)
    errors: int = 0  # items that were not valid JSON or had the wrong shape for their type


def decode_frame(data: bytes | str) -> Decoded:
    """Decode one JSON frame (object or array). Never raises on bad input: it counts it."""
    try:
        out = _FRAME_DECODER.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return _decode_slow(data)
    return Decoded(out if isinstance(out, list) else [out])


def _decode_slow(data: bytes | str) -> Decoded:
    try:
        raws = _RAW_LIST.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        raws = [msgspec.Raw(data.encode() if isinstance(data, str) else data)]
    result = Decoded([])
    unknown: list[str] = []
    for raw in raws:
        try:
            result.events.append(_ONE_DECODER.decode(raw))
            continue
        except msgspec.DecodeError:
            pass
        try:
            kind = _UNTYPED.decode(raw).event_type
        except msgspec.DecodeError:
            result.errors += 1
            continue
        known = kind in _KNOWN_TAGS
        if known or not kind:
            result.errors += 1  # a known type with a wrong shape, or no event_type at all
        else:
            unknown.append(kind)
    result.unknown_types = unknown
    return result


def ms_to_ns(ts: Num) -> int:
    """A Unix-ms timestamp (string or number) as integer nanoseconds; 0 when unreadable."""
    try:
        return int(ts) * 1_000_000
    except (TypeError, ValueError):
        try:
            return int(float(ts) * 1_000_000)
        except (TypeError, ValueError):
            return 0


# ------------------------------------------------------------------------------------------------
# Frames the client sends.


class InitialSubscribe(Struct):
    assets_ids: list[str]
    type: str = "market"
    initial_dump: bool = True
    custom_feature_enabled: bool = False


class Operation(Struct):
    operation: str  # "subscribe" | "unsubscribe"
    assets_ids: list[str]


_ENCODER = msgspec.json.Encoder()


def initial_subscribe_frame(assets: list[str], custom_features: bool = False) -> str:
    return _ENCODER.encode(InitialSubscribe(assets, custom_feature_enabled=custom_features)).decode()


def operation_frame(operation: str, assets: list[str]) -> str:
    return _ENCODER.encode(Operation(operation, assets)).decode()
