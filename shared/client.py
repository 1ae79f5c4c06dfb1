"""What a consumer needs, in three lines::

    from shared.client import subscribe
    async for topic, msg in subscribe("tcp://127.0.0.1:5570", "zone."):
        print(topic, msg)

Gaps and dead publishers are logged (and counted on ``Subscriber.stats``); for state, not only
updates, use :func:`follow`, which starts from a Clone snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from shared.bus import Subscriber
from shared.messages import Message
from shared.snapshot import request_snapshot


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
    """Clone pattern: yield the owner's state (topic ``"snapshot"``), then every later update."""
    async with Subscriber(pub_endpoint, prefixes or ("",)) as sub:
        await sub.wait_for_publisher(None, timeout)
        header, items = await request_snapshot(snapshot_endpoint, prefixes[0] if prefixes else "", timeout)
        for item in items:
            yield "snapshot", item
        async for topic, msg in sub:
            if msg.publisher == header.publisher and msg.seq <= header.snapshot_seq:
                continue  # already reflected in the snapshot
            yield topic, msg
