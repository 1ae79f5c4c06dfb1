"""PUB side of the bus: numbers, timestamps, batches adaptively and heartbeats what it sends.

``publish`` queues; the queue is flushed when the event loop next turns (one message when idle,
so latency stays low; many per frame in a burst) or when ``max_batch`` is reached. A frame carries
a consecutive run of one topic, so the wire keeps ``seq`` order even when topics interleave. The socket is
an XPUB, so the sender can wait for its first subscriber. It never blocks: a slow subscriber loses
messages at its high-water mark and sees them as gaps in ``topic_seq``. A ``lossless`` publisher
(replay) instead keeps what the high-water mark refuses (XPUB_NODROP) until ``drain`` sends it.
``hold``: what is published in the first ``hold`` seconds after :meth:`start` waits and goes out
then, and heartbeats start after it (so a heartbeat still follows everything published before
it): the subscribers of a restarted service reconnect within their reconnect interval (ZeroMQ's
100 ms), and a message sent before they are back is lost to them. A snapshot request ends the
hold (:meth:`Publisher.release`).
``wire_version`` 2 sends one envelope per frame and array bodies (:mod:`shared.wire`); 1, the
default, sends msgpack maps that each carry the whole envelope.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import zmq
import zmq.asyncio

from shared import security
from shared.clock import Clock, RealClock
from shared.constants import HEARTBEAT_INTERVAL_S, health_topic
from shared.messages import ENCODER, Heartbeat, Message
from shared.sockets import DEFAULT_HWM, DEFAULT_MAX_BATCH, NOBLOCK, context, default_publisher_id, sync_view
from shared.wire import WIRE_VERSIONS, stamp_and_encode_v2
from shared.xpub import SubscriberWatch

# Plain ints: send_multipart combines enum flags on every call (a visible share of a publish).
MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
# pyzmq's Socket.send is a Python layer (routing_id, group, Frame checks) over the Cython send:
# calling the Cython send for our bytes saves ~0.5 us a call, ~1 us a message (two parts).
_zmq_send = zmq.backend.Socket.send
DRAIN_PAUSE_MIN_S = 0.0005
DRAIN_PAUSE_MAX_S = 0.02


class TopicState:
    """A topic's numbering: its last ``topic_seq`` and the ``seq`` of its last message."""

    __slots__ = ("last", "seq")

    def __init__(self) -> None:
        self.seq = 0
        self.last = 0


@dataclass(slots=True)
class PublisherStats:
    sent: int = 0  # messages
    frames: int = 0  # payload frames (a batch is one frame)
    flushes: int = 0  # sends of what was queued: each wakes the subscribers' I/O threads once at most
    bytes: int = 0
    heartbeats: int = 0
    topics: int = 0  # topics numbered so far: one entry each in the per-topic sequences


class Publisher(security.BindLater):
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
        lossless: bool = False,
        wire_version: int = 1,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        hold: float = 0.0,
        ctx: zmq.asyncio.Context | None = None,
        bind_later: bool = False,
    ) -> None:
        if wire_version not in WIRE_VERSIONS:
            raise ValueError(f"wire_version {wire_version}: expected one of {WIRE_VERSIONS}")
        self.service = service
        self.wire_version = wire_version
        self.publisher_id = publisher_id or default_publisher_id(service)
        self.endpoint = endpoint
        self.clock: Clock = clock or RealClock()
        self.batching = batching
        self.max_batch = max_batch
        self.heartbeat_interval = heartbeat_interval
        self.hold = hold
        self._held = False  # within ``hold`` of start: flushes wait
        self._hold_task: asyncio.Task[None] | None = None
        self.stats = PublisherStats()
        self.seq = 0
        self.started_ns = self.clock.time_ns()
        self._topics: dict[str, TopicState] = {}  # one lookup a frame for its numbers
        # Consecutive runs of one topic, in publish order; the last run grows while its topic repeats.
        self._runs: list[tuple[str, list[Message]]] = []
        self._last_run: list[Message] | None = None
        self._last_topic = ""
        self._pending = 0
        self._flush_scheduled = False
        # Looked up once: asyncio.get_running_loop makes a getpid system call on Python 3.11.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._heartbeat_task: asyncio.Task[None] | None = None
        self._health_topic = health_topic(service)
        # XPUB: a PUB that also reports subscriptions, so a sender can wait for its first reader.
        self._asock = (ctx or context()).socket(zmq.XPUB)
        self._asock.setsockopt(zmq.SNDHWM, hwm)
        self._asock.setsockopt(zmq.LINGER, 1000)
        if lossless:
            self._asock.setsockopt(zmq.XPUB_NODROP, 1)
        self._backlog: deque[tuple[bytes, bytes]] = deque()  # frames the HWM refused (lossless only)
        self._bind(self._asock, endpoint, later=bind_later)
        self._sock = sync_view(self._asock)
        self._closed = False
        self.watch = SubscriberWatch(self._sock, endpoint)  # its readers' subscriptions (XPUB)

    def _topic(self, topic: str) -> TopicState:
        state = self._topics[topic] = TopicState()
        self.stats.topics += 1
        return state

    def _stamp(self, topic: str, msg: Message) -> None:
        state = self._topics.get(topic) or self._topic(topic)
        self.seq += 1
        state.seq += 1
        state.last = self.seq
        msg.publisher = self.publisher_id
        msg.seq = self.seq
        msg.topic_seq = state.seq

    def publish(self, topic: str, msg: Message) -> None:
        """Queue (batching) or send one message. Never blocks.

        Numbers and timestamps are stamped when the message goes out, so ``seq`` follows the
        order on the wire.
        """
        if not self.batching and not self._held:
            self._stamp(topic, msg)
            msg.publish_ns = self.clock.time_ns()
            self._send(topic.encode(), self._encode_one(msg), 1)
            return
        run = self._last_run
        if run is not None and topic == self._last_topic:
            run.append(msg)
        else:
            self._last_run = run = [msg]
            self._last_topic = topic
            self._runs.append((topic, run))
        self._pending += 1
        if self._pending >= self.max_batch:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop
            if loop is None:
                loop = self._loop = asyncio.get_running_loop()
            loop.call_soon(self.flush)

    def publish_many(self, topic: str, msgs: Sequence[Message]) -> None:
        """Queue several messages of one topic at once (a burst the caller already has)."""
        if not msgs:
            return
        run = self._last_run
        if run is not None and topic == self._last_topic:
            run.extend(msgs)
        else:
            self._last_run = run = list(msgs)
            self._last_topic = topic
            self._runs.append((topic, run))
        self._pending += len(msgs)
        self.flush()

    def flush(self) -> None:
        """Send everything queued now: one frame per run of one topic, in publish order."""
        self._flush_scheduled = False
        if not self._pending or self._held:
            return
        runs = self._runs
        self._runs = []
        self._last_run = None
        self._pending = 0
        stats = self.stats
        stats.flushes += 1
        now = self.clock.time_ns()
        publisher = self.publisher_id
        seq = self.seq
        topics = self._topics
        encode = ENCODER.encode
        v2 = self.wire_version == 2
        put = self._put
        closed = self._closed
        frames = sent = size = 0
        try:
            for topic, msgs in runs:
                state = topics.get(topic) or self._topic(topic)
                count = len(msgs)
                if v2:
                    payload = stamp_and_encode_v2(publisher, seq + 1, state.seq + 1, now, msgs)
                else:
                    mseq, tseq = seq, state.seq
                    for msg in msgs:
                        mseq += 1
                        tseq += 1
                        msg.publisher = publisher
                        msg.seq = mseq
                        msg.topic_seq = tseq
                        msg.publish_ns = now
                    payload = encode(msgs[0]) if count == 1 else encode(msgs)
                seq += count  # numbers are taken once the frame is encoded
                state.seq += count
                state.last = seq
                if closed:
                    continue
                frames += 1
                sent += count
                size += len(payload)
                put(topic.encode(), payload)  # the bytes not kept per topic: 120 B each, 20 k assets' topics
        finally:  # what went out stays counted, and its numbers taken, should an encoding raise
            self.seq = seq
            stats.sent += sent
            stats.frames += frames
            stats.bytes += size
        if frames:
            self.watch.sent()

    def _encode_one(self, msg: Message) -> bytes:
        """One stamped message as a payload of this publisher's wire version."""
        if self.wire_version == 2:
            return stamp_and_encode_v2(msg.publisher, msg.seq, msg.topic_seq, msg.publish_ns, (msg,))
        return ENCODER.encode(msg)

    def _send(self, topic: bytes, payload: bytes, count: int) -> None:
        if self._closed:
            return
        self._put(topic, payload)
        stats = self.stats
        stats.sent += count
        stats.frames += 1
        stats.bytes += len(payload)
        self.watch.sent()

    def _put(self, topic: bytes, payload: bytes) -> None:
        """One frame onto the socket, or behind the frames waiting in the backlog."""
        if self._backlog:
            self._backlog.append((topic, payload))
            return
        try:
            # Never blocks: past the HWM ZeroMQ drops (subscribers count the gap), or with
            # XPUB_NODROP refuses, and the frame waits in the backlog for ``drain``.
            _zmq_send(self._sock, topic, MORE_NOBLOCK)
            _zmq_send(self._sock, payload, NOBLOCK)
        except zmq.Again:
            self._backlog.append((topic, payload))

    def position(self, topic: str) -> tuple[int, int]:
        """``(seq, topic_seq)`` of the last message sent on ``topic``; ``(0, 0)`` if none was."""
        state = self._topics.get(topic)
        return (0, 0) if state is None else (state.last, state.seq)

    async def drain(self) -> None:
        """Flush, then wait until every frame the high-water mark refused has been sent."""
        self.flush()
        pause = DRAIN_PAUSE_MIN_S
        while self._backlog and not self._closed:
            topic, payload = self._backlog[0]
            try:
                self._sock.send(topic, MORE_NOBLOCK)
            except zmq.Again:
                # An XPUB always polls writable, so the refusal is the only signal: back off and retry.
                await asyncio.sleep(pause)
                pause = min(pause * 2, DRAIN_PAUSE_MAX_S)
                continue
            self._sock.send(payload, NOBLOCK)  # the frame's first part is in: the second never waits
            self._backlog.popleft()
            pause = DRAIN_PAUSE_MIN_S

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
        self._send(self._health_topic.encode(), self._encode_one(hb), 1)
        self.stats.heartbeats += 1

    async def _heartbeat_loop(self) -> None:
        while True:
            self.heartbeat()
            await self.clock.sleep(self.heartbeat_interval)

    @property
    def subscriptions(self) -> set[str]:
        """The prefixes this socket's subscribers have."""
        return self.watch.prefixes

    def has_subscriber(self, topic: str = "") -> bool:
        """Whether some subscriber's prefix filter matches ``topic``."""
        return self.watch.has_subscriber(topic)

    async def wait_for_subscriber(self, topic: str = "", timeout: float = 10.0) -> None:
        """Wait until a subscriber whose filter matches ``topic`` has joined (no slow-joiner loss)."""
        await self.watch.wait(topic, timeout)

    def release(self) -> bool:
        """End the hold now: what it kept goes out, then heartbeats start; whether a hold ended.
        A snapshot calls this (:class:`~shared.snapshot.SnapshotServer`): it names the seq it is
        exact at, so what the owner's state already holds must have gone out."""
        if not self._held:
            return False
        self._held = False
        if self._hold_task is not None and self._hold_task is not asyncio.current_task():
            self._hold_task.cancel()
        self.flush()
        self._start_heartbeats()
        return True

    async def _hold_then_release(self) -> None:
        await self.clock.sleep(self.hold)
        self.release()

    def _start_heartbeats(self) -> None:
        if self._heartbeat_task is None and self.heartbeat_interval > 0:
            self._heartbeat_task = asyncio.get_running_loop().create_task(
                self._heartbeat_loop(), name=f"heartbeat:{self.service}"
            )

    def start(self) -> Publisher:
        """Start subscription tracking and the hold, or heartbeats (the first one goes out now)."""
        loop = asyncio.get_running_loop()
        self.watch.start()
        if self.hold > 0 and self._hold_task is None:
            self._held = True
            self._hold_task = loop.create_task(self._hold_then_release(), name=f"hold:{self.service}")
        elif not self._held:
            self._start_heartbeats()
        return self

    async def close(self) -> None:
        if self._closed:
            return
        tasks = [t for t in (self._heartbeat_task, self._hold_task) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, self.watch.close(), return_exceptions=True)
        self._held = False  # what the hold kept goes out with the rest
        self.flush()
        self._closed = True
        self._asock.close()

    async def __aenter__(self) -> Publisher:
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
