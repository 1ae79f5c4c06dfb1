"""The wire is documented well enough for another language: the Node.js example reads it."""

import asyncio
import json
import re

import pytest

from shared.bus import Publisher
from shared.messages import BY_TAG, Message, Price, Zone, ZoneCreated
from shared.snapshot import SnapshotServer
from shared.wire import BODY_TYPES
from tests.helpers import ROOT, require_binary
from tests.ports import tcp_endpoint

EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    path = require_binary("node")
    if not (EXAMPLE / "node_modules" / "zeromq").exists():
        pytest.fail("examples/node is not installed: `make node-deps` (make test does it)")
    return path


def test_node_consumers_v2_field_names_are_the_bodies() -> None:
    source = (EXAMPLE / "consumer.mjs").read_text()
    table = re.search(r"const FIELDS = (\{.*?\n\});", source, re.S)
    assert table is not None
    fields = json.loads(table.group(1))
    assert {"Heartbeat", "Price", "BookChange", "Trade", "PoolState", "ZoneTouched"} <= set(fields)
    for name, names in fields.items():
        assert names == list(BODY_TYPES[BY_TAG[name]].__struct_fields__[1:]), name


@pytest.mark.parametrize("wire_version", [1, 2])
async def test_node_consumer_decodes_messages_batches_and_gaps(node: str, wire_version: int) -> None:
    endpoint = tcp_endpoint()
    zone = Zone(
        id="H1_x",
        symbol="pm.a",
        timeframe="H1",
        kind="fvg_bullish",
        top=0.6,
        bottom=0.5,
        strength=1.0,
        created_ns=1_795_000_000_000_000_000,
        expires_ns=1_795_000_007_200_000_000,
    )
    async with Publisher(
        endpoint, service="registry", heartbeat_interval=0.05, wire_version=wire_version
    ) as pub:
        proc = await asyncio.create_subprocess_exec(
            node,
            str(EXAMPLE / "consumer.mjs"),
            "--count",
            "5",
            endpoint,
            "zone.",
            "px.",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await pub.wait_for_subscriber("zone.", timeout=20)
        await pub.wait_for_subscriber("px.", timeout=20)
        sent: list[Message] = [ZoneCreated(zone=zone, confluence=["H4_y"])]
        pub.publish("zone.created.H1.pm.a", sent[0])
        burst = [Price(symbol="pm.a", price=0.5 + i / 100) for i in range(3)]
        for msg in burst:  # one batch frame
            pub.publish("px.pm.a", msg)
        pub.flush()
        pub._topics["px.pm.a"].seq += 2  # as if two messages were dropped at the high-water mark
        pub.publish("px.pm.a", Price(symbol="pm.a", price=0.9))
        pub.flush()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    data = lines
    assert [d["type"] for d in data] == ["ZoneCreated", "Price", "Price", "Price", "Price"]
    assert data[0]["topic"] == "zone.created.H1.pm.a"
    assert data[0]["zone"]["expires_ns"] == str(zone.expires_ns)  # exact: read as BigInt
    assert data[0]["confluence"] == ["H4_y"]
    assert [d["price"] for d in data[1:]] == [0.5, 0.51, 0.52, 0.9]
    assert [d["topic_seq"] for d in data[1:]] == [1, 2, 3, 6]
    assert all(line["publisher"] == pub.publisher_id for line in lines)
    gaps = [json.loads(line) for line in err.decode().splitlines() if '"gap"' in line]
    assert gaps == [{"gap": "px.pm.a", "publisher": pub.publisher_id, "missed": 2}]


@pytest.mark.parametrize("wire_version", [1, 2])
async def test_node_consumer_follows_an_owner_from_its_snapshot(node: str, wire_version: int) -> None:
    endpoint, snap = tcp_endpoint(), tcp_endpoint()
    async with Publisher(
        endpoint, service="ingest", heartbeat_interval=0.05, wire_version=wire_version
    ) as pub:
        state = {s: Price(symbol=s, price=p) for s, p in (("pm.a", 0.4), ("pm.b", 0.7))}
        for price in state.values():  # published before the consumer: only the snapshot has them
            pub.publish(f"px.{price.symbol}", Price(symbol=price.symbol, price=price.price))
        pub.flush()
        server = SnapshotServer(snap, lambda _: (pub.seq, list(state.values())), publisher=pub).start()
        proc = await asyncio.create_subprocess_exec(
            node,
            str(EXAMPLE / "consumer.mjs"),
            "--count",
            "5",
            "--snapshot",
            snap,
            endpoint,
            "px.",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await pub.wait_for_subscriber("px.", timeout=20)
        await asyncio.wait_for(server.answered.wait(), 20)  # the consumer heard the stream, then asked
        pub._topics["px.pm.a"].seq += 1  # one update on px.pm.a lost after the snapshot
        pub.publish("px.pm.a", Price(symbol="pm.a", price=0.45))
        pub.publish("px.pm.b", Price(symbol="pm.b", price=0.75))
        pub.flush()
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        await server.close()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert lines[0]["snapshot"] == pub.publisher_id and lines[0]["count"] == 2
    assert [(d["topic"], d["price"], d["topic_seq"], d.get("snapshot")) for d in lines[1:]] == [
        ("px.pm.a", 0.4, 1, True),
        ("px.pm.b", 0.7, 1, True),
        ("px.pm.a", 0.45, 3, None),
        ("px.pm.b", 0.75, 2, None),
    ]
    gaps = [json.loads(line) for line in err.decode().splitlines() if '"gap"' in line]
    assert gaps == [{"gap": "px.pm.a", "publisher": pub.publisher_id, "missed": 1}]
