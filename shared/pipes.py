"""PUSH/PULL: work and commands, one frame per message (the payload alone)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import zmq
import zmq.asyncio

from shared import security
from shared.messages import ENCODER, Message
from shared.ratelog import RateLimitedLog
from shared.sockets import (
    DEFAULT_MAX_MESSAGE_SIZE,
    NOBLOCK,
    ReadWaiter,
    context,
    default_publisher_id,
    sync_view,
)
from shared.wire import decode_payload

log = logging.getLogger("poolwire.bus")
skip_log = RateLimitedLog(log)


@dataclass(slots=True)
class PipeStats:
    sent: int = 0
    received: int = 0
    decode_errors: int = 0
    would_block: int = 0


class Pusher(security.BindLater):
    """PUSH socket: work or commands to a PULL peer. ``send`` waits for room; ``try_send`` doesn't."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = False,
        sender: str = "",
        hwm: int = 10_000,
        linger_ms: int = 2000,
        ctx: zmq.asyncio.Context | None = None,
        bind_later: bool = False,
    ) -> None:
        self.sender = sender or default_publisher_id("push")
        self.stats = PipeStats()
        self.seq = 0
        self._asock = (ctx or context()).socket(zmq.PUSH)
        self._asock.setsockopt(zmq.SNDHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, linger_ms)
        if bind:
            self._bind(self._asock, endpoint, later=bind_later)
        else:
            security.connect(self._asock, endpoint)
        self._sock = sync_view(self._asock)

    def _payload(self, msg: Message) -> bytes:
        self.seq += 1
        msg.publisher = self.sender
        msg.seq = msg.topic_seq = self.seq
        return ENCODER.encode(msg)

    async def send(self, msg: Message, timeout: float | None = None) -> None:
        payload = self._payload(msg)
        await asyncio.wait_for(self._asock.send(payload), timeout)
        self.stats.sent += 1

    def try_send(self, msg: Message) -> bool:
        try:
            self._sock.send(self._payload(msg), NOBLOCK)
        except zmq.Again:
            self.stats.would_block += 1
            return False
        self.stats.sent += 1
        return True

    def close(self, linger_ms: int | None = None) -> None:
        self._asock.close(linger=linger_ms)


class Puller(security.BindLater):
    """PULL socket: decodes one-frame payloads, counts and skips what does not decode."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = 10_000,
        max_drain: int = 1000,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ctx: zmq.asyncio.Context | None = None,
        decode: Callable[[bytes], tuple[list[Message], int]] = decode_payload,
        bind_later: bool = False,
    ) -> None:
        """``max_message_size``: a larger frame closes its sender's connection unread (-1: no limit).
        ``decode``: one payload -> (messages, how many were bad); a service can keep the good parts
        of a message the shared schema refuses whole (sync: a WhitelistAdd's good pools)."""
        self.stats = PipeStats()
        self.decode = decode
        self.max_drain = max_drain
        self._asock = (ctx or context()).socket(zmq.PULL)
        self._asock.setsockopt(zmq.RCVHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, 0)
        self._asock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        if bind:
            self._bind(self._asock, endpoint, later=bind_later)
        else:
            security.connect(self._asock, endpoint)
        self._sock = sync_view(self._asock)
        self._ready = ReadWaiter(self._sock)

    async def recv_batch(self, timeout: float | None = None) -> list[Message]:
        """Wait for messages and drain them; empty list after ``timeout`` seconds of nothing."""
        await asyncio.sleep(0)  # one loop turn per call, as Subscriber.recv_frames: no starving
        deadline = None if timeout is None else self._ready.loop.time() + timeout
        while True:
            out: list[Message] = []
            for _ in range(self.max_drain):
                try:
                    frames = self._sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                msgs, bad = self.decode(frames[-1]) if len(frames) == 1 else ([], 1)
                if bad:
                    self.stats.decode_errors += bad
                    skip_log("pull_undecodable", "skipped %d undecodable message(s) on PULL", bad)
                out.extend(msgs)
            if out:
                self.stats.received += len(out)
                return out
            remaining = None if deadline is None else max(0.0, deadline - self._ready.loop.time())
            if not await self._ready.wait(remaining) and deadline is not None:
                return []

    def __enter__(self) -> Puller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aiter__(self) -> AsyncIterator[Message]:
        while True:
            for msg in await self.recv_batch():
                yield msg

    def close(self) -> None:
        self._ready.close()
        self._asock.close()
