"""Every message the pipeline exchanges, as msgspec Structs in one tagged union.

On the wire a message is msgpack of a map whose ``"type"`` key names the Struct (its class name)
and whose other keys are its fields. Every message carries the envelope fields of
:class:`Message`, filled by the publisher. Consumers decode with :func:`shared.wire.decode_payload`,
which reads one message or an array of messages (a batch, all on the same topic) and wire v2 frames.

Compatibility rules: a new field must have a default (older decoders ignore unknown keys; newer
decoders fill the default when reading older messages) and goes after the existing ones (wire v2,
:mod:`shared.wire`, sends a message's fields as an array in declaration order). A new message
type is unknown to older decoders, which count and skip it.

Types: prices, sizes and amounts are floats unless exactness matters; on-chain integers wider than
64 bits (uint160 sqrt prices, uint112/uint128 reserves and liquidity) are decimal strings.
Times are integers of nanoseconds since the Unix epoch (``*_ns``).
"""

from __future__ import annotations

import sys
import typing
from typing import Annotated, Any, Final, Literal

import msgspec
from msgspec import Meta, Struct

# -- Bounds on what comes in from outside (commands, snapshot requests, detector events, jobs and
# results): the schema refuses what no valid sender produces, at decode time. What a schema cannot
# say (a time against now, bytes rather than characters) each receiving service checks.
MAX_NAME = 128  # symbols, timeframes, kinds, detector and strategy names, asset ids
MAX_IDS = 1000  # asset ids in one ForceSubscribe, pools in one WhitelistAdd
MAX_TEXT = 4096  # an alert's message, a job's error
Name = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
ShortText = Annotated[str, Meta(max_length=MAX_NAME)]
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
HexId = Annotated[str, Meta(max_length=66)]  # 0x + 64 hex digits at most (a V4 pool id)
PositiveFinite = Annotated[float, Meta(gt=0.0, le=sys.float_info.max)]  # a price: no 0, NaN or inf
NonNegativeFinite = Annotated[float, Meta(ge=0.0, le=sys.float_info.max)]
TimeNs = Annotated[int, Meta(ge=0, le=2**63 - 1)]  # ns since the epoch, as an int64


class Message(Struct, tag_field="type", tag=True, kw_only=True, gc=False):
    """Envelope shared by every message. The publisher fills everything but ``event_ns``.

    ``gc=False`` (inherited): messages are acyclic data, and untracked Structs keep the garbage
    collector from rescanning every message a burst holds alive (+35 % decode throughput).
    """

    publisher: str = ""  # publisher id, e.g. "registry" or "ingest-0"
    seq: int = 0  # per-publisher sequence, 1, 2, 3... across all its topics (Clone snapshots)
    topic_seq: int = 0  # per-(publisher, topic) sequence: a subscriber's gap detector
    event_ns: int = 0  # when the event happened (exchange or chain time when known)
    publish_ns: int = 0  # when the publisher sent it


# ----------------------------------------------------------------------------------------------
# Backbone


class Heartbeat(Message, kw_only=True):
    """Sent on ``<service>.health`` every ``interval_ms`` by every publisher."""

    service: str
    interval_ms: int
    started_ns: int  # the publisher's incarnation: a new value means it restarted
    sent: int = 0  # messages published so far (its last ``seq``)


class SnapshotRequest(Message, kw_only=True):
    """Clone pattern: ask a state owner for its state; ``prefix`` narrows it by topic/key."""

    prefix: Annotated[str, Meta(max_length=256)] = ""


class SnapshotReply(Message, kw_only=True):
    """Header of a snapshot; the items follow as a second frame (an array of messages)."""

    snapshot_seq: int  # valid at this publisher ``seq``: drop updates with seq <= this
    count: int
    error: Text = ""  # why a request was refused (count 0); empty on success
    topics: list[str] = []  # each item's topic, in the items' order


# ----------------------------------------------------------------------------------------------
# ingest: Polymarket market data (md.*) and commands


class BookLevel(Struct, array_like=True):
    """One price level, encoded as ``[price, size]``."""

    price: float
    size: float


class BookSnapshot(Message, kw_only=True):
    """``md.book.<asset>``: the full book after a snapshot or resync. Levels best first."""

    asset: str
    market: str
    bids: list[BookLevel]
    asks: list[BookLevel]
    hash: str = ""
    tick_size: float = 0.0


class BookChange(Message, kw_only=True):
    """``md.change.<asset>``: one level changed (size 0 removes it)."""

    asset: str
    market: str
    side: Literal["buy", "sell"]
    price: float
    size: float
    best_bid: float = 0.0
    best_ask: float = 0.0
    hash: str = ""


class Trade(Message, kw_only=True):
    """``md.trade.<asset>``: a last-trade print; ``side`` is the aggressor's."""

    asset: str
    market: str = ""
    price: float
    size: float
    side: Literal["buy", "sell"]
    fee_rate_bps: float = 0.0


class TickSizeChange(Message, kw_only=True):
    """``md.tick_size.<asset>``."""

    asset: str
    market: str = ""
    old_tick_size: float
    new_tick_size: float


class MarketLifecycle(Message, kw_only=True):
    """``md.market.<asset>``: a market appeared, resolved or expired."""

    asset: str
    market: str = ""
    status: Literal["new", "resolved", "expired", "subscribed", "unsubscribed"]
    winning_asset: str = ""
    question: str = ""


class ForceSubscribe(Message, kw_only=True):
    """Command to ingest (PULL): subscribe these assets now, ahead of the pending queue."""

    asset_ids: Annotated[list[Name], Meta(max_length=MAX_IDS)]
    shard: Annotated[
        int, Meta(ge=-1, le=1023)
    ] = -1  # -1: every ingest shard takes its own share; i >= 0: shard i takes them all


# ----------------------------------------------------------------------------------------------
# Prices: px.<symbol>, from ingest (book mid) and sync (pool price)


class Price(Message, kw_only=True):
    """``px.<symbol>``: the one price stream registry and alerts read."""

    symbol: str  # "pm.<asset>" or "dex.<pool>"
    price: float
    bid: float = 0.0
    ask: float = 0.0
    source: str = ""  # "book", "pool"


# ----------------------------------------------------------------------------------------------
# sync: pool state (dex.*) and commands


class PoolState(Message, kw_only=True):
    """``dex.pool.<id>``: a pool's state, exact at block ``block``: live, the block that changed it;
    in a snapshot, the head block sync had applied. ``event_ns`` is that block's timestamp. Wide
    integers are decimal strings; V2 pools carry their tokens and ``fee`` 3000."""

    pool: str  # address (V2/V3) or pool id (V4), 0x-hex
    protocol: Literal["v2", "v3", "v4"]
    block: int
    block_hash: str = ""
    token0: str = ""
    token1: str = ""
    fee: int = 0  # hundredths of a bip
    tick_spacing: int = 0
    reserve0: str = "0"  # V2
    reserve1: str = "0"  # V2
    sqrt_price_x96: str = "0"  # V3/V4
    tick: int = 0  # V3/V4
    liquidity: str = "0"  # V3/V4, in range
    price: float = 0.0  # token1 per token0, raw units


class BlockUpdate(Message, kw_only=True):
    """``dex.block``: a block applied (committed) or unwound (reverted); ``event_ns`` is the block's
    timestamp. A committed block comes after its ``pools_changed`` PoolStates on the wire, so a
    consumer reading in wire order sees them before the block's mark."""

    number: int
    hash: str
    parent_hash: str = ""
    status: Literal["committed", "reverted"]
    pools_changed: int = 0


class Swap(Message, kw_only=True):
    """``dex.swap.<id>``: a pool swap, for order flow. Amounts are the pool's signed deltas."""

    pool: str
    protocol: Literal["v2", "v3", "v4"]
    block: int
    amount0: str
    amount1: str
    price: float = 0.0


class PoolSpec(Struct, kw_only=True):
    """A pool to follow: V2/V3 by address, V4 by id (with its PoolKey fields)."""

    protocol: Literal["v2", "v3", "v4"]
    address: HexId = ""
    pool_id: HexId = ""
    currency0: HexId = ""
    currency1: HexId = ""
    fee: Annotated[int, Meta(ge=0, le=2**24 - 1)] = 0  # uint24
    tick_spacing: Annotated[int, Meta(ge=0, le=2**23 - 1)] = 0  # int24, positive
    hooks: HexId = "0x0000000000000000000000000000000000000000"


class WhitelistAdd(Message, kw_only=True):
    """Command to sync (PULL): start following these pools while live."""

    pools: Annotated[list[PoolSpec], Meta(max_length=MAX_IDS)]


# ----------------------------------------------------------------------------------------------
# registry: liquidity zones (zone.*) and detector events


ZoneState = Literal["active", "touched", "expired", "grace"]


class Zone(Struct, kw_only=True, gc=False):
    """A liquidity zone (seed 000's LiquidityPool): about 260 B in memory (no GC header)."""

    id: str  # "{tf}_{iso_timestamp}_{hash}", deterministic: the same detection gives the same id
    symbol: str
    timeframe: str
    kind: str  # "fvg_bullish", "fvg_bearish", "bsl", "ssl" or an outside detector's kind
    top: float
    bottom: float
    strength: float
    created_ns: int
    expires_ns: int  # created_ns + the timeframe's ttl
    touches: int = 0
    state: ZoneState = "active"
    ended_ns: int = 0  # when it left the active set (expired, filled or evicted); 0 while active


class DetectorEvent(Message, kw_only=True):
    """Into registry (PULL): an outside detector found a zone."""

    detector: Name
    symbol: Name
    timeframe: Name
    kind: Name
    top: PositiveFinite
    bottom: PositiveFinite
    strength: NonNegativeFinite = 1.0
    created_ns: TimeNs = 0  # default: now; registry refuses a time before 2000 or in the future
    ttl_ns: TimeNs = 0  # 0: the timeframe's configured TTL; at most 7 days


class ZoneCreated(Message, kw_only=True):
    """``zone.created.<tf>.<symbol>``; ``confluence`` lists overlapping zones of other timeframes."""

    zone: Zone
    confluence: list[str] = []


class ZoneTouched(Message, kw_only=True):
    """``zone.touched.<tf>.<symbol>``."""

    zone: Zone
    price: float


class ZoneExpired(Message, kw_only=True):
    """``zone.expired.<tf>.<symbol>``: the zone left the active set and entered grace."""

    zone: Zone
    reason: Literal["ttl", "filled", "evicted"]


class ZoneRemoved(Message, kw_only=True):
    """``zone.removed.<tf>.<symbol>``: grace over, the zone is gone."""

    zone: Zone


ZoneEvent = ZoneCreated | ZoneTouched | ZoneExpired | ZoneRemoved
ZoneEventName = Literal["created", "touched", "expired", "removed"]
# Each zone message's event name: its topic's event part (zone.<event>.<tf>.<symbol>, see
# constants.zone_topic) and AlertZoneEvent.event. The one place these names are spelled.
ZONE_EVENT_NAMES: Final[dict[type[Message], ZoneEventName]] = {
    ZoneCreated: "created",
    ZoneTouched: "touched",
    ZoneExpired: "expired",
    ZoneRemoved: "removed",
}


class ZoneSnapshotItem(Message, kw_only=True):
    """One active zone in a registry snapshot reply (Clone pattern)."""

    zone: Zone


# ----------------------------------------------------------------------------------------------
# alerts: jobs, results, alerts


class OrderFlowMetrics(Struct, kw_only=True, gc=False):
    """Order-flow figures of one symbol over a window (alerts' engine, fed by trades and swaps)."""

    symbol: str
    window_s: float
    trades: int = 0
    buy_volume: float = 0.0
    sell_volume: float = 0.0
    delta: float = 0.0  # aggressor buy volume - sell volume in the window
    cvd: float = 0.0  # cumulative volume delta since the engine started
    cvd_change: float = 0.0  # CVD now minus CVD at the window's start
    imbalance: float = 0.0  # delta / (buy + sell), in [-1, 1]
    trades_per_s: float = 0.0
    computed_ns: int = 0


class AlertZoneEvent(Struct, kw_only=True, gc=False):
    """A zone event seen for a ticker during the bar (from registry's ``zone.*``)."""

    event: str  # "created", "touched", "expired", "removed"
    zone_id: str
    timeframe: str
    kind: str
    top: float
    bottom: float
    price: float = 0.0
    event_ns: int = 0


class TickerInput(Struct, kw_only=True):
    """What a strategy job knows of one ticker: the bar that closed, zone events, order flow."""

    open: float = 0.0
    high: float = 0.0
    low: float = 0.0
    close: float = 0.0
    prev_close: float = 0.0  # close of the previous bar (0.0: none yet)
    updated_ns: int = 0
    zones: list[AlertZoneEvent] = []
    flow: OrderFlowMetrics | None = None


class StrategyJob(Message, kw_only=True):
    """Ventilator -> worker (PUSH): run one strategy over the tickers that changed."""

    job_id: str
    strategy: str
    kind: str
    bucket_ns: int
    tickers: list[str]
    params: dict[str, Any] = {}
    attempt: int = 1
    function: str = ""  # kind "python": the user's ``module:function``
    inputs: dict[str, TickerInput] = {}
    timeout_ms: int = 0  # the worker interrupts the strategy after this long (0: worker default)


class AlertFired(Message, kw_only=True):
    """``alert.<strategy>.<symbol>``."""

    strategy: ShortText
    symbol: ShortText
    message: Text
    value: float = 0.0
    bucket_ns: int = 0


class JobResult(Message, kw_only=True):
    """Worker -> sink (PUSH): what a job found."""

    job_id: ShortText
    strategy: ShortText
    worker: ShortText
    ok: bool
    alerts: list[AlertFired] = []
    used_symbols: list[ShortText] = []
    error: Text = ""
    duration_ns: int = 0


# ----------------------------------------------------------------------------------------------
# The union and its codecs.


def _tagged_subclasses(base: type[Message]) -> list[type[Message]]:
    found: list[type[Message]] = []
    for sub in base.__subclasses__():
        found.append(sub)
        found.extend(_tagged_subclasses(sub))
    return found


MESSAGE_TYPES: tuple[type[Message], ...] = tuple(_tagged_subclasses(Message))
BY_TAG: dict[str, type[Message]] = {t.__name__: t for t in MESSAGE_TYPES}

AnyMessage: Any = typing.Union[MESSAGE_TYPES]  # noqa: UP007 - built at runtime from the classes

ENCODER = msgspec.msgpack.Encoder()
DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    typing.Union[AnyMessage, list[AnyMessage]]  # noqa: UP007
)
ONE_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyMessage)
RAW_LIST_DECODER = msgspec.msgpack.Decoder(list[msgspec.Raw])
JSON_DECODER: msgspec.json.Decoder[Any] = msgspec.json.Decoder(AnyMessage)


def encode(msg: Message | list[Message]) -> bytes:
    return ENCODER.encode(msg)


def decode_v1_payload(payload: bytes) -> tuple[list[Message], int]:
    """Decode one version-1 payload into its messages; returns (messages, how many were bad).

    A batch with one bad item keeps the good ones: the fallback decodes items one by one. Readers
    of the bus use :func:`shared.wire.decode_payload`, which reads both wire versions.
    """
    try:
        out = DECODER.decode(payload)
    except msgspec.DecodeError:
        pass
    else:
        return (out, 0) if isinstance(out, list) else ([out], 0)
    try:
        raws = RAW_LIST_DECODER.decode(payload)
    except msgspec.DecodeError:
        return [], 1
    good: list[Message] = []
    bad = 0
    for raw in raws:
        try:
            good.append(ONE_DECODER.decode(raw))
        except msgspec.DecodeError:
            bad += 1
    return good, bad


def to_json_dict(msg: Message, topic: str) -> dict[str, Any]:
    """A message as a plain dict with its type and topic first (``poolwire tap`` output)."""
    body = msgspec.to_builtins(msg)
    return {"type": type(msg).__name__, "topic": topic, **body}
