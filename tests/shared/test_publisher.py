"""The publisher's subscription tracking over real sockets."""

import select

import zmq

from shared.bus import Publisher, Subscriber, context
from shared.clock import FakeClock
from shared.constants import health_topic
from shared.messages import Message, Price, SnapshotRequest
from shared.snapshot import SnapshotServer, request_snapshot
from tests.helpers import eventually
from tests.ports import tcp_endpoint


def fd_signalled(sock: zmq.Socket[bytes]) -> bool:
    fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
    return bool(select.select([fd], [], [], 0)[0])


async def test_a_subscription_whose_signal_a_send_took_is_still_seen() -> None:
    """A send processes ZeroMQ's pending commands, reading the FD's signal of a subscription that
    arrived meanwhile: the subscription then waits in the socket with nothing left to wake its
    reader, unless the publisher checks again after sending."""
    async with Publisher(
        "inproc://publisher-send-takes-signal", service="beacon", heartbeat_interval=0
    ) as pub:
        reader = pub.watch.reader
        assert reader is not None
        await eventually(lambda: reader.suspended, wake=None, timeout=10, what="the watcher waiting")
        sub = context().socket(zmq.SUB)
        try:
            sub.subscribe(b"px.")
            sub.connect("inproc://publisher-send-takes-signal")  # in the publisher's mailbox now
            assert fd_signalled(pub._sock)
            sends = 0
            while fd_signalled(pub._sock):  # send until a send takes the signal, as ingest's do
                pub.publish("px.a", Price(symbol="a", price=1.0))
                pub.flush()
                sends += 1
                assert sends < 1_000_000, "no send processed ZeroMQ's commands"
            await eventually(
                lambda: "px." in pub.subscriptions, wake=None, timeout=10, what="the subscription"
            )
        finally:
            sub.close(linger=0)


async def test_what_is_published_within_the_hold_goes_out_when_it_ends_then_heartbeats() -> None:
    clock = FakeClock()
    endpoint = tcp_endpoint()
    got: list[Message] = []

    async def receive() -> None:
        got.extend(m for _, m in await sub.recv_batch(timeout=1))

    with Subscriber(endpoint, ["px.", health_topic("beacon")], clock=clock) as sub:
        async with Publisher(
            endpoint, service="beacon", clock=clock, hold=0.5, heartbeat_interval=0.2
        ) as pub:
            await pub.wait_for_subscriber(health_topic("beacon"), timeout=10)
            for n in range(3):
                pub.publish("px.a", Price(symbol="a", price=float(n)))
            pub.flush()
            await clock.advance_and_settle(0.4)
            assert (pub.stats.sent, pub.stats.heartbeats) == (0, 0)  # within the hold: nothing
            await clock.advance_and_settle(0.1)  # the hold is over: the prices, then a heartbeat
            await eventually(
                lambda: len(got) >= 4, wake=receive, timeout=10, what="the prices and a heartbeat"
            )
    assert [(type(m).__name__, m.seq) for m in got[:4]] == [
        ("Price", 1),
        ("Price", 2),
        ("Price", 3),
        ("Heartbeat", 4),
    ]
    assert [m.price for m in got[:3] if isinstance(m, Price)] == [0.0, 1.0, 2.0]
    assert sub.stats.gaps == 0


async def test_a_snapshot_asked_for_during_the_hold_ends_it_and_is_exact_at_its_seq() -> None:
    clock = FakeClock()  # never advanced: only the snapshot can end the hold
    endpoint, snap = tcp_endpoint(), tcp_endpoint()
    with Subscriber(endpoint, ["px."], clock=clock) as sub:
        async with Publisher(endpoint, service="beacon", clock=clock, hold=60, heartbeat_interval=0) as pub:
            state: dict[str, Price] = {}

            def source(request: SnapshotRequest) -> tuple[int, list[Message]]:
                return pub.seq, [Price(symbol=s, price=p.price) for s, p in state.items()]

            server = SnapshotServer(snap, source, publisher=pub).start()
            try:
                await pub.wait_for_subscriber("px.", timeout=10)
                for n in (1.0, 2.0):
                    state["a"] = Price(symbol="a", price=n)
                    pub.publish("px.a", Price(symbol="a", price=n))
                reply, items = await request_snapshot(snap, "px.", timeout=10)
                assert reply.snapshot_seq == 2 and [
                    (m.price, m.seq) for m in items if isinstance(m, Price)
                ] == [(2.0, 2)]
                got = await sub.recv_batch(timeout=10)  # what the snapshot counts went out before it
                assert [(m.price, m.seq) for _, m in got if isinstance(m, Price)] == [(1.0, 1), (2.0, 2)]
            finally:
                await server.close()
