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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket as _socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field

import zmq
import zmq.asyncio

from shared import security
from shared.clock import Clock, RealClock
from shared.constants import HEARTBEAT_INTERVAL_S, HEARTBEAT_LIVENESS, SERVICES, health_topic
from shared.messages import ENCODER, Heartbeat, Message, decode_payload

log = logging.getLogger("poolwire.bus")

DEFAULT_HWM = 100_000
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq re-wraps enum flags on every call (5 % of a drain)
DEFAULT_MAX_BATCH = 256


def context() -> zmq.asyncio.Context:
    """The process's shared asyncio ZeroMQ context."""
    return zmq.asyncio.Context.instance()


def _sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A plain socket over the same underlying handle: NOBLOCK sends and drains without futures."""
    return zmq.Socket.shadow(sock.underlying)


def default_publisher_id(service: str) -> str:
    return os.environ.get("POOLWIRE_PUBLISHER_ID") or f"{service}@{_socket.gethostname()}:{os.getpid()}"


@dataclass(slots=True)
class PublisherStats:
    sent: int = 0  # messages
    frames: int = 0  # payload frames (a batch is one frame)
    bytes: int = 0
    heartbeats: int = 0


class Publisher:
    """PUB socket that numbers, timestamps, batches and heartbeats what it sends."""

    def __init__(
        self,
        endpoint: str,
        *,
        service: str,
        publisher_id: str | None = None,
        clock: Clock | None = None,
        batching: bool = True,
        max_batch: int = DEFAULT_MAX_BATCH,
        hwm: int = DEFAULT_HWM,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.service = service
        self.publisher_id = publisher_id or default_publisher_id(service)
        self.endpoint = endpoint
        self.clock: Clock = clock or RealClock()
        self.batching = batching
        self.max_batch = max_batch
        self.heartbeat_interval = heartbeat_interval
        self.stats = PublisherStats()
        self.seq = 0
        self.started_ns = self.clock.time_ns()
        self._topic_seqs: dict[str, int] = {}
        self._groups: dict[str, list[Message]] = {}
        self._pending = 0
        self._flush_scheduled = False
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._health_topic = health_topic(service)
        # XPUB: a PUB that also reports subscriptions, so a sender can wait for its first reader.
        self._asock = (ctx or context()).socket(zmq.XPUB)
        self._asock.setsockopt(zmq.SNDHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, 1000)
        security.bind(self._asock, endpoint)
        self._sock = _sync_view(self._asock)
        self._closed = False
        self.subscriptions: set[str] = set()
        self._subscribed = asyncio.Event()
        self._subscription_task: asyncio.Task[None] | None = None

    def _stamp(self, topic: str, msg: Message) -> None:
        self.seq += 1
        tseq = self._topic_seqs.get(topic, 0) + 1
        self._topic_seqs[topic] = tseq
        msg.publisher = self.publisher_id
        msg.seq = self.seq
        msg.topic_seq = tseq

    def publish(self, topic: str, msg: Message) -> None:
        """Queue (batching) or send one message. Never blocks.

        Numbers and timestamps are stamped when the message goes out, so ``seq`` follows the
        order on the wire.
        """
        if not self.batching:
            self._stamp(topic, msg)
            msg.publish_ns = self.clock.time_ns()
            self._send(topic.encode(), ENCODER.encode(msg), 1)
            return
        group = self._groups.get(topic)
        if group is None:
            self._groups[topic] = [msg]
        else:
            group.append(msg)
        self._pending += 1
        if self._pending >= self.max_batch:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def publish_many(self, topic: str, msgs: Sequence[Message]) -> None:
        """Queue several messages of one topic at once (a burst the caller already has)."""
        group = self._groups.get(topic)
        if group is None:
            self._groups[topic] = list(msgs)
        else:
            group.extend(msgs)
        self._pending += len(msgs)
        self.flush()

    def flush(self) -> None:
        """Send everything queued now: one frame per topic, topics in order of first appearance."""
        self._flush_scheduled = False
        if not self._pending:
            return
        groups = self._groups
        self._groups = {}
        self._pending = 0
        now = self.clock.time_ns()
        publisher = self.publisher_id
        seq = self.seq
        topic_seqs = self._topic_seqs
        encode = ENCODER.encode
        for topic, msgs in groups.items():
            tseq = topic_seqs.get(topic, 0)
            for msg in msgs:
                seq += 1
                tseq += 1
                msg.publisher = publisher
                msg.seq = seq
                msg.topic_seq = tseq
                msg.publish_ns = now
            topic_seqs[topic] = tseq
            self.seq = seq
            self._send(topic.encode(), encode(msgs[0]) if len(msgs) == 1 else encode(msgs), len(msgs))

    def _send(self, topic: bytes, payload: bytes, count: int) -> None:
        if self._closed:
            return
        # PUB never blocks: past the HWM ZeroMQ drops, and subscribers count the gap.
        self._sock.send_multipart((topic, payload), NOBLOCK)
        stats = self.stats
        stats.sent += count
        stats.frames += 1
        stats.bytes += len(payload)

    def heartbeat(self) -> None:
        hb = Heartbeat(
            service=self.service,
            interval_ms=int(self.heartbeat_interval * 1000),
            started_ns=self.started_ns,
        )
        self.flush()  # queued data first, then the heartbeat that counts it
        self._stamp(self._health_topic, hb)
        hb.sent = self.seq
        hb.publish_ns = hb.event_ns = self.clock.time_ns()
        self._send(self._health_topic.encode(), ENCODER.encode(hb), 1)
        self.stats.heartbeats += 1

    async def _heartbeat_loop(self) -> None:
        while True:
            self.heartbeat()
            await self.clock.sleep(self.heartbeat_interval)

    async def _watch_subscriptions(self) -> None:
        while True:
            frame = await self._asock.recv()
            if not frame:
                continue
            prefix = frame[1:].decode(errors="replace")
            if frame[0] == 1:
                self.subscriptions.add(prefix)
                self._subscribed.set()
            elif frame[0] == 0:
                self.subscriptions.discard(prefix)

    def has_subscriber(self, topic: str = "") -> bool:
        """Whether some subscriber's prefix filter matches ``topic``."""
        return any(topic.startswith(prefix) for prefix in self.subscriptions)

    async def wait_for_subscriber(self, topic: str = "", timeout: float = 10.0) -> None:
        """Wait until a subscriber whose filter matches ``topic`` has joined (no slow-joiner loss)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self.has_subscriber(topic):
            self._subscribed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no subscriber for {topic!r} on {self.endpoint} in {timeout} s")
            try:
                await asyncio.wait_for(self._subscribed.wait(), remaining)
            except TimeoutError:
                continue

    def start(self) -> Publisher:
        """Start heartbeats (the first one goes out now) and subscription tracking."""
        loop = asyncio.get_running_loop()
        if self._subscription_task is None:
            self._subscription_task = loop.create_task(self._watch_subscriptions())
        if self._heartbeat_task is None and self.heartbeat_interval > 0:
            self._heartbeat_task = loop.create_task(self._heartbeat_loop(), name=f"heartbeat:{self.service}")
        return self

    async def close(self) -> None:
        if self._closed:
            return
        tasks = [t for t in (self._heartbeat_task, self._subscription_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flush()
        self._closed = True
        self._asock.close()

    async def __aenter__(self) -> Publisher:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@dataclass(slots=True)
class SubscriberStats:
    received: int = 0  # messages delivered (heartbeats included)
    frames: int = 0
    gaps: int = 0  # gap events
    missed: int = 0  # messages known lost (sum of gap sizes)
    decode_errors: int = 0
    restarts: int = 0  # a publisher's numbering started over
    dead: int = 0  # publishers presumed dead after missed heartbeats
    revived: int = 0


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
        self._sock = _sync_view(self._asock)

    def _wants(self, topic: str) -> bool:
        return any(topic.startswith(p) for p in self.prefixes)

    async def recv_frames(self, timeout: float | None = None) -> list[tuple[str, list[Message]]]:
        """Wait for messages, then drain what is queued (up to ``max_drain`` frames).

        Returns ``(topic, messages)`` per frame (a batch keeps its messages together: the fastest
        way to consume), or an empty list if ``timeout`` seconds pass with nothing to deliver.
        """
        self._ensure_watchdog()
        if self._backlog:
            out = list(self._backlog)
            self._backlog.clear()
            return out
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            out = self._drain()
            if out:
                return out
            wait_ms = None if deadline is None else max(0, int((deadline - loop.time()) * 1000))
            events = await self._asock.poll(wait_ms)
            if not events and deadline is not None and loop.time() >= deadline:
                return []

    async def recv_batch(self, timeout: float | None = None) -> list[tuple[str, Message]]:
        """Like :meth:`recv_frames`, one ``(topic, message)`` pair per message."""
        return [(topic, msg) for topic, msgs in await self.recv_frames(timeout) for msg in msgs]

    def _drain(self) -> list[tuple[str, list[Message]]]:
        out: list[tuple[str, list[Message]]] = []
        recv = self._sock.recv_multipart
        for _ in range(self.max_drain):
            try:
                frames = recv(NOBLOCK)
            except zmq.Again:
                break
            self._accept(frames, out)
        return out

    def _accept(self, frames: list[bytes], out: list[tuple[str, list[Message]]]) -> None:
        stats = self.stats
        stats.frames += 1
        if len(frames) != 2:
            stats.decode_errors += 1
            log.warning("skipped a message of %d frames (expected topic + payload)", len(frames))
            return
        try:
            topic = frames[0].decode()
        except UnicodeDecodeError:
            stats.decode_errors += 1
            return
        msgs, bad = decode_payload(frames[1])
        if bad:
            stats.decode_errors += bad
            log.warning("skipped %d undecodable message(s) on %r", bad, topic)
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
        seqs[topic] = last.topic_seq

    def _on_heartbeat(self, hb: Heartbeat) -> None:
        now = self.clock.monotonic()
        info = self.publishers.get(hb.publisher)
        if info is None:
            info = PublisherInfo(hb.publisher, hb.service, hb.interval_ms / 1000, hb.started_ns, now)
            self.publishers[hb.publisher] = info
            log.info("publisher %s (%s) seen", hb.publisher, hb.service)
        elif info.started_ns != hb.started_ns:
            log.warning("publisher %s restarted: its sequence numbers start over", hb.publisher)
            self._seqs.pop(hb.publisher, None)
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
        return newly_dead

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
                await self._asock.poll(int(remaining * 1000) + 1)
        return info

    async def __aiter__(self) -> AsyncIterator[tuple[str, Message]]:
        while True:
            for topic, msgs in await self.recv_frames():
                for msg in msgs:
                    yield topic, msg

    def close(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
        self._asock.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Subscriber:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()


@dataclass(slots=True)
class PipeStats:
    sent: int = 0
    received: int = 0
    decode_errors: int = 0
    would_block: int = 0


class Pusher:
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
    ) -> None:
        self.sender = sender or default_publisher_id("push")
        self.stats = PipeStats()
        self.seq = 0
        self._asock = (ctx or context()).socket(zmq.PUSH)
        self._asock.setsockopt(zmq.SNDHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, linger_ms)
        if bind:
            security.bind(self._asock, endpoint)
        else:
            security.connect(self._asock, endpoint)
        self._sock = _sync_view(self._asock)

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


class Puller:
    """PULL socket: decodes one-frame payloads, counts and skips what does not decode."""

    def __init__(
        self,
        endpoint: str,
        *,
        bind: bool = True,
        hwm: int = 10_000,
        max_drain: int = 1000,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        self.stats = PipeStats()
        self.max_drain = max_drain
        self._asock = (ctx or context()).socket(zmq.PULL)
        self._asock.setsockopt(zmq.RCVHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, 0)
        if bind:
            security.bind(self._asock, endpoint)
        else:
            security.connect(self._asock, endpoint)
        self._sock = _sync_view(self._asock)

    async def recv_batch(self, timeout: float | None = None) -> list[Message]:
        """Wait for messages and drain them; empty list after ``timeout`` seconds of nothing."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            out: list[Message] = []
            for _ in range(self.max_drain):
                try:
                    frames = self._sock.recv_multipart(NOBLOCK)
                except zmq.Again:
                    break
                msgs, bad = decode_payload(frames[-1]) if len(frames) == 1 else ([], 1)
                if bad:
                    self.stats.decode_errors += bad
                    log.warning("skipped %d undecodable message(s) on PULL", bad)
                out.extend(msgs)
            if out:
                self.stats.received += len(out)
                return out
            wait_ms = None if deadline is None else max(0, int((deadline - loop.time()) * 1000))
            events = await self._asock.poll(wait_ms)
            if not events and deadline is not None and loop.time() >= deadline:
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
        self._asock.close()
