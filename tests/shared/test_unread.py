"""Unread topics: a run no subscriber's prefix matches is numbered, not encoded or sent."""

import asyncio

import zmq
from prometheus_client import CollectorRegistry

from shared.bus import Publisher, Subscriber
from shared.messages import Message, Price
from shared.metrics import StatsCollector
from tests.helpers import eventually
from tests.ports import tcp_endpoint


def price(i: int) -> Price:
    return Price(symbol="pm.x", price=0.5 + i / 1000)


async def take(sub: Subscriber, count: int, timeout: float = 10.0) -> list[tuple[str, Message]]:
    got: list[tuple[str, Message]] = []

    async def loop() -> None:
        while len(got) < count:
            got.extend(await sub.recv_batch())

    await asyncio.wait_for(loop(), timeout)
    return got


async def test_a_topic_nobody_reads_is_numbered_and_not_sent() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["px."]) as sub:
            await pub.wait_for_subscriber("px.", timeout=5)
            for i in range(3):
                pub.publish("md.change.a", price(i))  # nobody reads md.
                pub.publish("px.pm.a", price(i))
            got = await take(sub, 3)
            assert [t for t, _ in got] == ["px.pm.a"] * 3
            assert [m.topic_seq for _, m in got] == [1, 2, 3]
            # each px message's seq counts the md one numbered before it: 2, 4, 6
            assert [m.seq for _, m in got] == [2, 4, 6]
            assert (pub.stats.sent, pub.stats.unread, pub.seq) == (3, 3, 6)
            assert pub.position("md.change.a") == (5, 3)
            assert sub.stats.gaps == 0
    registry = CollectorRegistry()
    collector = StatsCollector()
    collector.add("pub", pub.stats)
    registry.register(collector)
    assert registry.get_sample_value("poolwire_bus_messages_unread_total", {"socket": "pub"}) == 3


async def test_a_reader_that_joins_sees_the_unread_run_as_numbers_taken() -> None:
    """What went unread before a reader joined is numbered: its first message carries the topic's
    true position, and a reader seeded from a snapshot would count what it missed as a gap."""
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        for i in range(5):
            pub.publish("md.change.a", price(i))
        pub.flush()
        assert pub.stats.unread == 5
        with Subscriber(endpoint, ["md.change."]) as sub:
            await pub.wait_for_subscriber("md.change.a", timeout=5)
            pub.publish("md.change.a", price(5))
            [(_, msg)] = await take(sub, 1)
    assert (msg.topic_seq, pub.stats.sent, pub.stats.unread) == (6, 1, 5)


async def test_a_subscription_the_socket_took_is_read_before_a_run_is_skipped() -> None:
    """The publisher never started its watching task here: a flush reads the subscriptions the
    socket has taken, so the first message after one arrived is sent."""
    endpoint = tcp_endpoint()
    pub = Publisher(endpoint, service="ingest", heartbeat_interval=0)
    try:
        with Subscriber(endpoint, ["px."]) as sub:
            # the subscription is queued on the XPUB, unread by the publisher (blocks up to 5 s)
            assert pub._sock.poll(5000, zmq.POLLIN)
            assert not pub.subscriptions
            pub.publish("px.pm.a", price(0))
            pub.flush()
            assert (pub.stats.sent, pub.stats.unread, "px." in pub.subscriptions) == (1, 0, True)
            [(_, msg)] = await take(sub, 1)
            assert msg.topic_seq == 1
    finally:
        await pub.close()


async def test_a_topic_is_unread_again_once_its_last_reader_leaves() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["px.pm."]) as second:
            with Subscriber(endpoint, ["px."]):
                await eventually(
                    lambda: {"px.", "px.pm."} <= pub.subscriptions,
                    wake=pub.watch.joined,
                    timeout=5,
                    what="both",
                )
            await eventually(lambda: "px." not in pub.subscriptions, wake=None, timeout=5, what="px. dropped")
            pub.publish("px.pm.a", price(0))
            await take(second, 1)  # one reader left: still read
        # nothing announces an unsubscription: re-checked while the watching task reads it
        await eventually(lambda: not pub.subscriptions, wake=None, timeout=5, what="no subscription")
        pub.publish("px.pm.a", price(1))
        pub.flush()
        assert (pub.stats.sent, pub.stats.unread) == (1, 1)


async def test_send_unread_sends_every_message() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0, send_unread=True) as pub:
        for i in range(4):
            pub.publish(f"md.change.{i}", price(i))
        pub.flush()
        assert (pub.stats.sent, pub.stats.frames, pub.stats.unread) == (4, 4, 0)


async def test_an_unbatched_publisher_skips_unread_topics_too() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="sync", heartbeat_interval=0, batching=False) as pub:
        with Subscriber(endpoint, ["dex."]) as sub:
            await pub.wait_for_subscriber("dex.", timeout=5)
            pub.publish("md.x", price(0))
            pub.publish("dex.pool.1", price(1))
            [(_, msg)] = await take(sub, 1)
    assert (msg.seq, msg.topic_seq, pub.stats.unread) == (2, 1, 1)
