"""CurveZMQ for deployments across hosts: encryption and client authentication, off by default.

Every binding socket (publishers, PULL command sockets, snapshot servers) is a CURVE server with
the deployment's server key; every connecting socket is a CURVE client that knows the server's
public key and has its own key pair. A ZAP authenticator admits any client with a valid handshake,
or only those whose public certificates are in ``authorized_clients``.

Keys are ZeroMQ certificate files (``poolwire keys DIR`` writes a server and a client pair).
"""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path
from typing import Any, Self

import msgspec
import zmq
import zmq.auth
from zmq.auth.asyncio import AsyncioAuthenticator

from shared import inproc
from shared.backoff import Backoff
from shared.clock import Clock

log = logging.getLogger("poolwire.security")


class CurveConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    server_secret: str = ""  # secret certificate of the binding side (needed by services that bind)
    server_public: str  # public certificate of the server, for every connecting side
    client_secret: str  # this process's secret certificate, used when it connects
    authorized_clients: str = ""  # directory of client public certificates; "" admits any client


class Curve:
    """Loaded keys, applied to sockets before they bind or connect."""

    def __init__(self, config: CurveConfig) -> None:
        self.config = config
        self.server_public, _ = zmq.auth.load_certificate(config.server_public)
        self.client_public, client_secret = zmq.auth.load_certificate(config.client_secret)
        if client_secret is None:
            raise ValueError(f"{config.client_secret} holds no secret key")
        self.client_secret: bytes = client_secret
        self.server_secret: bytes | None = None
        if config.server_secret:
            _, self.server_secret = zmq.auth.load_certificate(config.server_secret)
            if self.server_secret is None:
                raise ValueError(f"{config.server_secret} holds no secret key")
        self.authenticator: AsyncioAuthenticator | None = None

    def start_authenticator(self, ctx: zmq.Context[Any]) -> None:
        if self.authenticator is not None:
            return
        self.authenticator = AsyncioAuthenticator(ctx)
        self.authenticator.start()
        clients = self.config.authorized_clients
        if clients and not Path(clients).is_dir():
            raise ValueError(f"authorized_clients {clients!r} is not a directory")
        self.authenticator.configure_curve(domain="*", location=clients or zmq.auth.CURVE_ALLOW_ANY)

    def server(self, sock: zmq.Socket[Any]) -> None:
        if self.server_secret is None:
            raise ValueError("this process binds a socket but curve.server_secret is not configured")
        sock.curve_secretkey = self.server_secret
        sock.curve_publickey = self.server_public
        sock.curve_server = True

    def client(self, sock: zmq.Socket[Any]) -> None:
        sock.curve_secretkey = self.client_secret
        sock.curve_publickey = self.client_public
        sock.curve_serverkey = self.server_public

    def stop(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None


_active: Curve | None = None


def enable(config: CurveConfig | None, ctx: zmq.Context[Any]) -> None:
    """Secure every socket the bus creates from now on (None turns it off)."""
    global _active
    if _active is not None:
        _active.stop()
    _active = None
    if config is not None:
        curve = Curve(config)
        if curve.server_secret is not None:
            curve.start_authenticator(ctx)
        _active = curve
        log.info("CurveZMQ on (clients: %s)", config.authorized_clients or "any with a valid handshake")


BIND_RETRY_S = 1.0
_BIND_BACKOFF = (0.005, 0.05)  # base and cap of the waits between attempts, seconds


async def bind_async(
    sock: zmq.Socket[Any], endpoint: str, *, clock: Clock | None = None, retry_s: float = BIND_RETRY_S
) -> None:
    """Bind, as a CURVE server when enabled.

    A port released by a socket closed a moment ago in this process is freed by ZeroMQ's I/O
    thread asynchronously, so "address in use" is retried for ``retry_s`` on ``clock`` (the event
    loop runs meanwhile) before it is an error.
    """
    _prepare(sock, endpoint)
    backoff = Backoff(*_BIND_BACKOFF, clock=clock)
    deadline = backoff.clock.monotonic() + retry_s
    while not _try_bind(sock, endpoint, past_deadline=backoff.clock.monotonic() > deadline):
        await backoff.wait()
    inproc.bind_alias(sock, endpoint)


def bind(sock: zmq.Socket[Any], endpoint: str) -> None:
    """:func:`bind_async` for a constructor that cannot await: the same retries, blocking the
    thread while they last (only while a port this process just released is still in use)."""
    _prepare(sock, endpoint)
    backoff = Backoff(*_BIND_BACKOFF)
    deadline = time.monotonic() + BIND_RETRY_S
    while not _try_bind(sock, endpoint, past_deadline=time.monotonic() > deadline):
        time.sleep(backoff.next_delay())
    inproc.bind_alias(sock, endpoint)


class BindLater:
    """For a socket owner that binds: ``bind_later=True`` in its constructor leaves the bind to
    ``await owner.bound(clock)``, whose retries wait on the event loop instead of blocking it.

    Services bind this way; a synchronous caller (the CLI, a test) keeps the constructor's bind.
    """

    _unbound: tuple[zmq.Socket[Any], str] | None = None

    def _bind(self, sock: zmq.Socket[Any], endpoint: str, *, later: bool) -> None:
        if later:
            self._unbound = (sock, endpoint)
        else:
            bind(sock, endpoint)

    async def bound(self, clock: Clock | None = None, *, retry_s: float = BIND_RETRY_S) -> Self:
        """Bind the socket left unbound by ``bind_later=True``; returns the owner."""
        if self._unbound is None:
            raise RuntimeError(f"{type(self).__name__} is already bound (or connects)")
        (sock, endpoint), self._unbound = self._unbound, None
        await bind_async(sock, endpoint, clock=clock, retry_s=retry_s)
        return self


def _prepare(sock: zmq.Socket[Any], endpoint: str) -> None:
    if _active is not None:
        _active.server(sock)
    if endpoint.startswith("ipc://"):
        private_directory(Path(endpoint.removeprefix("ipc://")).parent)


def _try_bind(sock: zmq.Socket[Any], endpoint: str, *, past_deadline: bool) -> bool:
    """True once bound; False when the address is still in use and may be tried again."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        if exc.errno != errno.EADDRINUSE or past_deadline:
            raise zmq.ZMQError(exc.errno, f"cannot bind {endpoint}: {exc.strerror}") from exc
        return False
    return True


def private_directory(path: Path) -> None:
    """Where an ipc:// socket is bound: made 0700 if it is new, so only this user can connect.

    An existing directory is left as it is (it may be shared on purpose), with a warning when other
    users can reach the sockets in it.
    """
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        return
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning(
            "ipc sockets in %s (mode %o) are open to other local users: make it 0700 to keep them out",
            path,
            mode,
        )


def connect(sock: zmq.Socket[Any], endpoint: str) -> None:
    if _active is not None:
        _active.client(sock)
    sock.connect(inproc.target(endpoint))


def create_keys(directory: str) -> tuple[Path, Path]:
    """Write a server and a client certificate pair into ``directory``; returns the secret files."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    _, server_secret = zmq.auth.create_certificates(path, "server")
    _, client_secret = zmq.auth.create_certificates(path, "client")
    return Path(server_secret), Path(client_secret)
