"""Block assembly (the Begin -> Update* -> End state machine) and the compact event buffer.

Both pure and synchronous: the socket client feeds them payloads.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass, field

from shared.exex import UPDATE_DECODER, BeginBlock, CorruptFrame, EndBlock, PoolUpdate, decode_payload
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.exex")


U64_MAX = (1 << 64) - 1


def check_framing(msg: BeginBlock | PoolUpdate | EndBlock) -> None:
    """Raise CorruptFrame if the fields that frame blocks are impossible (the payload decoded, but
    no chain has a negative or 400-digit block number, or a 3-byte block hash)."""
    if not 0 <= msg.seq <= U64_MAX:
        raise CorruptFrame(f"{type(msg).__name__} seq {msg.seq} out of uint64")
    if isinstance(msg, PoolUpdate):
        return  # its values are checked where they are applied (counted skips, not stream damage)
    if not 0 <= msg.number <= U64_MAX:
        raise CorruptFrame(f"{type(msg).__name__} number {msg.number} out of uint64")
    if isinstance(msg, EndBlock):
        if not 0 <= msg.num_updates <= U64_MAX:
            raise CorruptFrame(f"EndBlock num_updates {msg.num_updates} out of uint64")
        return
    if not 0 <= msg.timestamp <= U64_MAX:
        raise CorruptFrame(f"BeginBlock {msg.number} timestamp {msg.timestamp} out of uint64")
    if len(msg.hash) != 32 or len(msg.parent_hash) not in (0, 32):
        raise CorruptFrame(
            f"BeginBlock {msg.number}: hash of {len(msg.hash)} bytes, parent hash of {len(msg.parent_hash)}"
        )


class SequenceGap(Exception):
    """The stream's sequence number jumped or went back: messages were lost."""


class BufferOverflow(Exception):
    """More events than the buffer's capacity arrived while buffering: a resync is needed."""


@dataclass(slots=True)
class Block:
    """One complete, validated block from the stream."""

    number: int
    hash: bytes
    parent_hash: bytes
    is_revert: bool
    updates: list[PoolUpdate]
    raws: list[bytes] = field(default_factory=list)  # the updates' payloads, for compact buffering
    timestamp: int = 0  # block time, seconds (0: unknown)


@dataclass(slots=True)
class AssemblerStats:
    frames: int = 0
    blocks: int = 0
    updates: int = 0
    mismatched_blocks: int = 0  # skipped: Begin/Update/End did not match
    orphan_updates: int = 0  # updates outside a block, skipped


class BlockAssembler:
    """Validates the stream's framing of blocks. Corrupt payloads and sequence gaps raise."""

    def __init__(self) -> None:
        self.stats = AssemblerStats()
        self.last_seq: int | None = None
        self.last_error = ""
        self._begin: BeginBlock | None = None
        self._updates: list[PoolUpdate] = []
        self._raws: list[bytes] = []
        self._block_ok = True
        self.skip_log = RateLimitedLog(log)

    def reset(self) -> None:
        """A new connection: sequence numbering starts over, any open block is dropped."""
        self.last_seq = None
        self._begin = None
        self._updates = []
        self._raws = []

    def _mismatch(self, why: str) -> None:
        self.stats.mismatched_blocks += 1
        self.last_error = why
        self.skip_log("block_mismatch", "Begin/End block mismatch, block skipped: %s", why)

    def feed(self, payload: bytes) -> Block | None:
        msg = decode_payload(payload)
        check_framing(msg)
        self.stats.frames += 1
        seq = msg.seq
        if self.last_seq is not None and seq != self.last_seq + 1:
            expected = self.last_seq + 1
            self.last_seq = None
            raise SequenceGap(f"stream sequence {seq} where {expected} was expected")
        self.last_seq = seq
        if isinstance(msg, PoolUpdate):
            begin = self._begin
            if begin is None:
                self.stats.orphan_updates += 1
                self.last_error = f"update for block {msg.block} outside any block"
                self.skip_log("orphan_update", "skipped an %s", self.last_error)
                return None
            if msg.block != begin.number:
                self._block_ok = False
            self._updates.append(msg)
            self._raws.append(payload)
            return None
        if isinstance(msg, BeginBlock):
            if self._begin is not None:
                self._mismatch(f"BeginBlock {msg.number} while block {self._begin.number} was open")
            self._begin = msg
            self._updates = []
            self._raws = []
            self._block_ok = True
            return None
        assert isinstance(msg, EndBlock)
        begin = self._begin
        self._begin = None
        if begin is None:
            self._mismatch(f"EndBlock {msg.number} without BeginBlock")
            return None
        updates, raws = self._updates, self._raws
        self._updates, self._raws = [], []
        if msg.number != begin.number or msg.num_updates != len(updates) or not self._block_ok:
            self._mismatch(
                f"block {begin.number}: EndBlock {msg.number} with num_updates {msg.num_updates}, "
                f"{len(updates)} update(s) received"
            )
            return None
        self.stats.blocks += 1
        self.stats.updates += len(updates)
        return Block(
            begin.number, begin.hash, begin.parent_hash, begin.is_revert, updates, raws, begin.timestamp
        )


@dataclass(slots=True)
class _BufferedBlock:
    number: int
    hash: bytes
    parent_hash: bytes
    first: int  # index of its first event in the buffer
    timestamp: int = 0


class EventBuffer:
    """Blocks of events held while scraping, stored compactly: their msgpack payloads end to end.

    A block that does not extend the last one (a reorg) or a revert drops buffered blocks from
    the top; a reorg reaching below the buffer sets ``reorg_floor`` (pools scraped at or above it
    must be scraped again).
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._data = bytearray()
        self._offsets = array("I")  # start of each payload; the end is the next start
        self._blocks: list[_BufferedBlock] = []
        self.reorg_floor: int | None = None
        self.reverts: list[tuple[int, bytes]] = []  # every explicit revert (number, hash), in order
        self.dropped_blocks = 0

    def __len__(self) -> int:
        return len(self._offsets)

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._offsets.itemsize * len(self._offsets)

    @property
    def first_block(self) -> int | None:
        return self._blocks[0].number if self._blocks else None

    @property
    def last_block(self) -> int | None:
        return self._blocks[-1].number if self._blocks else None

    def timestamps(self) -> dict[int, int]:
        """Block number -> block time of the buffered blocks (read before :meth:`take_blocks`)."""
        return {b.number: b.timestamp for b in self._blocks}

    def _floor(self, number: int) -> None:
        self.reorg_floor = number if self.reorg_floor is None else min(self.reorg_floor, number)

    def _pop(self) -> None:
        top = self._blocks.pop()
        if top.first < len(self._offsets):
            del self._data[self._offsets[top.first] :]
            del self._offsets[top.first :]
        self.dropped_blocks += 1

    def add(self, block: Block) -> None:
        """Buffer a committed block (raises BufferOverflow past the capacity)."""
        blocks = self._blocks
        if blocks and (
            blocks[-1].number >= block.number or (block.parent_hash and blocks[-1].hash != block.parent_hash)
        ):
            while blocks and (
                blocks[-1].number >= block.number
                or (
                    blocks[-1].number == block.number - 1
                    and block.parent_hash
                    and blocks[-1].hash != block.parent_hash
                )
            ):
                self._floor(blocks[-1].number)
                self._pop()
            if not blocks:
                self._floor(block.number - 1)
        if len(self._offsets) + len(block.raws) > self.capacity:
            raise BufferOverflow(
                f"buffer full: {len(self._offsets)} + {len(block.raws)} events > capacity {self.capacity}"
            )
        blocks.append(
            _BufferedBlock(block.number, block.hash, block.parent_hash, len(self._offsets), block.timestamp)
        )
        data, offsets = self._data, self._offsets
        for raw in block.raws:
            offsets.append(len(data))
            data += raw

    def revert(self, number: int, block_hash: bytes) -> None:
        """An explicit revert of block ``number``: drop it (and anything above) if buffered."""
        self.reverts.append((number, block_hash))
        blocks = self._blocks
        while blocks and blocks[-1].number > number:
            self._pop()
        if blocks and blocks[-1].number == number and (not block_hash or blocks[-1].hash == block_hash):
            self._pop()
        else:
            self._floor(number)

    def take_blocks(self) -> list[tuple[int, bytes, bytes, list[PoolUpdate]]]:
        """Every buffered block with its events sorted by (block, tx, log); empties the buffer."""
        data, offsets = self._data, self._offsets
        ends = [*offsets[1:], len(data)]
        view = memoryview(data)
        decode = UPDATE_DECODER.decode
        out: list[tuple[int, bytes, bytes, list[PoolUpdate]]] = []
        blocks = self._blocks
        try:
            for i, blk in enumerate(blocks):
                stop = blocks[i + 1].first if i + 1 < len(blocks) else len(offsets)
                try:
                    events = [decode(view[offsets[j] : ends[j]]) for j in range(blk.first, stop)]
                except Exception as exc:  # stored bytes were validated on the way in
                    raise CorruptFrame(f"buffered block {blk.number}: {exc}") from None
                events.sort(key=PoolUpdate.key)
                out.append((blk.number, blk.hash, blk.parent_hash, events))
        finally:
            view.release()
        self.clear()
        return out

    def take_buffered_events(self) -> list[PoolUpdate]:
        """The seed's API: all buffered events sorted by (block, tx, log); empties the buffer."""
        events = [ev for _, _, _, evs in self.take_blocks() for ev in evs]
        events.sort(key=PoolUpdate.key)
        return events

    def clear(self) -> None:
        self._data = bytearray()
        self._offsets = array("I")
        self._blocks = []
        self.reverts = []
