"""The ZeroMQ guide's Clone pattern: a late joiner asks a state owner for its state.

A client first subscribes to the updates, then sends a SnapshotRequest over a DEALER to the
owner's ROUTER. The reply is two frames: a SnapshotReply header carrying ``snapshot_seq`` (the
owner publisher's ``seq`` the state is valid at) and each item's topic, and the items (an array of
messages). The client applies the items, then every update with ``seq > snapshot_seq``.

One prefix rule for every owner: an item is in the reply when the topic it was last published
under starts with the request's ``prefix``. Each item carries the ``publisher``, ``seq`` and
``topic_seq`` of the last message sent on its topic, so a client can seed its gap check.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import msgspec
import zmq
import zmq.asyncio

from shared import security
from shared.constants import dex_pool_topic, md_topic, px_topic, zone_topic
from shared.messages import (
    ENCODER,
    ONE_DECODER,
    BookSnapshot,
    Message,
    PoolState,
    Price,
    SnapshotReply,
    SnapshotRequest,
    ZoneSnapshotItem,
)
from shared.publisher import Publisher
from shared.ratelog import RateLimitedLog
from shared.sockets import DEFAULT_MAX_MESSAGE_SIZE, context
from shared.wire import decode_payload

log = logging.getLogger("poolwire.snapshot")
skip_log = RateLimitedLog(log)

SnapshotSource = Callable[[SnapshotRequest], tuple[int, Sequence[Message]]]


def item_topic(item: Message) -> str:
    """The topic a state item was last published under (its state is that topic's last message)."""
    if isinstance(item, ZoneSnapshotItem):
        zone = item.zone
        event = "touched" if zone.touches or zone.state == "touched" else "created"
        return zone_topic(event, zone.timeframe, zone.symbol)
    if isinstance(item, PoolState):
        return dex_pool_topic(item.pool)
    if isinstance(item, BookSnapshot):
        return md_topic("book", item.asset)
    if isinstance(item, Price):
        return px_topic(item.symbol)
    return ""


class SnapshotServer(security.BindLater):
    """ROUTER that answers SnapshotRequests from ``source`` (called on the event loop)."""

    def __init__(
        self,
        endpoint: str,
        source: SnapshotSource,
        *,
        publisher_id: str = "",
        publisher: Publisher | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ctx: zmq.asyncio.Context | None = None,
        bind_later: bool = False,
    ) -> None:
        """``publisher`` (or only its id, ``publisher_id``) is the Publisher whose ``seq`` the
        snapshots refer to; given the Publisher, each item is stamped with its topic's last ``seq``
        and ``topic_seq``. A request larger than ``max_message_size`` closes its sender's
        connection unread."""
        self.source = source
        self.publisher = publisher
        self.publisher_id = publisher.publisher_id if publisher is not None else publisher_id
        self.served = 0
        self.answered = asyncio.Event()  # set once a snapshot has been served
        self.bad_requests = 0
        self._sock = (ctx or context()).socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        self._bind(self._sock, endpoint, later=bind_later)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> SnapshotServer:
        self._task = asyncio.get_running_loop().create_task(self._serve(), name="snapshot-server")
        return self

    async def _serve(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            identity, request, error = self._parse(frames)
            if request is None:
                self.bad_requests += 1
                skip_log("bad request", "refused a snapshot request: %s", error)
                await self._reply(identity, SnapshotReply(snapshot_seq=0, count=0, error=error), [])
                continue
            # the state is exact at a seq only once what the publisher holds has gone out
            if self.publisher is not None and self.publisher.release():
                log.info("a snapshot asked for within the publisher's start hold: the hold ends now")
            try:
                seq, items = self.source(request)
            except Exception:  # the owner's bug must not end the server: later requests still get answers
                self.bad_requests += 1
                log.exception("the snapshot source failed on %r", request)
                error = "the state owner failed to build the snapshot (see its log)"
                await self._reply(identity, SnapshotReply(snapshot_seq=0, count=0, error=error), [])
                continue
            topics, kept = self._select(request.prefix, items)
            await self._reply(identity, SnapshotReply(snapshot_seq=seq, count=len(kept), topics=topics), kept)
            self.served += 1
            self.answered.set()
            log.info("snapshot of %d item(s) at seq %d served", len(items), seq)

    @staticmethod
    def _parse(frames: list[bytes]) -> tuple[bytes, SnapshotRequest | None, str]:
        identity = frames[0]  # a ROUTER always prefixes the sender's identity
        if len(frames) != 2:
            return identity, None, f"a request is one frame, got {len(frames) - 1}"
        try:
            request = ONE_DECODER.decode(frames[1])
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return identity, None, f"not a SnapshotRequest: {exc}"
        if not isinstance(request, SnapshotRequest):
            return identity, None, f"not a SnapshotRequest: a {type(request).__name__}"
        return identity, request, ""

    def _select(self, prefix: str, items: Sequence[Message]) -> tuple[list[str], list[Message]]:
        """The items whose topic starts with ``prefix``, stamped with their topic's position."""
        topics: list[str] = []
        kept: list[Message] = []
        pub = self.publisher
        for item in items:
            topic = item_topic(item)
            if not topic.startswith(prefix):
                continue
            if pub is not None:
                item.publisher = pub.publisher_id
                item.seq, item.topic_seq = pub.position(topic)
            topics.append(topic)
            kept.append(item)
        return topics, kept

    async def _reply(self, identity: bytes, header: SnapshotReply, items: Sequence[Message]) -> None:
        header.publisher = self.publisher_id
        await self._sock.send_multipart([identity, ENCODER.encode(header), ENCODER.encode(list(items))])

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._sock.close()


async def request_snapshot(
    endpoint: str, prefix: str = "", timeout: float = 5.0, *, ctx: zmq.asyncio.Context | None = None
) -> tuple[SnapshotReply, list[Message]]:
    """Ask the owner at ``endpoint`` for its state; raises TimeoutError if it does not answer."""
    sock = (ctx or context()).socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    security.connect(sock, endpoint)
    try:
        await sock.send(ENCODER.encode(SnapshotRequest(prefix=prefix)))
        try:
            frames = await asyncio.wait_for(sock.recv_multipart(), timeout)
        except TimeoutError:
            raise TimeoutError(f"no snapshot from {endpoint} in {timeout} s") from None
        header = ONE_DECODER.decode(frames[0])
        if not isinstance(header, SnapshotReply) or len(frames) != 2:
            raise ValueError(f"malformed snapshot reply from {endpoint}")
        if header.error:
            raise ValueError(f"{endpoint} refused the snapshot request: {header.error}")
        items, bad = decode_payload(frames[1])
        if bad:
            log.warning("snapshot from %s: %d item(s) did not decode", endpoint, bad)
        return header, items
    finally:
        sock.close()
