"""Record what the bus carries to a file, and publish it again: ``poolwire record`` / ``replay``.

A recording starts with ``MAGIC``, then holds one length-prefixed msgpack ``Record`` per message
(4-byte big-endian length, as in msgspec's asyncio-kv example): the topic, the time it was heard,
and the message with the numbers and times its publisher gave it. A recording read to its end is
whole; a torn last record (the recorder was killed) is reported and the records before it kept.

Replay publishes every recorded message except heartbeats (the replaying publisher sends its own)
under the recorded topics, with the recorded ``event_ns``, so event-time consumers build the same
bars at any speed. It is lossless: it waits for the slowest subscriber instead of dropping.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import msgspec

from shared.bus import Publisher, Subscriber
from shared.messages import ONE_DECODER, Heartbeat, Message

MAGIC = b"POOLWIRE-RECORDING-1\n"
_LENGTH = struct.Struct(">I")
log = logging.getLogger("poolwire.recording")


class Record(msgspec.Struct, array_like=True, frozen=True):
    topic: str
    recv_ns: int  # wall clock when the recorder heard it
    msg: Message


class RecordingError(ValueError):
    """The file is not a recording."""


_encoder = msgspec.msgpack.Encoder()


class _StoredRecord(msgspec.Struct, array_like=True):
    topic: str
    recv_ns: int
    msg: msgspec.Raw  # decoded by the message union's own decoder


_decoder = msgspec.msgpack.Decoder(_StoredRecord)


def write_record(out: BinaryIO, record: Record) -> None:
    body = _encoder.encode(record)
    out.write(_LENGTH.pack(len(body)))
    out.write(body)


def read_records(path: str | Path) -> Iterator[Record]:
    """Every whole record of a recording, in order; a torn last record is logged and left out."""
    with open(path, "rb") as src:
        if src.read(len(MAGIC)) != MAGIC:
            raise RecordingError(f"{path}: not a poolwire recording")
        index = 0
        while header := src.read(_LENGTH.size):
            index += 1
            body = src.read(_LENGTH.unpack(header)[0]) if len(header) == _LENGTH.size else b""
            if len(header) < _LENGTH.size or len(body) < _LENGTH.unpack(header)[0]:
                log.warning("%s: record %d is torn (the recorder stopped mid-write); left out", path, index)
                return
            try:
                stored = _decoder.decode(body)
                yield Record(stored.topic, stored.recv_ns, ONE_DECODER.decode(stored.msg))
            except msgspec.DecodeError as exc:
                raise RecordingError(f"{path}: record {index} does not decode: {exc}") from exc


async def record(
    endpoints: Sequence[str], prefixes: Sequence[str], out_path: str | Path, count: int, timeout: float
) -> int:
    """Write what the subscriber hears to ``out_path`` until ``count`` messages or ``timeout`` s."""
    written = 0
    sub = Subscriber(endpoints, prefixes or ("",))
    loop = asyncio.get_running_loop()
    deadline = None if timeout <= 0 else loop.time() + timeout
    try:
        with open(out_path, "wb") as out:
            out.write(MAGIC)
            while count <= 0 or written < count:
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    break
                batch = await sub.recv_batch(remaining)
                now = time.time_ns()
                for topic, msg in batch:
                    write_record(out, Record(topic, now, msg))
                    written += 1
                    if 0 < count <= written:
                        break
                out.flush()
    finally:
        stats = sub.stats
        sub.close()
        print(
            f"poolwire record: {written} messages to {out_path}; {stats.gaps} gaps "
            f"({stats.missed} messages lost upstream of the recorder)",
            file=sys.stderr,
        )
    return 0


def _pacing_ns(rec: Record) -> int:
    return rec.msg.publish_ns or rec.recv_ns


async def replay(
    path: str | Path,
    endpoint: str,
    *,
    speed: float = 1.0,
    rate: float = 0.0,
    wait_for: Sequence[str] = ("",),
    wait_timeout: float = 30.0,
) -> int:
    """Publish a recording on ``endpoint``: at ``speed`` x the recorded pace, at a fixed ``rate``
    of messages per second, or as fast as the subscribers take it (``speed`` <= 0 and no rate).

    It starts once a subscriber matches each topic of ``wait_for``, so nobody joins late.
    """
    records = [r for r in read_records(path) if not isinstance(r.msg, Heartbeat)]
    pub = await Publisher(endpoint, service="replay", lossless=True, bind_later=True).bound()
    pub.start()
    try:
        for topic in wait_for or ("",):
            await pub.wait_for_subscriber(topic, timeout=wait_timeout)
        loop = asyncio.get_running_loop()
        start = loop.time()
        first_ns = _pacing_ns(records[0]) if records else 0
        for i, rec in enumerate(records):
            if rate > 0:
                due = start + i / rate
            elif speed > 0:
                due = start + (_pacing_ns(rec) - first_ns) / 1e9 / speed
            else:
                due = 0.0
            if due - loop.time() > 0.001:  # ahead of the schedule: let the queue go out, then wait
                await pub.drain()
                await asyncio.sleep(due - loop.time())
            pub.publish(rec.topic, rec.msg)
            if i % pub.max_batch == pub.max_batch - 1:  # as fast as possible: still let the loop turn
                await pub.drain()
                await asyncio.sleep(0)
        await pub.drain()
    finally:
        await pub.close()
    print(f"poolwire replay: {len(records)} messages from {path} on {endpoint}", file=sys.stderr)
    return 0
