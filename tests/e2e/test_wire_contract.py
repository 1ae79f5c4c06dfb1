"""The consumer contract, from the README's wire section alone: the demo's processes (Procfile.demo
under honcho) on one side; on the other, a consumer that uses only pyzmq and a generic msgpack
decode (no poolwire import: the messages are plain maps), as an outside developer writes it. Wire
version 2's bodies are named from the README's own message reference tables.

For every state owner (ingest's prices, sync's pools, registry's zones) it checks the Clone merge
(snapshot, then the updates with ``seq > snapshot_seq``, equals a later snapshot), the one prefix
rule, the items' topics and numbers (each seeds its topic's gap check), and the error reply to a
request that cannot be read; then ``event_ns`` on blocks and pools, and a heartbeat's ``sent``.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

from tests.e2e.pipeline import Endpoints, honcho
from tests.helpers import ROOT, eventually

Msg = dict[str, Any]
ENVELOPE = {"publisher", "seq", "topic_seq", "publish_ns"}


def reference_fields() -> dict[str, list[str]]:
    """Each message type's fields in order, read from the README's message reference tables."""
    text = (ROOT / "README.md").read_text()
    begin, end = text.index("<!-- message-reference:begin"), text.index("<!-- message-reference:end")
    fields: dict[str, list[str]] = {}
    current: list[str] = []
    for line in text[begin:end].splitlines():
        if line.startswith("#### `"):
            current = fields.setdefault(line.split("`")[1], [])
        elif line.startswith("| `"):
            current.append(line.split("`")[1])
    return fields


FIELDS = reference_fields()
VERSIONS: Counter[int] = Counter()  # payloads read, by wire version


def unpack(payload: bytes) -> list[Msg]:
    """Version 1: one message (a map) or a batch (an array of maps). Version 2: ``[2, publisher,
    seq, topic_seq, publish_ns, count, bodies]``, a body ``[type, event_ns, fields...]``."""
    body = msgspec.msgpack.decode(payload)
    versioned = bool(body) and isinstance(body, list) and isinstance(body[0], int)
    VERSIONS[2 if versioned else 1] += 1
    if isinstance(body, dict):
        return [body]
    if versioned:
        version, publisher, seq, topic_seq, publish_ns, count, bodies = body
        assert version == 2 and count == len(bodies)
        out = []
        for i, (kind, event_ns, *values) in enumerate(bodies):
            msg: Msg = dict(zip(FIELDS[kind], values, strict=False))
            msg.update(type=kind, event_ns=event_ns, publisher=publisher, publish_ns=publish_ns)
            msg.update(seq=seq + i, topic_seq=topic_seq + i)
            out.append(msg)
        return out
    return list(body)


async def snapshot(ctx: zmq.asyncio.Context, endpoint: str, request: Msg) -> tuple[Msg, list[Msg]]:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)
    try:
        await dealer.send(msgspec.msgpack.encode(request))
        header, items = await asyncio.wait_for(dealer.recv_multipart(), 10)
    finally:
        dealer.close()
    return msgspec.msgpack.decode(header), msgspec.msgpack.decode(items)


@dataclass
class Owner:
    """One state owner as the consumer sees it: where it is, what its state's key is, how updates apply."""

    service: str
    pub: str
    snap: str
    prefix: str
    key: Callable[[str, Msg], str]  # (topic, message) -> the state's key
    removes: Callable[[Msg], bool] = lambda _: False
    compared: Callable[[Msg], Msg] = lambda m: {k: v for k, v in m.items() if k not in ENVELOPE}
    frames: list[tuple[str, list[Msg]]] = field(default_factory=list)


def zone_key(_: str, msg: Msg) -> str:
    return str(msg["zone"]["id"])


def zone_state(msg: Msg) -> Msg:
    zone = msg["zone"]
    return {"id": zone["id"], "touches": zone["touches"], "top": zone["top"], "bottom": zone["bottom"]}


def pool_state(msg: Msg) -> Msg:
    # ``block``: live, the block that changed the pool; in a snapshot, the head block (the README)
    skip = ENVELOPE | {"block", "block_hash", "event_ns"}
    return {k: v for k, v in msg.items() if k not in skip}


def price_state(msg: Msg) -> Msg:
    return {k: msg.get(k) for k in ("symbol", "price", "bid", "ask")}


async def read_until(sub: zmq.asyncio.Socket, owner: Owner, done: Callable[[], bool], timeout: float) -> None:
    async def receive() -> None:
        topic, payload = await sub.recv_multipart()
        owner.frames.append((topic.decode(), unpack(payload)))

    await eventually(done, wake=receive, timeout=timeout, what=f"{owner.service}'s stream")


def heartbeat_after(owner: Owner, publisher: str, seq: int) -> bool:
    return any(
        m.get("type") == "Heartbeat" and m["publisher"] == publisher and m["seq"] > seq
        for _, msgs in owner.frames
        for m in msgs
    )


async def check_owner(ctx: zmq.asyncio.Context, owner: Owner, settle: float) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in (owner.prefix, f"{owner.service}.health"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sub.connect(owner.pub)
    try:
        # Subscribed first (a heartbeat arrived), then the snapshot: the Clone order.
        await read_until(sub, owner, lambda: bool(owner.frames), 30)
        first, items = await snapshot(ctx, owner.snap, {"type": "SnapshotRequest", "prefix": owner.prefix})
        assert first["error"] == "" and first["count"] == len(items) == len(first["topics"]) > 0, first
        owner_id, s1 = first["publisher"], first["snapshot_seq"]
        state = {owner.key(t, m): owner.compared(m) for t, m in zip(first["topics"], items, strict=True)}
        numbers = {}
        for topic, item in zip(first["topics"], items, strict=True):
            assert topic.startswith(owner.prefix)
            assert item["publisher"] == owner_id and item["seq"] <= s1, (topic, item)
            numbers[topic] = item["topic_seq"]

        loop = asyncio.get_running_loop()
        until = loop.time() + settle
        await read_until(sub, owner, lambda: loop.time() >= until, settle + 5)
        second, items2 = await snapshot(ctx, owner.snap, {"type": "SnapshotRequest", "prefix": owner.prefix})
        s2 = second["snapshot_seq"]
        assert second["publisher"] == owner_id and s2 >= s1
        # everything up to s2 is on its way before the next heartbeat (one socket, in order)
        await read_until(sub, owner, lambda: heartbeat_after(owner, owner_id, s2), 10)

        applied = 0
        first_after: dict[str, int] = {}
        for topic, msgs in owner.frames:
            for msg in msgs:
                if msg.get("type") == "Heartbeat" or msg["publisher"] != owner_id or msg["seq"] <= s1:
                    continue
                first_after.setdefault(topic, msg["topic_seq"])
                if msg["seq"] > s2:
                    continue
                applied += 1
                key = owner.key(topic, msg)
                if owner.removes(msg):
                    state.pop(key, None)
                else:
                    state[key] = owner.compared(msg)
        later = {owner.key(t, m): owner.compared(m) for t, m in zip(second["topics"], items2, strict=True)}
        assert applied > 0, f"{owner.service}: no update between the snapshots"
        assert state == later, f"{owner.service}: snapshot + updates != the later snapshot"
        # an item's topic_seq seeds its topic's gap check: the next update on it is the next number
        seeded = [(t, n, first_after[t]) for t, n in numbers.items() if n and t in first_after]
        assert seeded and all(after == n + 1 for _, n, after in seeded), seeded[:5]
    finally:
        sub.close()


async def check_prefix_rule(ctx: zmq.asyncio.Context, owner: Owner) -> None:
    header, _ = await snapshot(ctx, owner.snap, {"type": "SnapshotRequest", "prefix": owner.prefix})
    narrow = header["topics"][-1]  # one item's whole topic: that symbol's (and its timeframe's, state's)
    sub_header, sub_items = await snapshot(ctx, owner.snap, {"type": "SnapshotRequest", "prefix": narrow})
    assert sub_header["count"] == len(sub_items) > 0
    assert all(t.startswith(narrow) for t in sub_header["topics"]), (narrow, sub_header["topics"][:5])
    _, nothing = await snapshot(ctx, owner.snap, {"type": "SnapshotRequest", "prefix": "no.such.topic."})
    assert nothing == []


async def check_error_reply(ctx: zmq.asyncio.Context, owner: Owner) -> None:
    header, items = await snapshot(ctx, owner.snap, {"prefix": owner.prefix})  # no "type"
    assert (header["type"], header["count"], items) == ("SnapshotReply", 0, [])
    assert "SnapshotRequest" in header["error"]


@pytest.mark.slow
@pytest.mark.parametrize("wire_version", [1, 2])
async def test_a_consumer_from_the_wire_section_alone(tmp_path: Path, wire_version: int) -> None:
    ep = Endpoints.allocate(tmp_path)
    ctx = zmq.asyncio.Context()
    owners = [
        Owner(
            "ingest", ep.ingest_pub, ep.ingest_snapshot, "px.pm.", key=lambda t, _: t, compared=price_state
        ),
        Owner("sync", ep.sync_pub, ep.sync_snapshot, "dex.pool.", key=lambda t, _: t, compared=pool_state),
        Owner(
            "registry",
            ep.registry_pub,
            ep.registry_snapshot,
            "zone.",
            key=zone_key,
            removes=lambda m: m["type"] in {"ZoneExpired", "ZoneRemoved"},
            compared=zone_state,
        ),
    ]
    try:
        env = ep.env({"POOLWIRE_COMMON__WIRE_VERSION": str(wire_version)})
        with honcho(env, tmp_path / "honcho.log") as run:
            try:
                # the registry needs a few S5 candles before its first zones
                await read_until_zones(ctx, ep.registry_pub, 90)
                for owner in owners:
                    await check_owner(ctx, owner, settle=6)
                    await check_prefix_rule(ctx, owner)
                    await check_error_reply(ctx, owner)
                await check_blocks_and_heartbeats(ctx, ep)
                assert VERSIONS[wire_version] > 0, VERSIONS
            except BaseException:
                print(run.output()[-6000:])
                raise
    finally:
        ctx.term()


async def read_until_zones(ctx: zmq.asyncio.Context, endpoint: str, timeout: float) -> None:
    """Wait for the registry's first zone (it needs a few S5 candles of the demo's prices)."""
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"zone.created.")
    sub.connect(endpoint)
    try:
        assert await sub.poll(timeout * 1000), "the demo's registry found no zone"
    finally:
        sub.close()


async def check_blocks_and_heartbeats(ctx: zmq.asyncio.Context, ep: Endpoints) -> None:
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for prefix in ("dex.block", "dex.pool.", "sync.health"):
        sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sub.connect(ep.sync_pub)
    seen: dict[str, list[Msg]] = {"BlockUpdate": [], "PoolState": [], "Heartbeat": []}
    try:

        async def receive() -> None:
            _, payload = await sub.recv_multipart()
            for msg in unpack(payload):
                seen[msg["type"]].append(msg)

        await eventually(
            lambda: min(len(v) for v in seen.values()) >= 3,
            wake=receive,
            timeout=30,
            what="three of each of sync's messages",
            state=lambda: {k: len(v) for k, v in seen.items()},
        )
    finally:
        sub.close()
    assert all(m["event_ns"] > 0 for m in seen["BlockUpdate"] + seen["PoolState"])
    # a heartbeat's ``sent``: the messages its publisher has sent, the heartbeat itself included
    assert all(hb["sent"] == hb["seq"] for hb in seen["Heartbeat"])
