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

:mod:`shared.sockets` holds what the sockets share; :mod:`shared.publisher`, :mod:`shared.subscriber`
and :mod:`shared.pipes` hold one socket kind each, and all are importable from here.
"""

from __future__ import annotations

from shared.pipes import PipeStats, Puller, Pusher
from shared.publisher import Publisher, PublisherStats
from shared.sockets import (
    DEFAULT_HWM,
    DEFAULT_MAX_BATCH,
    DEFAULT_MAX_MESSAGE_SIZE,
    NOBLOCK,
    POLLIN,
    ReadWaiter,
    context,
    default_publisher_id,
    sync_view,
)
from shared.subscriber import PublisherInfo, Subscriber, SubscriberStats

__all__ = [
    "DEFAULT_HWM",
    "DEFAULT_MAX_BATCH",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "NOBLOCK",
    "POLLIN",
    "PipeStats",
    "Publisher",
    "PublisherInfo",
    "PublisherStats",
    "Puller",
    "Pusher",
    "ReadWaiter",
    "Subscriber",
    "SubscriberStats",
    "context",
    "default_publisher_id",
    "sync_view",
]
