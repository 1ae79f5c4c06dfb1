"""Zone events wait here for the store write that persists them, then go out in their order.

A consumer must never see a zone that a registry killed right after would forget, so events are
published only once their changes are committed. The commit runs on a thread of its own (sqlite3
lets go of the GIL while SQLite works): on the event loop it cost ~20 % of the registry under a
replay burst, and the loop handles the next input while the store writes. Batches are written one
at a time, in order; events whose changes are in no batch (nothing pending, or the store waiting
to retry after a failure) go out behind the ones queued before them. A failed write gives its
changes back to the store (the events go out all the same: the service keeps publishing while its
store fails, as before).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from services.registry.store import Batch, ZoneStore
from shared.messages import Message

Publish = Callable[[list[Message], int], None]  # (events, the oldest cause's publish_ns or 0)


@dataclass(slots=True)
class _Outgoing:
    written: Future[None] | None
    batch: Batch | None
    events: list[Message]
    oldest_ns: int


class Outbox:
    def __init__(self, store: ZoneStore, publish: Publish, *, max_in_flight: int = 4) -> None:
        """``max_in_flight``: how many writes may queue before :meth:`wait_room` holds the input."""
        self.store = store
        self._publish = publish
        self.max_in_flight = max_in_flight
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="registry-store")
        self._queue: deque[_Outgoing] = deque()
        self._ready = asyncio.Event()

    def send(self, events: list[Message], oldest_ns: int = 0) -> None:
        """Write what the store has pending, then publish ``events`` (now, if nothing waits)."""
        batch = self.store.take()
        if batch is None and not self._queue:
            if events:
                self._publish(events, oldest_ns)
            return
        written = self._writer.submit(self.store.write, batch) if batch is not None else None
        self._queue.append(_Outgoing(written, batch, events, oldest_ns))
        self._ready.set()

    @property
    def in_flight(self) -> int:
        return len(self._queue)

    def _settle_head(self) -> None:
        out = self._queue.popleft()
        if out.batch is not None:
            self.store.settle(out.batch)
        if out.events:
            self._publish(out.events, out.oldest_ns)

    async def run(self) -> None:
        """Publish each queued send once its write is done (a task of the service)."""
        while True:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            head = self._queue[0]
            if head.written is not None and not head.written.done():
                await asyncio.wait([asyncio.wrap_future(head.written)])
            if self._queue and self._queue[0] is head:  # settle_now may have taken it meanwhile
                self._settle_head()

    async def wait_room(self) -> None:
        """Hold the caller while more than ``max_in_flight`` writes queue (the store is slower)."""
        while len(self._queue) > self.max_in_flight:
            head = self._queue[0].written
            if head is not None and not head.done():
                await asyncio.wait([asyncio.wrap_future(head)])
            else:
                await asyncio.sleep(0)

    def settle_now(self) -> None:
        """Wait for the writes queued (blocking the loop) and publish their events: before a
        snapshot (it must not hold zones no event announced yet) and at shutdown."""
        while self._queue:
            head = self._queue[0]
            if head.written is not None:
                head.written.result()
            self._settle_head()

    def close(self) -> None:
        self.settle_now()
        self._writer.shutdown(wait=True)
