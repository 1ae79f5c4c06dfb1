"""Publishers this process also serves over ``inproc://``: services co-hosted in one process.

``python -m services ingest registry alerts`` runs several services on one event loop (README,
"Fewer processes"). Each publisher still binds its configured endpoint, which other programs read
as ever, and binds ``inproc://poolwire/<endpoint>`` too; a socket of this process that connects to
one of those endpoints (the same string as the publisher's ``pub``) takes the in-process one. A
message then goes from one socket to the other through ZeroMQ's in-memory pipe: no I/O thread,
no TCP, no other process to wake.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import zmq

log = logging.getLogger("poolwire.bus")

_shared: set[str] = set()


def share(endpoints: Iterable[str]) -> None:
    """Serve these endpoints in-process as well, from now on (binds and connects that follow)."""
    _shared.update(endpoints)


def clear() -> None:
    _shared.clear()


def alias(endpoint: str) -> str:
    return f"inproc://poolwire/{endpoint}"


def bind_alias(sock: zmq.Socket[Any], endpoint: str) -> None:
    """After ``sock`` bound ``endpoint``: bind its in-process alias too, if it is shared."""
    if endpoint in _shared:
        sock.bind(alias(endpoint))


def target(endpoint: str) -> str:
    """What a socket of this process connects to for ``endpoint``."""
    if endpoint in _shared:
        log.info("%s: read in-process (%s)", endpoint, alias(endpoint))
        return alias(endpoint)
    return endpoint
