"""The publisher's subscription tracking over real sockets."""

import select

import zmq

from shared.bus import Publisher, context
from shared.messages import Price
from tests.helpers import eventually


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
        reader = pub._subscription_reader
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
