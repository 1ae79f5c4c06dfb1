"""ReadWaiter: a ZeroMQ socket's readiness on the event loop, over real sockets."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import zmq

from shared.sockets import NOBLOCK, ReadWaiter, context, sync_view
from tests.ports import tcp_endpoint


@pytest.fixture
async def pair() -> AsyncIterator[tuple[zmq.Socket[bytes], zmq.Socket[bytes]]]:
    """A connected PUSH -> PULL pair (plain views of asyncio sockets, as the bus uses them)."""
    endpoint = tcp_endpoint()
    pull = context().socket(zmq.PULL)
    pull.bind(endpoint)
    push = context().socket(zmq.PUSH)
    push.connect(endpoint)
    yield sync_view(push), sync_view(pull)
    push.close(linger=0)
    pull.close(linger=0)


def count_calls(loop: asyncio.AbstractEventLoop, name: str, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(loop, name)

    def spy(*args: Any) -> Any:
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(loop, name, spy)
    return calls


async def test_a_wait_ends_when_a_message_arrives(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    push, pull = pair
    waiter = ReadWaiter(pull)
    task = asyncio.create_task(waiter.wait(timeout=10))
    await asyncio.sleep(0)
    assert not task.done()
    push.send(b"x")
    assert await asyncio.wait_for(task, 10) is True
    assert pull.recv(NOBLOCK) == b"x"
    waiter.close()


async def test_a_wait_times_out_without_a_message(pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]]) -> None:
    _, pull = pair
    waiter = ReadWaiter(pull)
    assert await asyncio.wait_for(waiter.wait(timeout=0.05), 10) is False
    assert await waiter.wait(timeout=0) is False
    waiter.close()


async def test_a_message_already_queued_needs_no_wait(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    push, pull = pair
    waiter = ReadWaiter(pull)
    push.send(b"x")
    assert await asyncio.wait_for(waiter.wait(timeout=10), 10) is True
    assert await waiter.wait(timeout=0) is True  # still unread: still readable, at once
    waiter.close()


async def test_the_fd_is_registered_once_for_many_waits_and_unregistered_on_close(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    push, pull = pair
    loop = asyncio.get_running_loop()
    added = count_calls(loop, "add_reader", monkeypatch)
    removed = count_calls(loop, "remove_reader", monkeypatch)
    waiter = ReadWaiter(pull)
    for i in range(5):
        task = asyncio.create_task(waiter.wait(timeout=10))
        await asyncio.sleep(0)
        push.send(b"%d" % i)
        assert await asyncio.wait_for(task, 10) is True
        assert pull.recv(NOBLOCK) == b"%d" % i
    assert len(added) == 1 and removed == []
    waiter.close()
    assert removed == added
    assert loop.remove_reader(added[0]) is False  # nothing left registered


async def test_messages_that_arrive_between_waits_are_all_seen(
    pair: tuple[zmq.Socket[bytes], zmq.Socket[bytes]],
) -> None:
    """The FD's signal is consumed while nobody waits; the next wait still finds the messages."""
    push, pull = pair
    waiter = ReadWaiter(pull)
    got: list[bytes] = []
    for burst in range(20):
        for i in range(3):
            push.send(b"%d.%d" % (burst, i))
        while len(got) < 3 * (burst + 1):
            assert await asyncio.wait_for(waiter.wait(timeout=10), 10) is True
            while True:
                try:
                    got.append(pull.recv(NOBLOCK))
                except zmq.Again:
                    break
        await asyncio.sleep(0)  # the loop turns with the FD's callback and no waiter
    assert got == [b"%d.%d" % (b, i) for b in range(20) for i in range(3)]
    waiter.close()
