"""What a consumer needs, in three lines::

    from shared.client import subscribe
    async for topic, msg in subscribe("tcp://127.0.0.1:5570", "zone."):
        print(topic, msg)

Gaps and dead publishers are logged (and counted on ``Subscriber.stats``); for state, not only
updates, use :func:`follow`, which starts from a Clone snapshot.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterable

from shared.bus import Subscriber
from shared.messages import Message
from shared.snapshot import request_snapshot

log = logging.getLogger("poolwire.client")


async def subscribe(
    endpoints: str | Iterable[str],
    *prefixes: str,
    wait_for: str | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[tuple[str, Message]]:
    """Yield ``(topic, message)`` for every message whose topic starts with a prefix.

    ``wait_for`` names a service whose heartbeat to wait for first (no slow-joiner loss).
    """
    with_prefixes = prefixes or ("",)
    async with Subscriber(endpoints, with_prefixes) as sub:
        if wait_for is not None:
            await sub.wait_for_publisher(wait_for, timeout)
        async for item in sub:
            yield item


async def follow(
    pub_endpoint: str, snapshot_endpoint: str, *prefixes: str, timeout: float = 10.0
) -> AsyncIterator[tuple[str, Message]]:
    """Clone pattern: the owner's state, then every later update, across owner restarts.

    Yields ``("snapshot", SnapshotReply)`` (reset your state), ``("snapshot", item)`` for each item
    of the state (its topic is in the reply's ``topics``), then ``(topic, update)``. Each item's
    ``topic_seq`` seeds the gap check of its topic, so an update lost between the snapshot and the
    next update on that topic is counted as a gap. When the owner restarts (a new ``started_ns`` under the
    same publisher id, or a new id of the same service once the old one is dead) it fetches the
    state again and starts over with a new SnapshotReply.
    """
    prefix = prefixes[0] if prefixes else ""
    async with Subscriber(pub_endpoint, prefixes or ("",)) as sub:
        await sub.wait_for_publisher(None, timeout)
        held: list[tuple[str, Message]] = []
        while True:
            header, items = await request_snapshot(snapshot_endpoint, prefix, timeout)
            owner = await sub.wait_for_publisher(publisher=header.publisher, timeout=timeout)
            incarnation = owner.started_ns
            for item, topic in zip(items, header.topics, strict=False):
                sub.seed(item.publisher, topic, item.topic_seq)
            yield "snapshot", header
            for item in items:
                yield "snapshot", item
            pending, held = held, []
            for topic, msg in pending:
                if msg.publisher != header.publisher or msg.seq > header.snapshot_seq:
                    yield topic, msg
            while True:
                frames = await sub.recv_frames(timeout=owner.interval_s)
                restarted = owner.started_ns != incarnation or (
                    not owner.alive
                    and any(i.alive and i.service == owner.service for i in sub.publishers.values())
                )
                if restarted:
                    # What the new incarnation sent is either in its snapshot or comes after it.
                    held = [
                        (t, m)
                        for t, msgs in frames
                        for m in msgs
                        if m.publisher != owner.publisher or owner.started_ns != incarnation
                    ]
                    log.warning("%s restarted: fetching its state again", owner.publisher)
                    break
                for topic, msgs in frames:
                    for msg in msgs:
                        if msg.publisher == header.publisher and msg.seq <= header.snapshot_seq:
                            continue  # already reflected in the snapshot
                        yield topic, msg
