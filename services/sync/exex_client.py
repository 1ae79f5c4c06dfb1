"""The ExEx socket client: connect with backoff, buffer or deliver blocks.

A :class:`BlockSource` (source.py: buffering and live modes). Stream damage is never silent:

| what                         | what happens                                                    |
|------------------------------|-----------------------------------------------------------------|
| socket unavailable           | retry with ``shared.backoff.Backoff``, capped at ``backoff_max`` |
| connection lost              | reconnect; the next block's number and parent hash tell whether |
|                              | anything was missed (the processor asks for a resync if so)     |
| Begin/Update/End mismatch    | that block is skipped and counted (the gap then forces a resync)|
| corrupt frame, sequence gap  | counted, disconnect, reconnect, resync                          |
| buffer overflow              | explicit error: buffering stops, ``buffer_error`` set -> resync |
"""

from __future__ import annotations

import asyncio
import logging

from services.sync.buffer import SequenceGap
from services.sync.source import BlockSource
from shared.clock import Clock
from shared.exex import MAX_FRAME, FrameReader
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.exex")


class ExExClient(BlockSource):
    """Blocks from a Reth ExEx (or the simulator) over the Unix socket protocol of shared/exex.py."""

    def __init__(
        self,
        path: str,
        *,
        capacity: int = 100_000,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        max_frame: int = MAX_FRAME,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            capacity=capacity, backoff_initial=backoff_initial, backoff_max=backoff_max, clock=clock
        )
        self.path = path
        self.frames = FrameReader(max_frame)
        self.damage_log = RateLimitedLog(log)
        self._writer: asyncio.StreamWriter | None = None

    # -- the connection -------------------------------------------------------------------------

    async def close(self) -> None:
        await super().close()
        self._close_writer()

    def _close_writer(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.connected.clear()

    async def _connect(self) -> asyncio.StreamReader:
        backoff = self.backoff()
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(self.path)
            except (FileNotFoundError, ConnectionRefusedError, OSError) as exc:
                self.stats.connect_failures += 1
                delay = backoff.next_delay()
                if self.stats.connect_failures in (1, 10) or self.stats.connect_failures % 100 == 0:
                    log.warning("ExEx socket %s unavailable (%s): retrying in %.2f s", self.path, exc, delay)
                await self.clock.sleep(delay)
                continue
            self._writer = writer
            self.stats.connects += 1
            self.assembler.reset()
            self.frames.reset()
            self.connected.set()
            log.info("connected to ExEx socket %s (%s mode)", self.path, self.mode)
            return reader

    async def _run(self) -> None:
        damage = self.backoff()  # stream damage in a row: a server that keeps sending garbage is backed off
        pause = 0.0
        while True:
            if pause:
                await self.clock.sleep(pause)
                pause = 0.0
            reader = await self._connect()
            try:
                while data := await reader.read(1 << 16):
                    for payload in self.frames.feed(data):
                        block = self.assembler.feed(payload)
                        if block is not None:
                            damage.reset()
                            self._on_block(block)
                self.stats.disconnects += 1
                log.warning("ExEx socket closed by the server: reconnecting")
            except (ConnectionError, OSError) as exc:
                self.stats.disconnects += 1
                log.warning("ExEx socket error %r: reconnecting", exc)
            except Exception as exc:  # CorruptFrame, SequenceGap, or anything a bad frame provoked
                if isinstance(exc, SequenceGap):
                    self.stats.sequence_gaps += 1
                else:
                    self.stats.corrupt_frames += 1
                pause = damage.next_delay()
                self.damage_log(
                    type(exc).__name__, "ExEx stream damaged (%s): reconnecting and resyncing", exc
                )
                self._request_resync(str(exc))
            finally:
                self._close_writer()
                self.damage_log.flush()
