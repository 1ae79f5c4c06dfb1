"""The ZeroMQ guide's Clone pattern: a late joiner asks a state owner for its state.

A client first subscribes to the updates, then sends a SnapshotRequest over a DEALER to the
owner's ROUTER. The reply is two frames: a SnapshotReply header carrying ``snapshot_seq`` (the
owner publisher's ``seq`` the state is valid at) and the items (an array of messages). The client
applies the items, then every update with ``seq > snapshot_seq``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import msgspec
import zmq
import zmq.asyncio

from shared import security
from shared.messages import (
    ENCODER,
    ONE_DECODER,
    Message,
    SnapshotReply,
    SnapshotRequest,
    decode_payload,
)
from shared.ratelog import RateLimitedLog
from shared.sockets import DEFAULT_MAX_MESSAGE_SIZE, context

log = logging.getLogger("poolwire.snapshot")
skip_log = RateLimitedLog(log)

SnapshotSource = Callable[[SnapshotRequest], tuple[int, Sequence[Message]]]


class SnapshotServer:
    """ROUTER that answers SnapshotRequests from ``source`` (called on the event loop)."""

    def __init__(
        self,
        endpoint: str,
        source: SnapshotSource,
        *,
        publisher_id: str,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        """``publisher_id`` is the id of the Publisher whose ``seq`` the snapshots refer to; a request
        larger than ``max_message_size`` closes its sender's connection unread."""
        self.source = source
        self.publisher_id = publisher_id
        self.served = 0
        self.bad_requests = 0
        self._sock = (ctx or context()).socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, max_message_size)
        security.bind(self._sock, endpoint)
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
            try:
                seq, items = self.source(request)
            except Exception:  # the owner's bug must not end the server: later requests still get answers
                self.bad_requests += 1
                log.exception("the snapshot source failed on %r", request)
                error = "the state owner failed to build the snapshot (see its log)"
                await self._reply(identity, SnapshotReply(snapshot_seq=0, count=0, error=error), [])
                continue
            await self._reply(identity, SnapshotReply(snapshot_seq=seq, count=len(items)), items)
            self.served += 1
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
