"""The consumer API: subscribe() and follow() (Clone: snapshot, then only newer updates)."""

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable

import pytest

from shared.bus import Publisher
from shared.client import follow, subscribe
from shared.messages import Message, Price, SnapshotReply
from shared.snapshot import SnapshotServer
from tests.helpers import eventually
from tests.ports import tcp_endpoint


async def close(stream: AsyncIterator[object]) -> None:
    """subscribe() and follow() are async generators, typed as the iterators they are used as."""
    assert isinstance(stream, AsyncGenerator)
    await stream.aclose()


async def test_subscribe_waits_for_the_publisher_then_yields() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0.05) as pub:
        stream = subscribe(endpoint, "px.", wait_for="ingest")
        first = asyncio.ensure_future(anext(stream))
        await pub.wait_for_subscriber("px.", timeout=5)
        while not first.done():
            pub.publish("px.pm.a", Price(symbol="pm.a", price=0.42))
            await asyncio.wait([first], timeout=0.05)
        topic, msg = first.result()
        await close(stream)
    assert topic == "px.pm.a"
    assert isinstance(msg, Price) and msg.price == 0.42


async def test_follow_starts_from_the_snapshot_and_skips_what_it_already_holds() -> None:
    pub_ep, snap_ep = tcp_endpoint(), tcp_endpoint()
    state: dict[str, Price] = {}
    async with Publisher(pub_ep, service="registry", heartbeat_interval=0.05) as pub:

        def update(symbol: str, price: float) -> None:
            msg = Price(symbol=symbol, price=price)
            pub.publish(f"px.{symbol}", msg)
            pub.flush()
            state[symbol] = msg

        def source(_: object) -> tuple[int, list[Message]]:
            update("b", 2.5)  # lands on the wire while the snapshot is taken: already in it
            return pub.seq, list(state.values())

        server = SnapshotServer(snap_ep, source, publisher_id=pub.publisher_id)
        server.start()
        update("a", 1.0)
        update("b", 2.0)
        stream = follow(pub_ep, snap_ep, "px.")
        got: list[tuple[str, Message]] = []

        async def read(n: int) -> None:
            while len(got) < n:
                got.append(await anext(stream))

        await asyncio.wait_for(read(3), 10)  # the snapshot: its header, a and b
        update("c", 3.0)  # after the snapshot: must arrive as an update
        await asyncio.wait_for(read(4), 10)
        await close(stream)
        await server.close()
    assert isinstance(got[0][1], SnapshotReply) and got[0][1].count == 2
    seen = [(topic, msg.symbol, msg.price) for topic, msg in got[1:]]  # type: ignore[attr-defined]
    assert seen == [("snapshot", "a", 1.0), ("snapshot", "b", 2.5), ("px.c", "c", 3.0)]


async def test_follow_fetches_the_state_again_when_the_owner_restarts() -> None:
    pub_ep, snap_ep = tcp_endpoint(), tcp_endpoint()
    got: list[tuple[str, Message]] = []
    arrived = asyncio.Event()

    async def consume() -> None:
        async for item in follow(pub_ep, snap_ep, "px."):
            got.append(item)
            arrived.set()

    async def until(cond: Callable[[], bool], what: str) -> None:
        await eventually(cond, wake=arrived, timeout=10, what=what, state=lambda: [t for t, _ in got])

    def headers() -> int:
        return sum(isinstance(m, SnapshotReply) for _, m in got)

    async def owner(state: list[Price]) -> tuple[Publisher, SnapshotServer]:
        pub = Publisher(pub_ep, service="registry", publisher_id="registry@host", heartbeat_interval=0.05)
        server = SnapshotServer(snap_ep, lambda req: (pub.seq, state), publisher_id="registry@host")
        return pub.start(), server.start()

    pub, server = await owner([Price(symbol="a", price=1.0)])
    task = asyncio.create_task(consume())
    await until(lambda: headers() == 1 and len(got) == 2, "the first snapshot")
    await pub.close()
    await server.close()
    # Same id, new incarnation: its numbering starts over, below the old snapshot's seq.
    pub, server = await owner([Price(symbol="a", price=2.0)])
    await until(lambda: headers() == 2, "the second snapshot's header")
    await until(lambda: len(got) >= 4, "the second snapshot's item")
    await pub.wait_for_subscriber("px.", timeout=5)
    pub.publish("px.b", Price(symbol="b", price=3.0))
    await until(lambda: any(t == "px.b" for t, _ in got), "the update after the snapshot")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await pub.close()
    await server.close()
    prices = [(t, m.symbol, m.price) for t, m in got if isinstance(m, Price)]
    assert prices == [("snapshot", "a", 1.0), ("snapshot", "a", 2.0), ("px.b", "b", 3.0)]


async def test_follow_seeds_each_topics_gap_check_from_its_snapshot_item(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pub_ep, snap_ep = tcp_endpoint(), tcp_endpoint()
    async with Publisher(pub_ep, service="registry", heartbeat_interval=0.05) as pub:
        for price in (1.0, 2.0, 3.0):  # px.a's topic_seq reaches 3 before anyone follows
            pub.publish("px.a", Price(symbol="a", price=price))
        pub.flush()
        server = SnapshotServer(snap_ep, lambda _: (pub.seq, [Price(symbol="a", price=3.0)]), publisher=pub)
        server.start()
        stream = follow(pub_ep, snap_ep, "px.")
        header = await asyncio.wait_for(anext(stream), 10)
        item = await asyncio.wait_for(anext(stream), 10)
        assert isinstance(header[1], SnapshotReply) and header[1].topics == ["px.a"]
        assert item[0] == "snapshot" and item[1].topic_seq == 3
        pub._topics["px.a"].seq += 1  # topic_seq 4 is lost on the way: the next update is 5
        with caplog.at_level(logging.WARNING, "poolwire.bus"):
            pub.publish("px.a", Price(symbol="a", price=5.0))
            topic, update = await asyncio.wait_for(anext(stream), 10)
        await close(stream)
        await server.close()
    assert (topic, update.topic_seq) == ("px.a", 5)
    assert "gap on px.a" in caplog.text and "1 message(s) lost" in caplog.text
