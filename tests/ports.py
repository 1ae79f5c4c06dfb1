"""Ports for the servers a test or benchmark starts, free of two races.

``bind(0)`` hands out ports from the kernel's ephemeral range. A port chosen that way and handed to
a child process is free only until the child binds it, and in that window every outgoing connection
(a ZeroMQ peer reconnecting, an HTTP client) may take the same port as its local end. Two
``bind(0)`` calls may also return the same port. Ports here come from below the ephemeral range,
where the kernel never picks a local port, each handed out once per process.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

_LOWEST = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _candidates() -> itertools.cycle[int]:
    top = _ephemeral_low()
    span = top - _LOWEST
    start = _LOWEST + (os.getpid() * 7_919) % span  # concurrent runs start apart
    return itertools.cycle([*range(start, top), *range(_LOWEST, start)])


_next = _candidates()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port nobody listens on now, never returned before by this process."""
    for port in _next:
        if _bindable(port):
            return port
    raise AssertionError("unreachable: the cycle is endless")


def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"
