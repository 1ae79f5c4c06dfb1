"""Thin helpers over zmq.asyncio: PUB/SUB for streams, PUSH/PULL for work and commands.

Wire: a PUB/SUB message is two frames, the topic (UTF-8) and a payload; the payload is msgpack of
one message or of an array of messages on that same topic (a batch). PUSH/PULL carries one frame,
the payload alone.

The publisher never blocks: a slow subscriber loses messages at its high-water mark, and the
subscriber sees them as gaps in ``topic_seq``. Publishers batch adaptively: ``publish`` queues,
and the queue is flushed when the event loop next turns (one message when idle, so latency stays
low; many per frame in a burst) or when ``max_batch`` is reached.

Receivers wait for the socket to be readable, then drain it with NOBLOCK reads (one await per
message is 3x slower).

This module holds what the sockets share; :mod:`shared.publisher`, :mod:`shared.subscriber` and
:mod:`shared.pipes` hold one socket kind each, and all are importable from here.
"""

from __future__ import annotations

import asyncio
import os
import socket as _socket

import zmq
import zmq.asyncio

DEFAULT_HWM = 100_000
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq re-wraps enum flags on every call (5 % of a drain)
POLLIN = int(zmq.POLLIN)
DEFAULT_MAX_BATCH = 256
# Sockets that receive from outside (PULL commands and jobs, snapshot ROUTERs) refuse a larger frame:
# ZeroMQ drops the connection that sent it before the frame is read into memory (common.max_message_size).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def context() -> zmq.asyncio.Context:
    """The process's shared asyncio ZeroMQ context."""
    return zmq.asyncio.Context.instance()


def sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A plain socket over the same underlying handle: NOBLOCK sends and drains without futures."""
    return zmq.Socket.shadow(sock.underlying)


async def wait_readable(sock: zmq.Socket[bytes], timeout: float | None = None) -> bool:
    """Wait until ``sock`` has a message to read; False if ``timeout`` seconds pass first.

    ZeroMQ's FD is edge-triggered: it signals that the socket's state may have changed, and
    reading ZMQ_EVENTS both answers and re-arms it. So check the events, register the reader,
    check again (an edge before registration is not signalled twice), then wait. This costs one
    loop callback per wake, where pyzmq's asyncio poll builds futures and timers on every call and
    was measured stalling 3-5 ms at the 99th percentile.
    """

    def readable() -> bool:
        return bool(sock.getsockopt(zmq.EVENTS) & POLLIN)  # type: ignore[operator]

    if readable():
        return True
    loop = asyncio.get_running_loop()
    fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
    woken = asyncio.Event()
    loop.add_reader(fd, woken.set)
    try:
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            if readable():
                return True
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return False
            woken.clear()
            try:
                await asyncio.wait_for(woken.wait(), remaining)
            except TimeoutError:
                return readable()
    finally:
        loop.remove_reader(fd)


def default_publisher_id(service: str) -> str:
    return os.environ.get("POOLWIRE_PUBLISHER_ID") or f"{service}@{_socket.gethostname()}:{os.getpid()}"


# The sockets, importable from here as one API (``from shared.bus import Publisher, Subscriber``).
from shared.pipes import PipeStats, Puller, Pusher  # noqa: E402
from shared.publisher import Publisher, PublisherStats  # noqa: E402
from shared.subscriber import PublisherInfo, Subscriber, SubscriberStats  # noqa: E402

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "NOBLOCK",
    "PipeStats",
    "Publisher",
    "PublisherInfo",
    "PublisherStats",
    "Puller",
    "Pusher",
    "Subscriber",
    "SubscriberStats",
    "context",
    "default_publisher_id",
    "sync_view",
    "wait_readable",
]
