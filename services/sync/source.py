"""What blocks come from: :class:`BlockSource`, the base of the ExEx socket client
(exex_client.py) and the JSON-RPC log follower (follower.py).

Buffering mode (during a scrape) keeps blocks in a compact :class:`EventBuffer`; live mode puts
each :class:`Block` on ``blocks``, and a :class:`Resync` when the stream can no longer be trusted.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from services.sync.buffer import Block, BlockAssembler, BufferOverflow, EventBuffer
from shared.backoff import Backoff, sleep_or_wake
from shared.clock import Clock, RealClock
from shared.exex import PoolUpdate

log = logging.getLogger("poolwire.sync.source")

Mode = Literal["buffering", "live"]


@dataclass(slots=True)
class ClientStats:
    connects: int = 0
    connect_failures: int = 0
    disconnects: int = 0
    corrupt_frames: int = 0
    sequence_gaps: int = 0
    buffer_overflows: int = 0
    resyncs_requested: int = 0
    blocks_received: int = 0
    reverts_received: int = 0


@dataclass(slots=True)
class Resync:
    """Put on ``blocks`` in live mode when the stream can no longer be trusted."""

    reason: str


class BlockSource:
    """What the coordinator and the service read blocks from: buffering / live modes, the buffer,
    the ``blocks`` queue. Subclasses (the ExEx socket client, the JSON-RPC log follower) feed it
    complete blocks through :meth:`_on_block` and call :meth:`_request_resync` when the stream
    can no longer be trusted."""

    def __init__(
        self,
        *,
        capacity: int = 100_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.clock: Clock = clock or RealClock()
        self.stats = ClientStats()
        self.assembler = BlockAssembler()
        self.buffer = EventBuffer(capacity)
        self.mode: Mode = "buffering"
        self.buffer_error: str | None = None
        self.blocks: asyncio.Queue[Block | Resync] = asyncio.Queue()
        self.connected = asyncio.Event()
        self.last_block = -1  # highest block number seen since buffering started
        self._block_seen = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- modes ----------------------------------------------------------------------------------

    def start_buffering(self, capacity: int | None = None) -> None:
        """Buffer from now on, into an empty buffer (a cold start or a resync)."""
        if capacity is not None:
            self.buffer = EventBuffer(capacity)
        else:
            self.buffer.clear()
            self.buffer.reorg_floor = None
        self.buffer_error = None
        self.last_block = -1
        self.mode = "buffering"

    def take_buffered_blocks(self) -> list[tuple[int, bytes, bytes, list[PoolUpdate]]]:
        return self.buffer.take_blocks()

    def take_buffered_events(self) -> list[PoolUpdate]:
        """All buffered events, sorted by (block, tx, log)."""
        return self.buffer.take_buffered_events()

    def go_live(self) -> None:
        """Deliver blocks on ``blocks`` from now on (call right after taking the buffer)."""
        self.mode = "live"

    def backoff(self) -> Backoff:
        """A new backoff with this source's settings, on its clock."""
        return Backoff(self.backoff_initial, self.backoff_max, clock=self.clock)

    async def wait_for_block(self, number: int, timeout: float) -> bool:
        """Wait until a block numbered >= ``number`` arrived; False after ``timeout`` on the clock."""
        deadline = self.clock.monotonic() + timeout
        while self.last_block < number:
            self._block_seen.clear()
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0 or not await sleep_or_wake(self.clock, remaining, self._block_seen):
                return self.last_block >= number
        return True

    def start(self) -> BlockSource:
        self._task = asyncio.get_running_loop().create_task(self._run(), name=type(self).__name__)
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        raise NotImplementedError

    def _request_resync(self, reason: str) -> None:
        self.stats.resyncs_requested += 1
        if self.mode == "live":
            self.blocks.put_nowait(Resync(reason))
        elif self.buffer_error is None:
            self.buffer_error = reason

    def _on_block(self, block: Block) -> None:
        self.stats.blocks_received += 1
        if block.is_revert:
            self.stats.reverts_received += 1
        if block.number > self.last_block:
            self.last_block = block.number
        self._block_seen.set()
        if self.mode == "live":
            block.raws = []
            self.blocks.put_nowait(block)
            return
        if self.buffer_error is not None:
            return  # this buffering round is already void; the coordinator will resync
        try:
            if block.is_revert:
                self.buffer.revert(block.number, block.hash)
            else:
                self.buffer.add(block)
        except BufferOverflow as exc:
            self.stats.buffer_overflows += 1
            log.error("%s: resync needed (raise buffer_capacity?)", exc)
            self.buffer.clear()
            self.buffer_error = str(exc)
