"""The ExEx socket protocol: a block stream from a Reth ExEx (or the simulator) to sync.

Not on the ZeroMQ bus: a byte stream over a Unix socket. Each frame is a 4-byte little-endian
length followed by that many bytes of msgpack. A payload is an *array*: the message type name,
then the fields in the order declared below; trailing fields equal to their default may be left
out. Every message carries ``seq``, the stream's sequence number (1, 2, 3... per connection).

A block is ``BeginBlock``, zero or more ``PoolUpdate`` and ``EndBlock`` (same number,
``num_updates`` = the count of updates sent). ``is_revert`` marks a block being unwound: its
updates, if any, are ignored (the reader keeps an undo journal). Hashes and pool ids are msgpack
``bin`` (32 bytes; V2/V3 pool addresses 20 bytes, V4 pool ids 32 bytes).

Wide integers (amounts, sqrt prices, liquidity, reserves) are msgpack integers when they fit in
64 bits, otherwise decimal strings (``"-123456789012345678901234"``); readers accept both.

In Rust (rmp-serde), serialize a tuple, e.g. for a V3 swap::

    ("PoolUpdate", seq, block, tx, log, serde_bytes::Bytes::new(&pool), "v3", "Swap",
     amount0.to_string(), amount1.to_string(), sqrt_price.to_string(), liquidity.to_string(), tick)

and write ``(len as u32).to_le_bytes()`` before it.
"""

from __future__ import annotations

import struct
import typing
from collections.abc import Iterator
from typing import Any, Literal

import msgspec

MAX_FRAME = 1 << 20  # a frame longer than this is corrupt
_LEN = struct.Struct("<I")

Protocol = Literal["v2", "v3", "v4"]
# V2: Sync (absolute reserves), Swap, Mint, Burn. V3: Initialize, Swap, Mint, Burn.
# V4: Initialize, Swap, ModifyLiquidity.
EventKind = Literal["Sync", "Swap", "Mint", "Burn", "Initialize", "ModifyLiquidity"]


class ExExMessage(msgspec.Struct, array_like=True, tag=True, omit_defaults=True, gc=False):
    """Base of the three frames (tag = class name, first element of the array)."""


class BeginBlock(ExExMessage, kw_only=True):
    seq: int
    number: int
    hash: bytes
    parent_hash: bytes = b""
    is_revert: bool = False
    timestamp: int = 0  # block time, seconds


class PoolUpdate(ExExMessage, kw_only=True):
    """One pool log, normalized. Which fields are set depends on ``protocol`` and ``kind``:

    - V2 ``Sync``: reserve0, reserve1 (absolute). V2 ``Swap``: amount0/amount1 = the pool's net
      deltas (in - out). V2 ``Mint``/``Burn``: amount0, amount1 (informational; Sync carries state).
    - V3/V4 ``Initialize``: sqrt_price_x96, tick (V4 also fee, tick_spacing).
    - V3/V4 ``Swap``: amount0, amount1 as the event has them (V4's sign is the swapper's, the
      opposite of V3's), sqrt_price_x96, liquidity, tick (V4 also fee).
    - V3 ``Mint``/``Burn``, V4 ``ModifyLiquidity``: tick_lower, tick_upper, liquidity_delta
      = the signed change of the position's liquidity (a Burn's is <= 0), amount0, amount1.
    """

    seq: int
    block: int
    tx: int
    log: int
    pool: bytes
    protocol: Protocol
    kind: EventKind
    amount0: int = 0
    amount1: int = 0
    sqrt_price_x96: int = 0
    liquidity: int = 0
    tick: int = 0
    tick_lower: int = 0
    tick_upper: int = 0
    liquidity_delta: int = 0
    reserve0: int = 0
    reserve1: int = 0
    fee: int = 0
    tick_spacing: int = 0

    def key(self) -> tuple[int, int, int]:
        return (self.block, self.tx, self.log)


class EndBlock(ExExMessage, kw_only=True):
    seq: int
    number: int
    num_updates: int


AnyExEx = BeginBlock | PoolUpdate | EndBlock

# strict=False: wide integers may arrive as decimal strings.
DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(
    typing.Union[BeginBlock, PoolUpdate, EndBlock],  # noqa: UP007
    strict=False,
)
UPDATE_DECODER: msgspec.msgpack.Decoder[PoolUpdate] = msgspec.msgpack.Decoder(PoolUpdate, strict=False)
_ENCODER = msgspec.msgpack.Encoder()

_WIDE_FROM = PoolUpdate.__struct_fields__.index("amount0")
_INT64_MIN = -(1 << 63)
_UINT64_MAX = (1 << 64) - 1


class CorruptFrame(ValueError):
    """A frame that cannot be a message: bad length or undecodable payload."""


def _wide(value: int) -> int | str:
    return value if _INT64_MIN <= value <= _UINT64_MAX else str(value)


def encode_payload(msg: AnyExEx) -> bytes:
    """msgpack of one message in the array layout, wide integers as decimal strings."""
    if not isinstance(msg, PoolUpdate):
        return _ENCODER.encode(msg)
    values: list[Any] = ["PoolUpdate"]
    for i, name in enumerate(PoolUpdate.__struct_fields__):
        value = getattr(msg, name)
        values.append(_wide(value) if i >= _WIDE_FROM else value)
    while len(values) > _WIDE_FROM + 1 and values[-1] == 0:
        values.pop()
    return _ENCODER.encode(values)


def encode_frame(msg: AnyExEx) -> bytes:
    payload = encode_payload(msg)
    return _LEN.pack(len(payload)) + payload


def decode_payload(payload: bytes | memoryview) -> AnyExEx:
    try:
        return typing.cast(AnyExEx, DECODER.decode(payload))
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise CorruptFrame(f"undecodable ExEx payload of {len(payload)} bytes: {exc}") from None


class FrameReader:
    """Splits a byte stream into payloads; raises :class:`CorruptFrame` on an impossible length."""

    __slots__ = ("_buf", "_pos", "max_frame")

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_frame = max_frame

    def feed(self, data: bytes) -> Iterator[bytes]:
        """Append bytes; yield every complete payload now available."""
        buf = self._buf
        buf += data
        pos = self._pos
        end = len(buf)
        unpack = _LEN.unpack_from
        try:
            while end - pos >= 4:
                (length,) = unpack(buf, pos)
                if length == 0 or length > self.max_frame:
                    raise CorruptFrame(f"frame length {length} out of (0, {self.max_frame}]")
                if end - pos - 4 < length:
                    break
                yield bytes(buf[pos + 4 : pos + 4 + length])
                pos += 4 + length
        finally:
            if pos:
                del buf[:pos]
            self._pos = 0

    @property
    def pending(self) -> int:
        return len(self._buf)

    def reset(self) -> None:
        self._buf.clear()
        self._pos = 0


# ----------------------------------------------------------------------------------------------
# Scrape API of the simulator's ExEx server: a stand-in for the JSON-RPC scraper (issue 6).
# Same framing on its own Unix socket: one ScrapeRequest, one ScrapeReply. Wide integers are
# decimal strings here.


class ScrapeRequest(ExExMessage, kw_only=True):
    seq: int = 0
    pools: list[bytes]


class ScrapedPoolState(msgspec.Struct, array_like=True, omit_defaults=True, gc=False, kw_only=True):
    pool: bytes
    protocol: Protocol
    found: bool = True
    reserve0: str = "0"
    reserve1: str = "0"
    sqrt_price_x96: str = "0"
    tick: int = 0
    liquidity: str = "0"
    fee: int = 0
    tick_spacing: int = 0
    ticks: list[tuple[int, str, str]] = []  # (tick, liquidity_gross, liquidity_net)
    token0: str = ""  # 0x-hex address (V4: currency0); "" when the scraper does not know it
    token1: str = ""


class ScrapeReply(ExExMessage, kw_only=True):
    seq: int = 0
    block: int
    hash: bytes
    pools: list[ScrapedPoolState]


SCRAPE_REQUEST_DECODER = msgspec.msgpack.Decoder(ScrapeRequest)
SCRAPE_REPLY_DECODER = msgspec.msgpack.Decoder(ScrapeReply)


def encode_scrape(msg: ScrapeRequest | ScrapeReply) -> bytes:
    payload = _ENCODER.encode(msg)
    return _LEN.pack(len(payload)) + payload
