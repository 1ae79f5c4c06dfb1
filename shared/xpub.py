"""Who reads an XPUB socket: the prefixes its subscribers have, and waiting for a first reader.

An XPUB is a PUB that also delivers its subscribers' (un)subscriptions as messages: ``\\x01`` or
``\\x00`` then the prefix. :class:`SubscriberWatch` reads them as they come, so a sender can wait
for its first reader (no slow-joiner loss) and ask whether anyone reads a topic.
"""

from __future__ import annotations

import asyncio

import zmq

from shared.sockets import NOBLOCK, ReadWaiter

# A send may read the FD signal of a subscription that arrived meanwhile (ZeroMQ processes its
# pending commands then), so the watcher is checked again after a send: at once if the last check
# is this old, else when it will be, once a period at most (a check costs about a send, ~1.5 us).
# At once, not on a timer: a timer wakes an idle loop once more per send (a context switch, tens
# of us on a VM), which for a service sending now and then doubled its wakeups.
RECHECK_AFTER_SEND_S = 0.001


class SubscriberWatch:
    """The subscriptions of one XPUB socket, kept by a task from :meth:`start` to :meth:`close`."""

    def __init__(self, sock: zmq.Socket[bytes], endpoint: str) -> None:
        self._sock = sock
        self._endpoint = endpoint
        self.prefixes: set[str] = set()
        self.joined = asyncio.Event()  # set when a subscription arrives
        self.reader: ReadWaiter | None = None
        self._task: asyncio.Task[None] | None = None
        self._recheck_scheduled = False
        self._next_check = 0.0  # loop time before which a send's check waits for the timer

    def start(self) -> None:
        if self._task is None:
            self.reader = ReadWaiter(self._sock)
            self._task = asyncio.get_running_loop().create_task(self._watch(self.reader))

    async def close(self) -> None:
        """Stop watching (before the socket closes)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        reader, self.reader = self.reader, None
        if reader is not None:
            reader.close()

    def sent(self) -> None:
        """The socket sent: a subscription's signal may have been taken by it (see RECHECK_AFTER_SEND_S)."""
        reader = self.reader
        if reader is None or self._recheck_scheduled:
            return
        loop = reader.loop
        if loop.time() >= self._next_check:
            self._check(reader)
        else:
            self._recheck_scheduled = True
            loop.call_at(self._next_check, self._recheck)

    def _recheck(self) -> None:
        self._recheck_scheduled = False
        if self.reader is not None:
            self._check(self.reader)

    def _check(self, reader: ReadWaiter) -> None:
        self._next_check = reader.loop.time() + RECHECK_AFTER_SEND_S
        reader.poke()

    async def _watch(self, reader: ReadWaiter) -> None:
        sock = self._sock
        while True:
            await reader.wait()
            while True:
                try:
                    frame = sock.recv(NOBLOCK)
                except zmq.Again:
                    break
                if not frame:
                    continue
                prefix = frame[1:].decode(errors="replace")
                if frame[0] == 1:
                    self.prefixes.add(prefix)
                    self.joined.set()
                elif frame[0] == 0:
                    self.prefixes.discard(prefix)

    def has_subscriber(self, topic: str = "") -> bool:
        """Whether some subscriber's prefix filter matches ``topic``."""
        return any(topic.startswith(prefix) for prefix in self.prefixes)

    async def wait(self, topic: str = "", timeout: float = 10.0) -> None:
        """Wait until a subscriber whose filter matches ``topic`` has joined; TimeoutError after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.has_subscriber(topic):
            self.joined.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no subscriber for {topic!r} on {self._endpoint} in {timeout} s")
            try:
                await asyncio.wait_for(self.joined.wait(), remaining)
            except TimeoutError:
                continue
