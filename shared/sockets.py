"""What every ZeroMQ socket of the bus shares: the context, limits, NOBLOCK drains, readiness waits.

:mod:`shared.publisher`, :mod:`shared.subscriber` and :mod:`shared.pipes` build on this module;
:mod:`shared.bus` gathers all of them into one API.
"""

from __future__ import annotations

import asyncio
import os
import socket as _socket

import zmq
import zmq.asyncio

DEFAULT_HWM = 100_000
NOBLOCK = int(zmq.NOBLOCK)  # a plain int: pyzmq re-wraps enum flags on every call (5 % of a drain)
POLLIN = int(zmq.POLLIN)
DEFAULT_MAX_BATCH = 256
# Sockets that receive from outside (PULL commands and jobs, snapshot ROUTERs) refuse a larger frame:
# ZeroMQ drops the connection that sent it before the frame is read into memory (common.max_message_size).
DEFAULT_MAX_MESSAGE_SIZE = 4 * 1024 * 1024


def context() -> zmq.asyncio.Context:
    """The process's shared asyncio ZeroMQ context."""
    return zmq.asyncio.Context.instance()


def sync_view(sock: zmq.asyncio.Socket) -> zmq.Socket[bytes]:
    """A plain socket over the same underlying handle: NOBLOCK sends and drains without futures."""
    return zmq.Socket.shadow(sock.underlying)


class ReadWaiter:
    """Waits until a ZeroMQ socket has a message, its FD registered with the loop once, not per wait.

    ZeroMQ's FD is edge-triggered: it signals that the socket's state may have changed, and reading
    ZMQ_EVENTS both answers and re-arms it. So a wait checks the events, then arms its future and
    waits; the FD's callback reads the events every time it fires, waiting or not, so a signal
    never stays pending.
    Registering once saves two ``epoll_ctl`` calls a wait, and the loop is looked up once
    (``asyncio.get_running_loop`` makes a ``getpid`` system call on Python 3.11): ~2-3 us a wait,
    at thousands of waits a second in each subscriber. pyzmq's own asyncio poll builds futures and
    timers on every call and was measured stalling 3-5 ms at the 99th percentile.

    Bound to the event loop of its first wait; :meth:`close` unregisters the FD, before the socket
    closes.
    """

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self._sock = sock
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int = sock.getsockopt(zmq.FD)  # type: ignore[assignment]
        self._waiter: asyncio.Future[bool] | None = None
        self.suspended = False  # whether the last wait gave the loop a turn (it was not readable at once)

    def readable(self) -> bool:
        return bool(self._sock.getsockopt(zmq.EVENTS) & POLLIN)  # type: ignore[operator]

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the waits run on (looked up once)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
            loop.add_reader(self._fd, self._on_fd)
        return loop

    def _on_fd(self) -> None:
        if self.readable():
            self._wake(True)

    def poke(self) -> None:
        """Check the events now: another operation on the socket may have taken the FD's signal.

        Any send or receive processes ZeroMQ's pending commands, which reads the FD's signal; a
        message those commands queued then waits with no signal left to fire the callback.
        """
        self._on_fd()

    def _wake(self, result: bool) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(result)

    async def wait(self, timeout: float | None = None) -> bool:
        """True once the socket has a message; False if ``timeout`` seconds pass first."""
        self.suspended = False
        if self.readable():
            return True
        if timeout is not None and timeout <= 0:
            return False
        self.suspended = True
        loop = self.loop
        waiter = self._waiter = loop.create_future()
        timer = None if timeout is None else loop.call_later(timeout, self._wake, False)
        try:
            # No second check: the FD stays registered, and the loop's poll is level-triggered, so
            # a signal that came after the check above fires the callback (even on the first wait,
            # registered after it).
            return await waiter or self.readable()
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and not loop.is_closed():
            loop.remove_reader(self._fd)


def default_publisher_id(service: str) -> str:
    return os.environ.get("POOLWIRE_PUBLISHER_ID") or f"{service}@{_socket.gethostname()}:{os.getpid()}"
