"""Both wire versions, pinned: exact bytes, every type both ways, mixed publishers, gaps, liveness."""

import asyncio
import struct
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from msgspec import inspect as mi

from shared.bus import Publisher, PublisherInfo, Subscriber
from shared.clock import FakeClock
from shared.config import CommonConfig, ConfigError, convert
from shared.messages import MESSAGE_TYPES, Heartbeat, Message, Price, Trade
from shared.wire import BODY_TYPES, decode_payload, is_versioned, stamp_and_encode_v2
from tests.ports import tcp_endpoint
from tests.shared.samples import sample_struct, sample_value

PUBLISH_NS = 1_795_000_000_123_456_789


# -- msgpack written by hand (the msgpack spec), independent of the encoder under test


def s(text: str) -> bytes:
    """A fixstr."""
    data = text.encode()
    assert len(data) < 32
    return bytes([0xA0 | len(data)]) + data


def f64(x: float) -> bytes:
    return b"\xcb" + struct.pack(">d", x)


def u64(x: int) -> bytes:
    return b"\xcf" + x.to_bytes(8, "big")


V1_PRICE = (
    b"\x8b"  # a map of 11: "type", the envelope, the fields in declaration order
    + s("type") + s("Price")
    + s("publisher") + s("p")
    + s("seq") + b"\x01"
    + s("topic_seq") + b"\x01"
    + s("event_ns") + b"\x07"
    + s("publish_ns") + u64(PUBLISH_NS)
    + s("symbol") + s("pm.a")
    + s("price") + f64(0.5)
    + s("bid") + f64(0.25)
    + s("ask") + f64(0.0)
    + s("source") + s("book")
)  # fmt: skip

V2_PRICES = (
    b"\x97\x02"  # [2, publisher, first seq, first topic_seq, publish_ns, count, bodies]
    + s("p") + b"\x01" + b"\x01" + u64(PUBLISH_NS) + b"\x02"
    + b"\x92"  # two bodies: [type, event_ns, symbol, price, bid, ask, source]
    + b"\x97" + s("Price") + b"\x07" + s("pm.a") + f64(0.5) + f64(0.25) + f64(0.0) + s("book")
    + b"\x97" + s("Price") + b"\x08" + s("pm.a") + f64(0.75) + f64(0.0) + f64(0.0) + s("")
)  # fmt: skip


async def frames_sent(wire_version: int, msgs: list[Message]) -> list[bytes]:
    """The payloads a real Publisher (publisher id "p", clock at PUBLISH_NS) sends for one burst."""
    endpoint = tcp_endpoint()
    clock = FakeClock()
    clock.set_ns(PUBLISH_NS)
    sub = zmq.asyncio.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"px.")
    sub.connect(endpoint)
    try:
        async with Publisher(
            endpoint,
            service="t",
            publisher_id="p",
            clock=clock,
            heartbeat_interval=0,
            wire_version=wire_version,
        ) as pub:
            await pub.wait_for_subscriber("px.", timeout=10)
            for msg in msgs:
                pub.publish("px.pm.a", msg)
            pub.flush()
            topic, payload = await asyncio.wait_for(sub.recv_multipart(), 10)
    finally:
        sub.close(linger=0)
    assert topic == b"px.pm.a"
    return [payload]


async def test_a_v1_frame_is_these_bytes() -> None:
    msg = Price(symbol="pm.a", price=0.5, bid=0.25, source="book", event_ns=7)
    assert await frames_sent(1, [msg]) == [V1_PRICE]
    assert decode_payload(V1_PRICE) == ([msg], 0)


async def test_a_v2_frame_is_these_bytes() -> None:
    msgs: list[Message] = [
        Price(symbol="pm.a", price=0.5, bid=0.25, source="book", event_ns=7),
        Price(symbol="pm.a", price=0.75, event_ns=8),
    ]
    assert await frames_sent(2, msgs) == [V2_PRICES]
    assert [(m.publisher, m.seq, m.topic_seq, m.publish_ns) for m in msgs] == [
        ("p", 1, 1, PUBLISH_NS),
        ("p", 2, 2, PUBLISH_NS),
    ]
    assert decode_payload(V2_PRICES) == (msgs, 0)


def test_versions_are_told_apart_by_the_first_two_bytes() -> None:
    one = msgspec.msgpack.encode(Price(symbol="a", price=1.0))
    batch = msgspec.msgpack.encode([Price(symbol="a", price=1.0)] * 7)  # a fixarray too: 0x97
    assert batch[0] == 0x97
    assert not is_versioned(one) and not is_versioned(batch)
    assert is_versioned(V2_PRICES)


def test_an_unknown_version_is_one_error() -> None:
    v3 = b"\x93\x03" + s("p") + b"\x90"
    assert decode_payload(v3) == ([], 1)


def full_message(cls: type[Message], salt: int) -> Message:
    """Every field set, each to a value of its own, so a body with fields out of order cannot pass."""
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    kwargs: dict[str, Any] = {}
    for i, f in enumerate(info.fields):
        t = f.type
        if isinstance(t, mi.StrType):
            kwargs[f.name] = f"{f.name[:20]}{salt}"
        elif isinstance(t, mi.IntType) and not isinstance(t, mi.BoolType):
            kwargs[f.name] = 10 * salt + i + 1
        elif isinstance(t, mi.FloatType):
            kwargs[f.name] = salt + i + 0.5
        elif isinstance(t, mi.StructType):
            kwargs[f.name] = sample_struct(t.cls)
        else:
            kwargs[f.name] = sample_value(t)
    return cls(**kwargs)


@pytest.mark.parametrize("cls", MESSAGE_TYPES, ids=lambda c: c.__name__)
def test_every_type_round_trips_in_both_versions(cls: type[Message]) -> None:
    one, two = full_message(cls, 1), full_message(cls, 2)
    assert decode_payload(msgspec.msgpack.encode(one)) == ([one], 0)
    assert decode_payload(msgspec.msgpack.encode([one, two])) == ([one, two], 0)
    v2 = stamp_and_encode_v2("pub", 41, 7, PUBLISH_NS, [one, two])
    assert [(m.seq, m.topic_seq) for m in (one, two)] == [(41, 7), (42, 8)]  # stamped as v1 stamps
    assert decode_payload(v2) == ([one, two], 0)
    event_ns = one.event_ns
    assert msgspec.msgpack.decode(v2)[6][0][:2] == [cls.__name__, event_ns]


def test_a_v2_frame_of_mixed_types_keeps_each_type_and_number() -> None:
    msgs = [full_message(cls, 3) for cls in MESSAGE_TYPES]
    payload = stamp_and_encode_v2("pub", 100, 50, PUBLISH_NS, msgs)
    got, bad = decode_payload(payload)
    assert (got, bad) == (msgs, 0)
    assert [m.seq for m in got] == list(range(100, 100 + len(msgs)))


def test_a_bad_body_is_counted_and_the_others_keep_their_numbers() -> None:
    good = b"\x97" + s("Price") + b"\x07" + s("pm.a") + f64(0.5) + f64(0.0) + f64(0.0) + s("")
    future = b"\x92" + s("FromTheFuture") + b"\x01"
    payload = b"\x97\x02" + s("p") + b"\x0a\x05" + b"\x09" + b"\x03" + b"\x93" + good + future + good
    got, bad = decode_payload(payload)
    assert bad == 1
    assert [(m.seq, m.topic_seq) for m in got] == [(10, 5), (12, 7)]


def test_a_count_that_is_not_the_bodies_is_one_error() -> None:
    payload = V2_PRICES.replace(u64(PUBLISH_NS) + b"\x02", u64(PUBLISH_NS) + b"\x03")
    assert decode_payload(payload) == ([], 1)


def test_a_newer_publishers_extra_trailing_field_is_ignored() -> None:
    body = b"\x98" + s("Price") + b"\x07" + s("pm.a") + f64(0.5) + f64(0.0) + f64(0.0) + s("") + s("new")
    short = b"\x94" + s("Price") + b"\x07" + s("pm.a") + f64(0.5)  # an older one: defaults fill the rest
    payload = b"\x97\x02" + s("p") + b"\x01\x01\x09\x02\x92" + body + short
    got, bad = decode_payload(payload)
    assert bad == 0
    assert got == [
        Price(publisher="p", seq=1, topic_seq=1, event_ns=7, publish_ns=9, symbol="pm.a", price=0.5),
        Price(publisher="p", seq=2, topic_seq=2, event_ns=7, publish_ns=9, symbol="pm.a", price=0.5),
    ]


def test_bodies_are_array_like_for_every_type() -> None:
    assert set(BODY_TYPES) == set(MESSAGE_TYPES)
    for cls, body in BODY_TYPES.items():
        assert body.__struct_config__.array_like
        assert body.__struct_config__.tag == cls.__name__
        assert body.__struct_fields__[0] == "event_ns"


async def collect(sub: Subscriber, until: int) -> list[tuple[str, Message]]:
    got: list[tuple[str, Message]] = []
    while len(got) < until:
        got.extend(await asyncio.wait_for(sub.recv_batch(), 10))
    return got


async def test_v1_and_v2_publishers_on_one_subscriber() -> None:
    e1, e2 = tcp_endpoint(), tcp_endpoint()
    gaps: list[tuple[str, str, int]] = []
    with Subscriber(
        [e1, e2], ["px."], health_services=["one", "two"], on_gap=lambda *g: gaps.append(g)
    ) as sub:
        async with (
            Publisher(e1, service="one", heartbeat_interval=0.05, wire_version=1) as v1,
            Publisher(e2, service="two", heartbeat_interval=0.05, wire_version=2) as v2,
        ):
            await sub.wait_for_publisher("one", timeout=10)
            await sub.wait_for_publisher("two", timeout=10)
            await v1.wait_for_subscriber("px.", timeout=10)
            await v2.wait_for_subscriber("px.", timeout=10)
            sent: dict[str, list[Message]] = {v1.publisher_id: [], v2.publisher_id: []}
            for i in range(300):
                for pub in (v1, v2):
                    msg: Message = (
                        Price(symbol="pm.a", price=i, event_ns=i)
                        if i % 3
                        else Trade(asset="a", price=i, size=1.0, side="buy")
                    )
                    sent[pub.publisher_id].append(msg)
                    pub.publish("px.pm.a", msg)
                if i % 50 == 0:
                    await asyncio.sleep(0)  # the loop turns: some single frames, some batches
            got = await collect(sub, 600)
    by_publisher: dict[str, list[Message]] = {v1.publisher_id: [], v2.publisher_id: []}
    for topic, msg in got:
        assert topic == "px.pm.a"
        by_publisher[msg.publisher].append(msg)
    assert by_publisher == sent
    assert [m.topic_seq for m in by_publisher[v2.publisher_id]] == list(range(1, 301))
    assert gaps == [] and sub.stats.gaps == 0 and sub.stats.decode_errors == 0
    assert {p.service for p in sub.publishers.values()} == {"one", "two"}


async def test_a_v2_batch_after_a_gap_is_counted_as_the_gap() -> None:
    endpoint = tcp_endpoint()
    gaps: list[tuple[str, str, int]] = []
    with Subscriber(endpoint, ["px."], on_gap=lambda *g: gaps.append(g)) as sub:
        async with Publisher(endpoint, service="ingest", heartbeat_interval=0, wire_version=2) as pub:
            await pub.wait_for_subscriber("px.", timeout=10)
            pub.publish_many("px.pm.a", [Price(symbol="pm.a", price=0.1 * i) for i in range(3)])
            pub._topics["px.pm.a"].seq += 4  # as if 4 messages were dropped at the high-water mark
            pub.publish_many("px.pm.a", [Price(symbol="pm.a", price=0.5 + 0.1 * i) for i in range(3)])
            got = await collect(sub, 6)
    assert [m.topic_seq for _, m in got] == [1, 2, 3, 8, 9, 10]
    assert gaps == [(pub.publisher_id, "px.pm.a", 4)]
    assert (sub.stats.gaps, sub.stats.missed, sub.stats.frames) == (1, 4, 2)


async def test_a_silent_v2_publisher_is_dead_and_its_next_heartbeat_revives_it() -> None:
    endpoint = tcp_endpoint()
    clock = FakeClock()
    dead: list[PublisherInfo] = []
    revived = asyncio.Event()
    sub = Subscriber(
        endpoint,
        ["px."],
        clock=clock,
        health_services=["ingest"],
        on_dead=dead.append,
        on_alive=lambda _: revived.set(),
    )
    with sub:
        async with Publisher(endpoint, service="ingest", clock=FakeClock(), wire_version=2) as pub:
            await pub.wait_for_subscriber("ingest.health", timeout=10)
            pub.heartbeat()  # the one start() sent went out before the subscriber had joined
            info = await sub.wait_for_publisher("ingest", timeout=10)
            assert (info.interval_s, info.sent, info.heartbeats) == (1.0, 2, 1)
            clock.advance(2.9)
            assert sub.check_liveness() == [] and info.alive
            clock.advance(0.2)
            assert sub.check_liveness() == [info] and dead == [info] and not info.alive
            pub.heartbeat()
            reader = asyncio.create_task(sub.recv_batch())  # reads the heartbeat, yields nothing
            await asyncio.wait_for(revived.wait(), 10)
            reader.cancel()
    assert (sub.stats.dead, sub.stats.revived, info.heartbeats, info.sent) == (1, 1, 2, 3)


async def test_health_heartbeats_decode_as_heartbeats_in_v2() -> None:
    endpoint = tcp_endpoint()
    with Subscriber(endpoint, ["ingest.health"], health_services=["ingest"]) as sub:
        async with Publisher(endpoint, service="ingest", heartbeat_interval=0.05, wire_version=2):
            got = await collect(sub, 2)
    assert all(isinstance(m, Heartbeat) and m.sent == m.seq for _, m in got)


def test_publisher_and_config_accept_only_versions_1_and_2() -> None:
    with pytest.raises(ValueError, match="wire_version 3"):
        Publisher(tcp_endpoint(), service="t", wire_version=3)
    assert convert({}, CommonConfig, "common").wire_version == 1
    assert convert({"wire_version": 2}, CommonConfig, "common").wire_version == 2
    with pytest.raises(ConfigError, match=r"common\.wire_version"):
        convert({"wire_version": 3}, CommonConfig, "common")
