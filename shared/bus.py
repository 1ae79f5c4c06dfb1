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

import os
import socket as _socket

import zmq
import zmq.asyncio

DEFAULT_HWM = 100_000
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq re-wraps enum flags on every call (5 % of a drain)
DEFAULT_MAX_BATCH = 256


def context() -> zmq.asyncio.Context:
    """The process's shared asyncio ZeroMQ context."""
    return zmq.asyncio.Context.instance()


def sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A plain socket over the same underlying handle: NOBLOCK sends and drains without futures."""
    return zmq.Socket.shadow(sock.underlying)


def default_publisher_id(service: str) -> str:
    return os.environ.get("POOLWIRE_PUBLISHER_ID") or f"{service}@{_socket.gethostname()}:{os.getpid()}"


# The sockets, importable from here as one API (``from shared.bus import Publisher, Subscriber``).
from shared.pipes import PipeStats, Puller, Pusher  # noqa: E402
from shared.publisher import Publisher, PublisherStats  # noqa: E402
from shared.subscriber import PublisherInfo, Subscriber, SubscriberStats  # noqa: E402

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_MAX_BATCH",
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
]
