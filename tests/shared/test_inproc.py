"""Publishers served in-process too (services co-hosted in one process), over real sockets."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from shared import inproc, security
from shared.bus import Publisher, Subscriber
from shared.messages import Price
from shared.security import create_keys
from shared.sockets import context
from shared.wire import decode_payload
from tests.helpers import eventually
from tests.ports import tcp_endpoint
from tests.shared.test_security import curve_config


@pytest.fixture
def shared_endpoint() -> Iterator[str]:
    endpoint = tcp_endpoint()
    inproc.share([endpoint])
    yield endpoint
    inproc.clear()


def last_endpoint(sock: zmq.Socket[bytes]) -> str:
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


async def one_price_through(pub: Publisher, sub: Subscriber, price: float) -> None:
    await pub.wait_for_subscriber("px.", timeout=10)
    pub.publish("px.a", Price(symbol="a", price=price))
    pub.flush()
    batch = await sub.recv_batch(timeout=10)
    assert [m.price for _, m in batch if isinstance(m, Price)] == [price]


async def test_a_reader_in_this_process_takes_the_inproc_pipe_and_tcp_readers_still_read(
    shared_endpoint: str,
) -> None:
    outside = context().socket(zmq.SUB)  # a plain TCP reader: what another program sees
    async with Publisher(shared_endpoint, service="beacon") as pub:
        try:
            outside.subscribe(b"px.a")
            outside.connect(shared_endpoint)
            with Subscriber(shared_endpoint, ["px."]) as sub:
                assert last_endpoint(sub._sock) == inproc.alias(shared_endpoint)
                await eventually(
                    lambda: {"px.", "px.a"} <= pub.subscriptions,
                    wake=None,
                    timeout=10,
                    what="both readers subscribed",
                )
                for n in range(1, 101):
                    pub.publish("px.a", Price(symbol="a", price=float(n)))
                pub.flush()
                got: list[float] = []
                while len(got) < 100:
                    got += [m.price for _, m in await sub.recv_batch(timeout=10) if isinstance(m, Price)]
                assert got == [float(n) for n in range(1, 101)]
                assert sub.stats.gaps == 0
                seen: list[float] = []
                while len(seen) < 100:
                    assert await outside.poll(10_000), f"the TCP reader got {len(seen)} of 100"
                    _, payload = await outside.recv_multipart()
                    msgs, bad = decode_payload(payload)
                    assert bad == 0
                    seen += [m.price for m in msgs if isinstance(m, Price)]
                assert seen == got
        finally:
            outside.close(linger=0)


async def test_an_endpoint_not_shared_is_connected_as_configured(shared_endpoint: str) -> None:
    other = tcp_endpoint()
    async with Publisher(other, service="beacon") as pub:
        with Subscriber(other, ["px."]) as sub:
            assert last_endpoint(sub._sock) == other
            await one_price_through(pub, sub, 1.0)


async def test_a_reader_that_connects_before_the_publisher_binds_still_reads(shared_endpoint: str) -> None:
    # Co-hosted services start together: a subscriber may connect before its publisher binds.
    with Subscriber(shared_endpoint, ["px."]) as sub:
        pub = Publisher(shared_endpoint, service="beacon", bind_later=True)
        await pub.bound()
        async with pub:
            await one_price_through(pub, sub, 2.0)


async def test_under_curve_the_in_process_reader_reads_too(shared_endpoint: str, tmp_path: Path) -> None:
    # common.curve on: the publisher is a CURVE server on both bindings, the reader a client
    create_keys(str(tmp_path / "keys"))
    security.enable(curve_config(tmp_path / "keys", None), context())
    try:
        async with Publisher(shared_endpoint, service="beacon") as pub:
            with Subscriber(shared_endpoint, ["px."]) as sub:
                assert last_endpoint(sub._sock) == inproc.alias(shared_endpoint)
                await one_price_through(pub, sub, 3.0)
    finally:
        security.enable(None, context())
