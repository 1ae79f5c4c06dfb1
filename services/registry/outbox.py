"""Zone events wait here for the store write that persists them, then go out in their order.

A consumer must never see a zone that a registry killed right after would forget, so events are
published only once their changes are committed. Group commit, triggered by the first change, not
by a timer:

- nothing being written: the changes are written now and the events published right after. A
  small write (a touch or a few zones: up to ``inline_bytes``) is committed here on the loop
  (~0.1 ms, WAL without fsync): handing it to a thread cost more, up to the 5 ms GIL switch
  interval for the thread to start while the loop runs Python, and as much again to publish after;
- a larger write goes to the store's thread (sqlite3 lets go of the GIL while SQLite works, and
  the loop handles the next input meanwhile);
- while a write is on the thread, later events wait with their changes in the store and go as one
  write when it is done: one write in flight at a time, so batches grow with the load by
  themselves and a burst costs a few commits, not one per loop turn.

Events whose changes are in no write (nothing pending, or the store waiting to retry after a
failure) go out behind those before them. A failed write gives its changes back to the store (the
events go out all the same: the service keeps publishing while its store fails). Checkpoints (the
WAL copied into the database file, with an fsync) run on a thread of their own, beside the writes,
at least once a second; once the WAL is past its limit (they never found it without a newer
commit), the next write goes to the store's thread and copies the rest first (store.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from services.registry.store import Batch, ZoneStore
from services.registry.turns import Turns
from shared.messages import Message

Publish = Callable[[list[Message], int], None]  # (events, the oldest cause's publish_ns or 0)
INLINE_BYTES = 2 << 10  # a write this small is committed on the loop (a touch or a few zones)
MAX_WAITING = 10_000  # events waiting behind a write before the input is held


@dataclass(slots=True)
class _Write:
    written: Future[None]
    batch: Batch
    events: list[Message]
    oldest_ns: int


class Outbox:
    def __init__(
        self,
        store: ZoneStore,
        publish: Publish,
        *,
        inline_bytes: int = INLINE_BYTES,
        max_waiting: int = MAX_WAITING,
        turns: Turns | None = None,
    ) -> None:
        """``inline_bytes``: the largest write committed on the loop (0: every write on the thread);
        ``max_waiting``: how many events may wait behind a write before :meth:`wait_room` holds
        the input."""
        self.store = store
        self._publish = publish
        self.inline_bytes = inline_bytes
        self.max_waiting = max_waiting
        self.turns = turns
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="registry-store")
        self._checkpointer = ThreadPoolExecutor(1, thread_name_prefix="registry-store-checkpoint")
        self._checkpoint: Future[None] | None = None
        self._writing: _Write | None = None  # on the store's thread
        self._waiting: list[Message] = []  # events whose changes go with the next write
        self._waiting_oldest = 0
        self._started = asyncio.Event()  # a write went to the thread
        self._room = asyncio.Event()  # the write on the thread is done

    def send(self, events: list[Message], oldest_ns: int = 0) -> None:
        """Write what the store has pending, then publish ``events`` (now, if nothing waits)."""
        if self._writing is None:
            self._start(events, oldest_ns)
            return
        self._waiting.extend(events)
        if oldest_ns and not self._waiting_oldest:
            self._waiting_oldest = oldest_ns

    @property
    def in_flight(self) -> int:
        """Writes not yet done (0 or 1)."""
        return int(self._writing is not None)

    @property
    def waiting(self) -> int:
        """Events waiting behind the write in flight."""
        return len(self._waiting)

    def _start(self, events: list[Message], oldest_ns: int) -> None:
        store = self.store
        batch = store.take()
        if batch is None:
            if events:
                self._publish(events, oldest_ns)
            return
        if batch.size <= self.inline_bytes and not store.catch_up_due:
            store.write(batch)
            store.settle(batch)
            if events:
                self._publish(events, oldest_ns)
            self._maybe_checkpoint()
            return
        written = self._writer.submit(store.write, batch, catch_up=True)
        self._writing = _Write(written, batch, events, oldest_ns)
        self._room.clear()
        self._started.set()

    def _finish(self, out: _Write) -> None:
        """The write on the thread is done: its events out, then the next write (what waited)."""
        self._writing = None
        self.store.settle(out.batch)
        if out.events:
            self._publish(out.events, out.oldest_ns)
        self._maybe_checkpoint()
        events, oldest = self._waiting, self._waiting_oldest
        self._waiting, self._waiting_oldest = [], 0
        self._start(events, oldest)
        if self._writing is None:
            self._room.set()

    def _maybe_checkpoint(self) -> None:
        store = self.store
        if store.checkpoint_due and (self._checkpoint is None or self._checkpoint.done()):
            store.bytes_since_checkpoint = 0
            store.checkpointed_at = store.clock()
            self._checkpoint = self._checkpointer.submit(store.checkpoint)

    async def run(self) -> None:
        """Publish each write's events once it is done, and start the next (a task of the service)."""
        while True:
            out = self._writing
            if out is None:
                self._started.clear()
                await self._started.wait()
                continue
            if not out.written.done():
                await asyncio.wait([asyncio.wrap_future(out.written)])
            if self._writing is out:  # settle_now may have taken it meanwhile
                t0 = self.turns.start() if self.turns is not None else 0.0
                self._finish(out)
                if self.turns is not None:
                    self.turns.done(
                        "outbox", t0, "%d events out, next write %d", len(out.events), self.in_flight
                    )

    async def wait_room(self) -> None:
        """Hold the caller while more than ``max_waiting`` events wait behind a write."""
        while self._writing is not None and len(self._waiting) > self.max_waiting:
            await self._room.wait()

    def settle_now(self) -> None:
        """Wait for the write in flight (blocking the loop), write what waits behind it here, and
        publish their events: before a snapshot (it must not hold zones no event announced yet)
        and at shutdown."""
        out = self._writing
        if out is not None:
            out.written.result()
            self._writing = None
            self.store.settle(out.batch)
            if out.events:
                self._publish(out.events, out.oldest_ns)
            self._room.set()
        if self._waiting:
            events, oldest = self._waiting, self._waiting_oldest
            self._waiting, self._waiting_oldest = [], 0
            batch = self.store.take()
            if batch is not None:
                self.store.write(batch)
                self.store.settle(batch)
            self._publish(events, oldest)

    def close(self) -> None:
        self.settle_now()
        self._writer.shutdown(wait=True)
        self._checkpointer.shutdown(wait=True)
