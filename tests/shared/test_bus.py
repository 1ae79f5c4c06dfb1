"""The bus over real sockets; publishers in real processes where the behaviour is about processes."""

import asyncio
import itertools
import signal
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio

import shared.subscriber
from shared.bus import Publisher, PublisherInfo, Puller, Pusher, Subscriber, context
from shared.messages import (
    ONE_DECODER,
    DetectorEvent,
    ForceSubscribe,
    Message,
    Price,
    SnapshotReply,
    SnapshotRequest,
    Zone,
    ZoneSnapshotItem,
    encode,
)
from shared.snapshot import SnapshotServer, item_topic, request_snapshot
from tests.helpers import eventually, spawn
from tests.ports import tcp_endpoint
from tests.shared.samples import every_message

msgpack = msgspec.msgpack.encode


def beacon_env(endpoint: str, **settings: object) -> dict[str, str]:
    env = {"POOLWIRE_BEACON__PUB": endpoint}
    env.update({f"POOLWIRE_BEACON__{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def collect(sub: Subscriber, until: int, timeout: float = 10.0) -> list[tuple[str, Message]]:
    got: list[tuple[str, Message]] = []

    async def loop() -> None:
        while len(got) < until:
            got.extend(await sub.recv_batch())

    await asyncio.wait_for(loop(), timeout)
    return got


async def test_every_message_type_crosses_a_real_socket() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0.05) as pub:
        with Subscriber(endpoint, ["t."]) as sub:
            await pub.wait_for_subscriber("t.", timeout=5)
            sent = every_message()
            for i, msg in enumerate(sent):
                pub.publish(f"t.{i}", msg)
            got = await collect(sub, len(sent))
    assert [m for _, m in got] == sent
    assert [t for t, _ in got] == [f"t.{i}" for i in range(len(sent))]
    assert all(m.publisher == pub.publisher_id and m.publish_ns > 0 for _, m in got)
    assert [m.seq for _, m in got] == sorted(m.seq for _, m in got)
    assert sub.stats.gaps == 0


async def test_burst_is_batched_and_idle_message_goes_alone() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["px."]) as sub:
            await pub.wait_for_subscriber("px.", timeout=5)
            for i in range(100):
                pub.publish("px.pm.a", Price(symbol="pm.a", price=i))
            assert pub.stats.frames == 0  # queued until the loop turns
            got = await collect(sub, 100)
            assert (pub.stats.frames, pub.stats.flushes) == (1, 1)
            pub.publish("px.pm.a", Price(symbol="pm.a", price=-1))
            got += await collect(sub, 1)
            assert (pub.stats.frames, pub.stats.flushes) == (2, 2)
    assert [m.price for _, m in got] == [*range(100), -1]  # type: ignore[attr-defined]
    assert [m.topic_seq for _, m in got] == list(range(1, 102))


async def test_a_subscriber_counts_the_waits_a_message_ended() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["px."], health_services=()) as sub:
            await pub.wait_for_subscriber("px.", timeout=5)
            for i in range(3):
                receiving = asyncio.create_task(sub.recv_batch(timeout=10))
                for _ in range(3):  # its loop turn, its drain of nothing: it waits
                    await asyncio.sleep(0)
                assert not receiving.done()
                pub.publish("px.pm.a", Price(symbol="pm.a", price=i))
                assert [m.price for _, m in await receiving] == [i]  # type: ignore[attr-defined]
                assert sub.stats.wakeups == i + 1


async def test_a_message_that_arrives_alone_costs_no_empty_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty read raises zmq.Again (~2.7 us): a drain asks the socket (~1.3 us) before its second
    # read, so a lone message ends it with no empty read, and a receive after a drain that emptied
    # the socket waits (checking the socket first) instead of reading it empty again.
    empty_reads = 0
    real = shared.subscriber._zmq_recv

    def counting(sock: zmq.Socket[bytes], flags: int, copy: bool) -> Any:
        nonlocal empty_reads
        try:
            return real(sock, flags, copy)
        except zmq.Again:
            empty_reads += 1
            raise

    monkeypatch.setattr(shared.subscriber, "_zmq_recv", counting)
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["px."], health_services=()) as sub:
            await pub.wait_for_subscriber("px.", timeout=5)
            got: list[float] = []
            for i in range(5):
                receiving = asyncio.create_task(sub.recv_batch(timeout=10))
                for _ in range(3):
                    await asyncio.sleep(0)
                assert not receiving.done()
                pub.publish("px.pm.a", Price(symbol="pm.a", price=i))
                got += [m.price for _, m in await receiving]  # type: ignore[attr-defined]
            assert got == [0, 1, 2, 3, 4]
            assert sub.stats.wakeups == 5
            assert empty_reads == 1  # the first receive's, before anything was sent


async def test_interleaved_topics_keep_seq_order_on_the_wire() -> None:
    endpoint = tcp_endpoint()
    # a, a, b, a, c, c, b: five runs, so five frames, and arrival order is seq order.
    topics = ["dex.pool.1", "dex.pool.1", "dex.block", "dex.pool.1", "dex.pool.2", "dex.pool.2", "dex.block"]
    async with Publisher(endpoint, service="sync", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, [""]) as sub:
            await pub.wait_for_subscriber("", timeout=5)
            for round_ in range(50):
                for i, topic in enumerate(topics):
                    pub.publish(topic, Price(symbol="x", price=round_ * 10 + i))
            got = await collect(sub, 50 * len(topics))
            assert pub.stats.frames == 50 * 5
    seqs = [m.seq for _, m in got]
    assert all(b > a for a, b in itertools.pairwise(seqs))
    assert [t for t, _ in got] == topics * 50
    assert [m.price for _, m in got] == [r * 10 + i for r in range(50) for i in range(len(topics))]  # type: ignore[attr-defined]


async def test_a_message_that_cannot_be_encoded_leaves_the_frames_before_it_sent_and_numbered() -> None:
    """A bug's message (a field msgpack cannot hold) raises from the flush. The frames before it
    are on the wire and counted, and the next message takes the number after theirs: no number
    is sent twice, and none is skipped for the frame that never went out."""
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="sync", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, [""]) as sub:
            await pub.wait_for_subscriber("", timeout=5)
            pub.publish("dex.pool.1", Price(symbol="x", price=1.0))
            pub.publish("dex.pool.2", Price(symbol="x", price=object()))  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                pub.flush()
            assert (pub.stats.frames, pub.stats.sent) == (1, 1)
            pub.publish("dex.pool.1", Price(symbol="x", price=3.0))
            got = await collect(sub, 2)
    assert [(t, m.seq, m.topic_seq) for t, m in got] == [("dex.pool.1", 1, 1), ("dex.pool.1", 2, 2)]
    assert pub.position("dex.pool.2") == (0, 0)


async def test_each_end_counts_the_topics_it_keeps_sequences_for() -> None:
    """The bus's per-topic state is one entry per topic at each end: exported as a gauge, so
    that a table still filling (new topics late in a run) is told from memory kept."""
    from prometheus_client import CollectorRegistry

    from shared.metrics import StatsCollector

    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="sync", heartbeat_interval=0) as pub:
        with Subscriber(endpoint, ["dex."]) as sub:
            await pub.wait_for_subscriber("dex.", timeout=5)
            for round_ in range(3):
                for topic in ("dex.pool.1", "dex.pool.2", "dex.block"):
                    pub.publish(topic, Price(symbol="x", price=round_))
                await collect(sub, 3)
            pub.publish("dex.pool.3", Price(symbol="x", price=0))
            await collect(sub, 1)
            collector = StatsCollector()
            collector.add("pub", pub.stats)
            collector.add("sub", sub.stats)
            registry = CollectorRegistry()
            registry.register(collector)
            assert registry.get_sample_value("poolwire_bus_topics", {"socket": "pub"}) == 4
            assert registry.get_sample_value("poolwire_bus_topics", {"socket": "sub"}) == 4


async def test_slow_joiner_loses_nothing_once_a_subscriber_is_seen() -> None:
    endpoint = tcp_endpoint()
    with (
        Subscriber(endpoint, ["px.test"]) as sub,
        spawn("-m", "tests.shared.beacon", env=beacon_env(endpoint, flood=5000, heartbeat="100ms")),
    ):
        got = await collect(sub, 5000, timeout=30)
    assert [m.topic_seq for _, m in got] == list(range(1, 5001))
    assert sub.stats.gaps == 0


async def test_slow_subscriber_sees_hwm_drops_as_gaps() -> None:
    endpoint = tcp_endpoint()
    flood = 50_000
    flood_done = asyncio.Event()

    def on_heartbeat(info: PublisherInfo) -> None:
        if info.sent >= flood:
            flood_done.set()

    watcher = Subscriber(endpoint, ["beacon.health"], on_heartbeat=on_heartbeat, health_services=["beacon"])
    slow = Subscriber(endpoint, ["px.test"], hwm=100)
    env = beacon_env(endpoint, flood=flood, heartbeat="50ms", hwm=100, batching="false", every="20ms")
    with watcher, slow, spawn("-m", "tests.shared.beacon", env=env):

        async def watch() -> None:
            while not flood_done.is_set():
                await watcher.recv_batch(0.5)

        await asyncio.wait_for(watch(), 60)  # the flood is over; `slow` has read nothing yet
        got: list[tuple[str, Message]] = []
        while not got or got[-1][1].topic_seq <= flood:
            got.extend(await asyncio.wait_for(slow.recv_batch(), 10))
    last = got[-1][1].topic_seq
    assert slow.stats.gaps >= 1
    assert slow.stats.missed > 0
    assert len(got) + slow.stats.missed == last  # every message is either received or counted lost


async def test_dead_publisher_is_reported_after_missed_heartbeats() -> None:
    endpoint = tcp_endpoint()
    dead = asyncio.Event()
    sub = Subscriber(endpoint, ["px."], health_services=["beacon"], on_dead=lambda info: dead.set())
    with sub, spawn("-m", "tests.shared.beacon", env=beacon_env(endpoint, heartbeat="100ms")) as proc:
        info = await sub.wait_for_publisher("beacon", timeout=20)
        assert info.alive
        proc.send_signal(signal.SIGKILL)
        reader = asyncio.create_task(sub.recv_batch())
        await asyncio.wait_for(dead.wait(), 10)
        reader.cancel()
    assert sub.stats.dead == 1
    assert not sub.publishers[info.publisher].alive


async def test_a_restarted_publisher_replaces_the_dead_one_and_its_table_is_forgotten() -> None:
    """A restart is a new publisher (a new pid): the dead one it replaced goes, with its per-topic
    sequences, so a consumer's memory does not grow with every restart upstream."""
    endpoint = tcp_endpoint()
    sub = Subscriber(endpoint, ["px."], health_services=["beacon"])
    env = beacon_env(endpoint, heartbeat="100ms", every="20ms")
    with sub:
        with spawn("-m", "tests.shared.beacon", env=env) as first:
            old = await sub.wait_for_publisher("beacon", timeout=20)
            await collect(sub, 1)  # px.test numbered: two topics kept for it, with its health topic
            assert sub.stats.topics == 2
            first.send_signal(signal.SIGKILL)
            first.wait(10)
        with spawn("-m", "tests.shared.beacon", env=env):
            await eventually(
                lambda: old.publisher not in sub.publishers and len(sub.publishers) == 1,
                wake=lambda: sub.recv_batch(1),
                timeout=20,
                what="the new publisher seen and the dead one forgotten",
                state=lambda: {p.publisher: p.alive for p in sub.publishers.values()},
            )
            await collect(sub, 1)
            assert sub.stats.topics == 2  # the new publisher's two, none of the old one's
    assert sub.stats.dead == 1


async def test_quiet_publisher_is_not_dead() -> None:
    endpoint = tcp_endpoint()
    # Dead after 1 s of silence, watched for 2 s of heartbeats only: a run where the beacon or this
    # process got no CPU for 150 ms (3 missed at 50 ms, on a loaded machine) is not what is tested.
    sub = Subscriber(endpoint, ["px."], health_services=["beacon"], liveness=10)
    with sub, spawn("-m", "tests.shared.beacon", env=beacon_env(endpoint, heartbeat="100ms")):
        info = await sub.wait_for_publisher("beacon", timeout=20)
        target = info.heartbeats + 20

        await eventually(
            lambda: info.heartbeats >= target,
            wake=lambda: sub.recv_batch(1),
            timeout=20,
            what="twenty more heartbeats",
            state=lambda: info.heartbeats,
        )
    assert sub.stats.dead == 0


async def test_garbage_on_the_bus_is_counted_and_skipped() -> None:
    endpoint = tcp_endpoint()
    raw = context().socket(zmq.PUB)
    raw.bind(endpoint)
    with Subscriber(endpoint, ["px."]) as sub:
        good = Price(symbol="pm.a", price=1.0)
        got: list[tuple[str, Message]] = []

        async def send_and_receive() -> None:  # sent again until the subscription has joined
            raw.send_multipart([b"px.a", b"\xc1\xc1garbage"])
            raw.send_multipart([b"px.a", b"one", b"two"])
            raw.send_multipart([b"px.a", encode(good)])
            got.extend(await sub.recv_batch(0.2))

        await eventually(lambda: bool(got), wake=send_and_receive, timeout=10, what="the good message")
    raw.close()
    assert got[0][1] == good
    assert sub.stats.decode_errors >= 2


async def test_push_pull_round_trip_and_garbage() -> None:
    endpoint = tcp_endpoint()
    puller = Puller(endpoint)
    pusher = Pusher(endpoint, sender="tester")
    raw = context().socket(zmq.PUSH)
    raw.connect(endpoint)
    await raw.send(b"\xc1 not a message")
    await pusher.send(ForceSubscribe(asset_ids=["a", "b"]), timeout=5)
    got: list[Message] = []

    async def receive() -> None:
        got.extend(await puller.recv_batch())

    await eventually(  # PULL fair-queues its peers: any order
        lambda: bool(got) and puller.stats.decode_errors > 0,
        wake=receive,
        timeout=10,
        what="the message and the garbage",
    )
    assert got == [ForceSubscribe(asset_ids=["a", "b"], publisher="tester", seq=1, topic_seq=1)]
    assert puller.stats.decode_errors == 1
    raw.close()
    pusher.close()
    puller.close()


async def test_a_frame_over_the_size_limit_is_never_read_and_later_messages_arrive() -> None:
    endpoint = tcp_endpoint()
    puller = Puller(endpoint, max_message_size=64 * 1024)
    raw = context().socket(zmq.PUSH)
    raw.connect(endpoint)
    await raw.send(encode(ForceSubscribe(asset_ids=["x" * 100] * 1000)))  # ~100 kB: over the limit
    await raw.send(encode(ForceSubscribe(asset_ids=["small"])))  # ZeroMQ reconnects the dropped peer
    got = await asyncio.wait_for(puller.recv_batch(), 10)
    assert [m.asset_ids for m in got] == [["small"]]  # type: ignore[attr-defined]
    assert puller.stats.decode_errors == 0  # the big frame never reached the decoder
    raw.close(linger=0)
    puller.close()


def test_outside_input_out_of_bounds_does_not_decode() -> None:
    """The schema's bounds: no 0/NaN/inf price, no time past int64, no 1 MB name, no 10 k ids."""
    good = {"type": "DetectorEvent", "detector": "d", "symbol": "pm.1", "timeframe": "H1", "kind": "k"}
    assert isinstance(ONE_DECODER.decode(msgpack({**good, "top": 2.0, "bottom": 1.0})), DetectorEvent)
    for bad in (
        {"top": 2.0, "bottom": 0.0},
        {"top": float("nan"), "bottom": 1.0},
        {"top": float("inf"), "bottom": 1.0},
        {"top": 2.0, "bottom": -1e308},
        {"top": 2.0, "bottom": 1.0, "created_ns": 2**64 - 1},
        {"top": 2.0, "bottom": 1.0, "symbol": "s" * 1_000_000},
        {"top": 2.0, "bottom": 1.0, "kind": ""},
    ):
        with pytest.raises(msgspec.ValidationError):
            ONE_DECODER.decode(msgpack({**good, **bad}))
    with pytest.raises(msgspec.ValidationError):
        ONE_DECODER.decode(msgpack({"type": "ForceSubscribe", "asset_ids": [str(i) for i in range(1001)]}))
    with pytest.raises(msgspec.ValidationError):
        ONE_DECODER.decode(
            msgpack({"type": "WhitelistAdd", "pools": [{"protocol": "v2", "address": "0x" * 100}]})
        )


async def test_snapshot_clone_round_trip() -> None:
    endpoint = tcp_endpoint()
    state = [Price(symbol=f"pm.{i}", price=i) for i in range(1000)]
    server = SnapshotServer(
        endpoint,
        lambda req: (42, state),  # the server keeps the items whose topic starts with the prefix
        publisher_id="owner",
    ).start()
    header, items = await request_snapshot(endpoint, "px.pm.1", timeout=5)
    await server.close()
    assert header.snapshot_seq == 42
    assert header.publisher == "owner"
    assert header.count == len(items) == 111
    assert items[0] == Price(symbol="pm.1", price=1)
    assert header.topics == [f"px.{p.symbol}" for p in items if isinstance(p, Price)] and len(items) == 111


async def test_snapshot_items_carry_their_topic_and_its_last_numbers() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(tcp_endpoint(), service="ingest", heartbeat_interval=0) as pub:
        state = {"pm.1": Price(symbol="pm.1", price=0.0), "pm.2": Price(symbol="pm.2", price=0.0)}
        for i, symbol in enumerate(["pm.1", "pm.2", "pm.1", "pm.1"]):
            state[symbol] = Price(symbol=symbol, price=i)
            pub.publish(f"px.{symbol}", Price(symbol=symbol, price=i))
        pub.flush()
        server = SnapshotServer(endpoint, lambda req: (pub.seq, list(state.values())), publisher=pub).start()
        try:
            header, items = await request_snapshot(endpoint, "px.pm.1", timeout=5)
            _, both = await request_snapshot(endpoint, "px.", timeout=5)
            _, none = await request_snapshot(endpoint, "md.", timeout=5)
        finally:
            await server.close()
    assert (header.snapshot_seq, header.publisher, header.topics) == (4, pub.publisher_id, ["px.pm.1"])
    assert [(m.publisher, m.seq, m.topic_seq) for m in items] == [(pub.publisher_id, 4, 3)]
    assert sorted((m.seq, m.topic_seq) for m in both) == [(2, 1), (4, 3)]
    assert none == []


def test_a_zone_items_topic_is_its_last_event() -> None:
    zone = Zone(
        id="z",
        symbol="pm.a",
        timeframe="S5",
        kind="fvg_bullish",
        top=2,
        bottom=1,
        strength=1,
        created_ns=1,
        expires_ns=2,
    )
    assert item_topic(ZoneSnapshotItem(zone=zone)) == "zone.created.S5.pm.a"
    zone.touches = 1
    assert item_topic(ZoneSnapshotItem(zone=zone)) == "zone.touched.S5.pm.a"


@pytest.mark.parametrize(
    ("frames", "says"),
    [
        ([msgpack({"prefix": "pm."})], "not a SnapshotRequest"),  # no "type"
        ([b"\xc1garbage"], "not a SnapshotRequest"),
        ([encode(Price(symbol="pm.1", price=1))], "a Price"),
        ([encode(SnapshotRequest(prefix="pm.")), b"extra"], "one frame, got 2"),
    ],
)
async def test_a_snapshot_request_that_cannot_be_read_gets_an_error_reply(
    frames: list[bytes], says: str
) -> None:
    endpoint = tcp_endpoint()
    server = SnapshotServer(
        endpoint, lambda req: (7, [Price(symbol="pm.1", price=1)]), publisher_id="owner"
    ).start()
    client = context().socket(zmq.DEALER)
    client.setsockopt(zmq.LINGER, 0)
    client.connect(endpoint)
    try:
        await client.send_multipart(frames)
        header_frame, items_frame = await asyncio.wait_for(client.recv_multipart(), 5)
        header = ONE_DECODER.decode(header_frame)
        assert isinstance(header, SnapshotReply)
        assert (header.count, header.snapshot_seq, header.publisher) == (0, 0, "owner")
        assert says in header.error
        assert msgspec.msgpack.decode(items_frame) == []
        assert server.bad_requests == 1
        # the server goes on answering good requests
        reply, items = await request_snapshot(endpoint, "px.pm.", timeout=5)
        assert (reply.count, reply.error, len(items)) == (1, "", 1)
    finally:
        client.close()
        await server.close()


async def test_wait_for_subscriber_times_out_clearly() -> None:
    async with Publisher(tcp_endpoint(), service="ingest", heartbeat_interval=0) as pub:
        try:
            await pub.wait_for_subscriber("px.", timeout=0.05)
        except TimeoutError as exc:
            assert "no subscriber" in str(exc)
        else:
            raise AssertionError("expected a timeout")


def test_context_is_shared() -> None:
    assert context() is zmq.asyncio.Context.instance()


async def test_a_reader_in_a_burst_lets_the_other_tasks_run() -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0, batching=False) as pub:
        with Subscriber(endpoint, ["px."], max_drain=100) as sub, Subscriber(endpoint, ["px.pm."]) as probe:

            async def both_joined() -> None:
                while not {"px.", "px.pm."} <= pub.subscriptions:
                    pub.watch.joined.clear()
                    if not {"px.", "px.pm."} <= pub.subscriptions:
                        await pub.watch.joined.wait()

            await asyncio.wait_for(both_joined(), 5)
            for i in range(3000):
                pub.publish("px.pm.a", Price(symbol="pm.a", price=i))
            seen = 0
            while seen < 3000:  # the probe has it all: so, by now, has ``sub``'s queue
                seen += len(await asyncio.wait_for(probe.recv_batch(), 10))
            turns = 0
            calls = 0

            async def other_task() -> None:
                nonlocal turns
                while True:
                    turns += 1
                    await asyncio.sleep(0)

            ticker = asyncio.create_task(other_task())
            got = 0
            while got < 3000:  # a plain await (wait_for would run each read as a task of its own)
                got += len(await sub.recv_batch())
                calls += 1
            ticker.cancel()
    assert calls >= 30  # at most 100 frames a call
    assert turns >= calls - 1  # the other task ran between every two reads
