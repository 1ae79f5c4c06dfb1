"""The wire is documented well enough for another language: the Node.js example reads it."""

import asyncio
import json

import pytest

from shared.bus import Publisher
from shared.messages import Message, Price, Zone, ZoneCreated
from tests.helpers import ROOT, require_binary, tcp_endpoint

EXAMPLE = ROOT / "examples" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    path = require_binary("node")
    if not (EXAMPLE / "node_modules" / "zeromq").exists():
        pytest.fail("examples/node is not installed: `make node-deps` (make test does it)")
    return path


async def test_node_consumer_decodes_messages_batches_and_gaps(node: str) -> None:
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
    async with Publisher(endpoint, service="registry", heartbeat_interval=0.05) as pub:
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
        pub._topic_seqs["px.pm.a"] += 2  # as if two messages were dropped at the high-water mark
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
