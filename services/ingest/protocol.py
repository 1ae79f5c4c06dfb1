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


class _LenientPriceChange(Struct):
    """A ``price_change`` whose entries are decoded one by one: a bad entry spares its neighbours."""

    market: str = ""
    timestamp: Num = "0"
    price_changes: list[msgspec.Raw] = []


_LENIENT_PC: msgspec.json.Decoder[_LenientPriceChange] = msgspec.json.Decoder(_LenientPriceChange)
_ENTRY: msgspec.json.Decoder[PriceChangeEntry] = msgspec.json.Decoder(PriceChangeEntry)
# msgspec raises RecursionError on deeply nested input ("[[[[..."): bad input like any other
_BAD_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)


def decode_frame(data: bytes | str) -> Decoded:
    """Decode one JSON frame (object or array). Never raises on bad input: it counts it.

    An empty array counts as one error (the server never sends one)."""
    try:
        out = _FRAME_DECODER.decode(data)
    except _BAD_JSON:
        return _decode_slow(data)
    if isinstance(out, list):
        return Decoded(out) if out else Decoded([], errors=1)
    return Decoded([out])


def _decode_slow(data: bytes | str) -> Decoded:
    try:
        raws = _RAW_LIST.decode(data)
    except _BAD_JSON:
        raws = [msgspec.Raw(data.encode() if isinstance(data, str) else data)]
    result = Decoded([])
    if not raws:
        result.errors = 1
    unknown: list[str] = []
    for raw in raws:
        try:
            result.events.append(_ONE_DECODER.decode(raw))
            continue
        except _BAD_JSON:
            pass
        try:
            kind = _UNTYPED.decode(raw).event_type
        except _BAD_JSON:
            result.errors += 1
            continue
        if kind == "price_change":
            result.errors += _salvage_price_change(raw, result.events)
        elif kind in _KNOWN_TAGS or not kind:
            result.errors += 1  # a known type with a wrong shape, or no event_type at all
        else:
            unknown.append(kind)
    result.unknown_types = unknown
    return result


def _salvage_price_change(raw: msgspec.Raw, events: list[Any]) -> int:
    """Keep the good entries of a ``price_change`` that did not decode whole; returns the errors."""
    try:
        lenient = _LENIENT_PC.decode(raw)
    except _BAD_JSON:
        return 1
    entries: list[PriceChangeEntry] = []
    errors = 0
    for item in lenient.price_changes:
        try:
            entries.append(_ENTRY.decode(item))
        except _BAD_JSON:
            errors += 1
    if entries:
        events.append(PriceChangeEvent(lenient.market, lenient.timestamp, entries))
    return errors or 1  # no bad entry: the event's other fields were bad (its entries still kept)


MAX_NS = 2**63 - 1  # messages carry int64 times


def ms_to_ns(ts: Num) -> int:
    """A Unix-ms timestamp (string or number) as integer nanoseconds; -1 when unreadable or out of
    the int64 range of a message's time (the caller counts it as a bad value)."""
    try:
        ns = int(ts) * 1_000_000
    except (TypeError, ValueError, OverflowError):
        try:
            ns = int(float(ts) * 1_000_000)
        except (TypeError, ValueError, OverflowError):
            return -1
    return ns if 0 <= ns <= MAX_NS else -1


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
