"""SUB side of the bus: prefix filters, NOBLOCK drains, gap and dead-publisher detection.

Receivers wait for the socket to be readable, then drain it with NOBLOCK reads (one await per
message is 3x slower). Gaps are jumps in ``topic_seq`` per (publisher, topic); a publisher silent
for ``liveness`` heartbeat intervals is presumed dead.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from shared import security
from shared.clock import Clock, RealClock
from shared.constants import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, SERVICES, health_topic
from shared.messages import Heartbeat, Message
from shared.ratelog import RateLimitedLog
from shared.sockets import DEFAULT_HWM, NOBLOCK, ReadWaiter, context, sync_view
from shared.wire import decode_payload

# pyzmq's recv_multipart asks ZMQ_RCVMORE through Socket.get (an enum conversion, ~1 us a call,
# twice a message); a Frame from the Cython recv carries ``more`` itself: 3.2-4.1 -> 1.7-2.4 us a
# two-part message (registry replay: one frame a tick).
_zmq_recv = zmq.backend.Socket.recv

log = logging.getLogger("poolwire.bus")
skip_log = RateLimitedLog(log)


@dataclass(slots=True)
class SubscriberStats:
    received: int = 0  # messages delivered (heartbeats included)
    frames: int = 0
    wakeups: int = 0  # waits that suspended until a message came (each a loop wakeup)
    gaps: int = 0  # gap events
    missed: int = 0  # messages known lost (sum of gap sizes)
    decode_errors: int = 0
    restarts: int = 0  # a publisher's numbering started over
    dead: int = 0  # publishers presumed dead after missed heartbeats
    revived: int = 0
    topics: int = 0  # (publisher, topic) pairs whose last topic_seq is kept for the gap check


@dataclass(slots=True)
class PublisherInfo:
    publisher: str
    service: str
    interval_s: float
    started_ns: int
    last_seen: float  # clock.monotonic() of its last heartbeat
    alive: bool = True
    heartbeats: int = 0
    sent: int = 0  # messages it had published at its last heartbeat


GapHandler = Callable[[str, str, int], None]  # publisher, topic, missed
PublisherHandler = Callable[[PublisherInfo], None]


@dataclass
class _Handlers:
    on_gap: GapHandler | None = None
    on_dead: PublisherHandler | None = None
    on_alive: PublisherHandler | None = None
    on_heartbeat: PublisherHandler | None = None
    extra: list[Callable[[], None]] = field(default_factory=list)


class Subscriber:
    """SUB socket with prefix filters, batch decoding, gap and dead-publisher detection.

    ``async for topic, msg in sub`` yields every message whose topic matches a prefix. Heartbeats
    of ``health_services`` are always read (for liveness) and yielded only if a prefix matches.
    """

    def __init__(
        self,
        endpoints: str | Iterable[str],
        prefixes: Iterable[str] = ("",),
        *,
        clock: Clock | None = None,
        health_services: Iterable[str] = SERVICES,
        liveness: int = HEARTBEAT_LIVENESS,
        hwm: int = DEFAULT_HWM,
        max_drain: int = 1000,
        on_gap: GapHandler | None = None,
        on_dead: PublisherHandler | None = None,
        on_alive: PublisherHandler | None = None,
        on_heartbeat: PublisherHandler | None = None,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.clock: Clock = clock or RealClock()
        self.prefixes = tuple(prefixes)
        self.liveness = liveness
        self.max_drain = max_drain
        self.stats = SubscriberStats()
        self.publishers: dict[str, PublisherInfo] = {}
        self.handlers = _Handlers(on_gap, on_dead, on_alive, on_heartbeat)
        self._seqs: dict[str, dict[str, int]] = {}
        self._backlog: deque[tuple[str, list[Message]]] = deque()
        self._heartbeat_seen = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        self._health_topics = {health_topic(s) for s in health_services}
        self._asock = (ctx or context()).socket(zmq.SUB)
        self._asock.setsockopt(zmq.RCVHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, 0)
        for prefix in self.prefixes:
            self._asock.setsockopt(zmq.SUBSCRIBE, prefix.encode())
        for topic in self._health_topics:
            if not any(topic.startswith(p) for p in self.prefixes):
                self._asock.setsockopt(zmq.SUBSCRIBE, topic.encode())
        for endpoint in [endpoints] if isinstance(endpoints, str) else endpoints:
            security.connect(self._asock, endpoint)
        self._sock = sync_view(self._asock)
        self._ready = ReadWaiter(self._sock)
        self._turned = False  # the last receive waited for the socket: the loop turned in it
        self._dry = False  # the last drain read until the socket was empty (not max_drain frames)

    def _wants(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    async def recv_frames(self, timeout: float | None = None) -> list[tuple[str, list[Message]]]:
        """Wait for messages, then drain what is queued (up to ``max_drain`` frames).

        Returns ``(topic, messages)`` per frame (a batch keeps its messages together: the fastest
        way to consume), or an empty list if ``timeout`` seconds pass with nothing to deliver.
        """
        self._ensure_watchdog()
        # A loop turn before a read unless the last one waited (the loop turned in it), even with
        # input queued: a reader in a burst must not starve the process's other tasks (heartbeats,
        # timers; registry once went 15 s without a heartbeat). A turn costs a poll of the loop's FDs.
        waited = self._turned
        if not waited:
            await asyncio.sleep(0)
        self._turned = False
        if self._backlog:
            out = list(self._backlog)
            self._backlog.clear()
            return out
        deadline = None if timeout is None else self._ready.loop.time() + timeout
        # The last read waited, its drain emptied the socket and the loop has not turned since: wait
        # at once (the wait checks the socket first) rather than raise zmq.Again again (~2 us a wakeup).
        drain = not (waited and self._dry)
        while True:
            if drain:
                out = self._drain()
                if out:
                    return out
            drain = True
            remaining = None if deadline is None else max(0.0, deadline - self._ready.loop.time())
            if await self._ready.wait(remaining):
                self._turned = self._ready.suspended
                self.stats.wakeups += self._turned
            elif deadline is not None:
                return []

    async def recv_batch(self, timeout: float | None = None) -> list[tuple[str, Message]]:
        """Like :meth:`recv_frames`, one ``(topic, message)`` pair per message."""
        return [(topic, msg) for topic, msgs in await self.recv_frames(timeout) for msg in msgs]

    def _drain(self) -> list[tuple[str, list[Message]]]:
        out: list[tuple[str, list[Message]]] = []
        sock = self._sock
        ready = self._ready
        self._dry = False
        for n in range(self.max_drain):
            # After the first message, ask before reading: a lone message (most wakeups at a few
            # thousand a second) then ends without an empty read, whose zmq.Again costs 2.7 us
            # against 1.3 for the question; a burst pays the question once, then reads to Again.
            if n == 1 and not ready.readable():
                self._dry = True
                break
            try:
                part = _zmq_recv(sock, NOBLOCK, False)
            except zmq.Again:
                self._dry = True
                break
            frames = [part.bytes]
            while part.more:  # the rest of a message is there with its first part
                part = _zmq_recv(sock, NOBLOCK, False)
                frames.append(part.bytes)
            self._accept(frames, out)
        return out

    def _accept(self, frames: list[bytes], out: list[tuple[str, list[Message]]]) -> None:
        stats = self.stats
        stats.frames += 1
        if len(frames) != 2:
            stats.decode_errors += 1
            skip_log("frames", "skipped a message of %d frames (expected topic + payload)", len(frames))
            return
        try:
            topic = frames[0].decode()
        except UnicodeDecodeError:
            stats.decode_errors += 1
            return
        msgs, bad = decode_payload(frames[1])
        if bad:
            stats.decode_errors += bad
            skip_log("undecodable", "skipped %d undecodable message(s) on %r", bad, topic)
        if not msgs:
            return
        stats.received += len(msgs)
        self._check_sequence(topic, msgs[0], msgs[-1])
        if topic in self._health_topics:
            for msg in msgs:
                if isinstance(msg, Heartbeat):
                    self._on_heartbeat(msg)
            if not self._wants(topic):
                return
        out.append((topic, msgs))

    def _check_sequence(self, topic: str, first: Message, last: Message) -> None:
        seqs = self._seqs.get(first.publisher)
        if seqs is None:
            seqs = self._seqs[first.publisher] = {}
        prev = seqs.get(topic)
        if prev is not None:
            step = first.topic_seq - prev
            if step > 1:
                self.stats.gaps += 1
                self.stats.missed += step - 1
                if self.handlers.on_gap is not None:
                    self.handlers.on_gap(first.publisher, topic, step - 1)
                else:
                    log.warning("gap on %s from %s: %d message(s) lost", topic, first.publisher, step - 1)
            elif step <= 0:
                self.stats.restarts += 1
        else:
            self.stats.topics += 1
        seqs[topic] = last.topic_seq

    def seed(self, publisher: str, topic: str, topic_seq: int) -> None:
        """Start ``topic``'s gap check at ``topic_seq`` (a snapshot item's): the next update on it
        from ``publisher`` must be ``topic_seq + 1``, or a gap is counted."""
        if topic_seq <= 0:
            return
        seqs = self._seqs.setdefault(publisher, {})
        if topic not in seqs:
            self.stats.topics += 1
        seqs[topic] = max(seqs.get(topic, 0), topic_seq)

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        now = self.clock.monotonic()
        info = self.publishers.get(hb.publisher)
        if info is None:
            info = PublisherInfo(hb.publisher, hb.service, hb.interval_ms / 1000, hb.started_ns, now)
            self.publishers[hb.publisher] = info
            log.info("publisher %s (%s) seen", hb.publisher, hb.service)
            self._forget_replaced(hb.service)
        elif info.started_ns != hb.started_ns:
            log.warning("publisher %s restarted: its sequence numbers start over", hb.publisher)
            self.stats.topics -= len(self._seqs.pop(hb.publisher, {})) - 1
            self._seqs[hb.publisher] = {health_topic(hb.service): hb.topic_seq}
            info.started_ns = hb.started_ns
        info.last_seen = now
        info.sent = hb.sent
        info.interval_s = hb.interval_ms / 1000
        info.heartbeats += 1
        if not info.alive:
            info.alive = True
            self.stats.revived += 1
            log.warning("publisher %s (%s) is back", info.publisher, info.service)
            if self.handlers.on_alive is not None:
                self.handlers.on_alive(info)
        if self.handlers.on_heartbeat is not None:
            self.handlers.on_heartbeat(info)
        self._heartbeat_seen.set()

    def check_liveness(self) -> list[PublisherInfo]:
        """Mark publishers silent for ``liveness`` heartbeat intervals as dead; returns them."""
        now = self.clock.monotonic()
        newly_dead = []
        for info in self.publishers.values():
            if info.alive and now - info.last_seen > self.liveness * info.interval_s:
                info.alive = False
                self.stats.dead += 1
                newly_dead.append(info)
                log.warning(
                    "publisher %s (%s) silent for %.1f s: presumed dead",
                    info.publisher,
                    info.service,
                    now - info.last_seen,
                )
                if self.handlers.on_dead is not None:
                    self.handlers.on_dead(info)
        for service in {info.service for info in newly_dead}:
            self._forget_replaced(service)
        return newly_dead

    def _forget_replaced(self, service: str) -> None:
        """Forget the dead publishers of ``service`` that a later one replaced (a restart takes a
        new id: its pid), with their per-topic sequences: else every restart of a publisher would
        leave its whole table here for as long as this process runs. One that comes back after
        all is met as new: the first message of each topic starts its gap check again."""
        infos = [p for p in self.publishers.values() if p.service == service]
        newest_alive = max((p.started_ns for p in infos if p.alive), default=None)
        if newest_alive is None:
            return
        for info in infos:
            if not info.alive and info.started_ns < newest_alive:
                del self.publishers[info.publisher]
                topics = len(self._seqs.pop(info.publisher, {}))
                self.stats.topics -= topics
                log.info(
                    "publisher %s (%s) replaced by a newer one: forgot it and %d topic sequence(s)",
                    info.publisher,
                    service,
                    topics,
                )

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            intervals = [p.interval_s for p in self.publishers.values() if p.alive]
            await self.clock.sleep(min(intervals, default=HEARTBEAT_INTERVAL_S) / 2)
            self.check_liveness()

    async def wait_for_publisher(
        self, service: str | None = None, timeout: float = 10.0, *, publisher: str | None = None
    ) -> PublisherInfo:
        """Wait until a heartbeat (of ``service`` or ``publisher``, or any) arrived.

        The cure for the slow joiner. Messages that arrive meanwhile are kept and delivered by the
        next receive.
        """

        def found() -> PublisherInfo | None:
            for info in self.publishers.values():
                if (service is None or info.service == service) and (
                    publisher is None or info.publisher == publisher
                ):
                    return info
            return None

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._ensure_watchdog()
        while (info := found()) is None:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"no heartbeat from {publisher or service or 'any publisher'} in {timeout} s"
                )
            self._backlog.extend(self._drain())
            if found() is None:
                await self._ready.wait(remaining)
        return info

    async def __aiter__(self) -> AsyncIterator[tuple[str, Message]]:
        while True:
            for topic, msgs in await self.recv_frames():
                for msg in msgs:
                    yield topic, msg

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._ready.close()
        self._asock.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
