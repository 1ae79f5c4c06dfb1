"""Pool specs from outside (WhitelistAdd on PULL, ``sync.pools``): each checked on its own.

A WhitelistAdd carries up to 1000 pools; one malformed spec must not cost the others. The PULL
socket's frames are decoded here (:meth:`WhitelistGate.decode`): a WhitelistAdd that the shared
schema refuses whole because one pool breaks a bound (a negative fee, a 70-character address, a
wrong type) is decoded again pool by pool, so its good pools survive and each bad one is refused
(``bad_schema``). Every spec is then checked before anything else sees it (``pool_key`` would raise
on it and take its batch down): the good ones are added, each bad one is refused with a reason,
counted and logged (rate-limited).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Annotated

import msgspec

from services.sync.pool import v4_pool_id
from shared.messages import MAX_IDS, ONE_DECODER, RAW_LIST_DECODER, Message, PoolSpec, WhitelistAdd
from shared.ratelog import RateLimitedLog
from shared.wire import decode_payload

log = logging.getLogger("poolwire.sync.whitelist")

ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
POOL_ID = re.compile(r"0x[0-9a-fA-F]{64}")
MAX_FEE = 1_000_000  # hundredths of a bip: 100 %
V4_DYNAMIC_FEE = 0x800000  # LPFeeLibrary.DYNAMIC_FEE_FLAG
V3_MAX_TICK_SPACING = 16383  # UniswapV3Factory: 0 < tickSpacing < 16384
V4_MAX_TICK_SPACING = 32767  # TickMath.MAX_TICK_SPACING (type(int16).max)

REASONS = (
    "bad_schema",  # a field of the wrong type or outside the shared schema's bounds
    "bad_protocol",
    "bad_address",
    "bad_pool_id",
    "bad_pool_key",
    "bad_token",
    "bad_fee",
    "bad_tick_spacing",
)


class SpecError(ValueError):
    """A pool spec that cannot be followed; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, why: str) -> None:
        super().__init__(why)
        self.reason = reason


def _is_address(value: str) -> bool:
    return ADDRESS.fullmatch(value) is not None


def check_spec(spec: PoolSpec) -> None:
    """Raise :class:`SpecError` if ``spec`` is not a pool sync can follow (shape only: whether the
    pool exists is for the scrape to find out)."""
    protocol = spec.protocol
    if protocol not in ("v2", "v3", "v4"):
        raise SpecError("bad_protocol", f"protocol {protocol!r} is not v2, v3 or v4")
    for name in ("currency0", "currency1"):
        value = getattr(spec, name)
        if value and not _is_address(value):
            raise SpecError("bad_token", f"{name} {value[:70]!r} is not 0x + 40 hex digits")
    if protocol != "v4":
        if not _is_address(spec.address):
            raise SpecError(
                "bad_address", f"{protocol} address {spec.address[:70]!r} is not 0x + 40 hex digits"
            )
        if spec.fee > MAX_FEE:
            raise SpecError("bad_fee", f"fee {spec.fee} above {MAX_FEE} (100 %)")
        if protocol == "v2" and spec.tick_spacing:
            raise SpecError("bad_tick_spacing", f"a v2 pool has no tick spacing (got {spec.tick_spacing})")
        if spec.tick_spacing > V3_MAX_TICK_SPACING:
            raise SpecError(
                "bad_tick_spacing", f"tick spacing {spec.tick_spacing} above {V3_MAX_TICK_SPACING}"
            )
        return
    if spec.fee > MAX_FEE and spec.fee != V4_DYNAMIC_FEE:
        raise SpecError("bad_fee", f"fee {spec.fee} above {MAX_FEE} and not the dynamic-fee flag")
    if not 1 <= spec.tick_spacing <= V4_MAX_TICK_SPACING:
        raise SpecError(
            "bad_tick_spacing", f"v4 tick spacing {spec.tick_spacing} not in 1..{V4_MAX_TICK_SPACING}"
        )
    if spec.pool_id and POOL_ID.fullmatch(spec.pool_id) is None:
        raise SpecError("bad_pool_id", f"v4 pool id {spec.pool_id[:70]!r} is not 0x + 64 hex digits")
    if spec.pool_id and not spec.currency0 and not spec.currency1:
        return  # the id alone names the pool
    if not (spec.currency0 and spec.currency1 and _is_address(spec.hooks)):
        raise SpecError("bad_pool_key", "v4 pool without a pool id needs currency0, currency1 and hooks")
    if int(spec.currency0, 16) >= int(spec.currency1, 16):
        raise SpecError("bad_pool_key", "v4 currency0 must sort below currency1 (PoolManager)")
    key_id = v4_pool_id(spec.currency0, spec.currency1, spec.fee, spec.tick_spacing, spec.hooks)
    if spec.pool_id and int(spec.pool_id, 16) != int.from_bytes(key_id, "big"):
        raise SpecError("bad_pool_key", f"the PoolKey's id is 0x{key_id.hex()}, not the pool id given")


class _PoolsOneByOne(msgspec.Struct, tag_field="type", tag="WhitelistAdd", kw_only=True):
    """A WhitelistAdd with its pools left encoded (the envelope as in ``shared.messages.Message``)."""

    publisher: str = ""
    seq: int = 0
    topic_seq: int = 0
    event_ns: int = 0
    publish_ns: int = 0
    pools: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_IDS)]


_POOLS_ONE_BY_ONE = msgspec.msgpack.Decoder(_PoolsOneByOne)
_SPEC = msgspec.msgpack.Decoder(PoolSpec)


@dataclass
class WhitelistGate:
    """Sorts what arrives on the PULL socket: the good pools of each WhitelistAdd go through."""

    accepted: int = 0
    refused: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    ignored: dict[str, int] = field(default_factory=dict)  # other message types, by type
    missing_dropped: int = 0  # whitelisted pools not on chain, over the cap: forgotten
    skip_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(log))

    def decode(self, payload: bytes) -> tuple[list[Message], int]:
        """One PULL frame -> (messages, how many did not decode): the shared decoder, and for what
        it refuses, a WhitelistAdd read pool by pool (its good pools kept, each bad one refused)."""
        msgs, bad = decode_payload(payload)
        if not bad:
            return msgs, 0
        try:
            items: list[bytes | msgspec.Raw] = list(RAW_LIST_DECODER.decode(payload))  # a batch
        except msgspec.DecodeError:
            items = [payload]
        msgs, bad = [], 0
        for item in items:
            try:
                msgs.append(ONE_DECODER.decode(item))
                continue
            except msgspec.DecodeError:
                pass
            try:
                add = _POOLS_ONE_BY_ONE.decode(item)
            except msgspec.DecodeError:
                bad += 1  # not a WhitelistAdd either: the Puller counts it
                continue
            msgs.append(self._one_by_one(add))
        return msgs, bad

    def _one_by_one(self, add: _PoolsOneByOne) -> WhitelistAdd:
        good: list[PoolSpec] = []
        for i, raw in enumerate(add.pools):
            try:
                good.append(_SPEC.decode(raw))
            except msgspec.DecodeError as exc:
                self.refused["bad_schema"] += 1
                self.skip_log(
                    "bad_schema",
                    "WhitelistAdd from %s: pool %d of %d refused (bad_schema): %s",
                    add.publisher[:64] or "?",
                    i,
                    len(add.pools),
                    exc,
                )
        return WhitelistAdd(
            publisher=add.publisher,
            seq=add.seq,
            topic_seq=add.topic_seq,
            event_ns=add.event_ns,
            publish_ns=add.publish_ns,
            pools=good,
        )

    def take(self, msg: Message) -> list[PoolSpec]:
        """The pools of ``msg`` to add (none if it is not a WhitelistAdd); the rest counted."""
        if not isinstance(msg, WhitelistAdd):
            name = type(msg).__name__
            self.ignored[name] = self.ignored.get(name, 0) + 1
            self.skip_log("wrong_type", "ignored a %s on the PULL socket (expected WhitelistAdd)", name)
            return []
        good: list[PoolSpec] = []
        for i, spec in enumerate(msg.pools):
            try:
                check_spec(spec)
            except SpecError as exc:
                self.refused[exc.reason] += 1
                self.skip_log(
                    exc.reason,
                    "WhitelistAdd from %s: pool %d of %d refused (%s): %s",
                    msg.publisher or "?",
                    i,
                    len(msg.pools),
                    exc.reason,
                    exc,
                )
                continue
            good.append(spec)
        self.accepted += len(good)
        return good
