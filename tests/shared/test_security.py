"""CurveZMQ: an authorized client reads the stream; a stranger or a plaintext peer reads nothing."""

import asyncio
import errno
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
import zmq
import zmq.auth

from shared import security
from shared.bus import Publisher, Subscriber, context
from shared.clock import FakeClock
from shared.messages import Price
from shared.security import CurveConfig, create_keys
from tests.helpers import ROOT, eventually, python_env, spawn
from tests.ports import tcp_endpoint


def curve_config(keys: Path, authorized: Path | None) -> CurveConfig:
    return CurveConfig(
        server_secret=str(keys / "server.key_secret"),
        server_public=str(keys / "server.key"),
        client_secret=str(keys / "client.key_secret"),
        authorized_clients=str(authorized) if authorized else "",
    )


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[Path]:
    create_keys(str(tmp_path / "keys"))
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_text((tmp_path / "keys" / "client.key").read_text())
    security.enable(curve_config(tmp_path / "keys", authorized), context())
    yield tmp_path
    security.enable(None, context())


def stranger(endpoint: str, keys: Path, rogue: bool) -> zmq.asyncio.Socket:
    sock = context().socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    if rogue:  # valid CURVE handshake, but a key the server never authorized
        public, secret = zmq.auth.load_certificate(zmq.auth.create_certificates(keys, "rogue")[1])
        sock.curve_secretkey, sock.curve_publickey = secret, public
        sock.curve_serverkey = zmq.auth.load_certificate(keys / "keys" / "server.key")[0]
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    return sock


async def test_only_authorized_clients_read_the_stream(keys: Path) -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0.05) as pub:
        rogue, plain = stranger(endpoint, keys, rogue=True), stranger(endpoint, keys, rogue=False)
        with Subscriber(endpoint, ["px."]) as sub:
            await sub.wait_for_publisher("ingest", timeout=10)
            pub.publish("px.pm.a", Price(symbol="pm.a", price=0.5))
            got = await asyncio.wait_for(sub.recv_batch(), 10)
            # The authorized subscriber has had heartbeats and data; the others get nothing at all.
            assert not await rogue.poll(300)
            assert not await plain.poll(300)
        rogue.close()
        plain.close()
    assert got[0][1] == Price(
        symbol="pm.a",
        price=0.5,
        publisher=pub.publisher_id,
        seq=got[0][1].seq,
        topic_seq=1,
        publish_ns=got[0][1].publish_ns,
    )


async def test_a_service_under_curve_is_read_with_the_cli(tmp_path: Path) -> None:
    create_keys(str(tmp_path / "keys"))
    k = tmp_path / "keys"
    config = tmp_path / "poolwire.yaml"
    config.write_text(
        "common:\n  curve:\n"
        f"    server_secret: {k / 'server.key_secret'}\n    server_public: {k / 'server.key'}\n"
        f"    client_secret: {k / 'client.key_secret'}\n"
    )
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__HEARTBEAT": "100ms"}

    async def tap(*extra: str, timeout: str = "5") -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "shared.cli",
            *extra,
            "tap",
            "--connect",
            endpoint,
            "--json",
            "--count",
            "1",
            "--timeout",
            "5",
            "beacon.",
            cwd=ROOT,
            env=python_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode()

    with spawn("-m", "tests.shared.beacon", "--config", str(config), env=env):
        code, out = await tap("--config", str(config))
        assert code == 0
        assert json.loads(out)["type"] == "Heartbeat"
        code, out = await tap(timeout="1")  # no keys: the handshake never completes, nothing is read
        assert (code, out) == (3, "")


def test_bad_key_file_stops_the_service_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "poolwire.yaml"
    config.write_text(
        "common:\n  curve:\n    server_public: /nonexistent/server.key\n    client_secret: /nonexistent/c\n"
    )
    with spawn("-m", "tests.shared.beacon", "--config", str(config)) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "common.curve" in err


def test_keys_command_writes_two_pairs(tmp_path: Path) -> None:
    from shared.cli import main

    assert main(["keys", str(tmp_path / "k")]) == 0
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == [
        "client.key",
        "client.key_secret",
        "server.key",
        "server.key_secret",
    ]


class PortInUse:
    """A socket whose address stays in use for its first ``busy`` binds."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.attempts = 0

    def bind(self, endpoint: str) -> None:
        self.attempts += 1
        if self.attempts <= self.busy:
            raise zmq.ZMQError(errno.EADDRINUSE)


async def bind_on(clock: FakeClock, sock: PortInUse) -> asyncio.Task[None]:
    return asyncio.create_task(
        security.bind_async(cast(zmq.Socket[Any], sock), "tcp://127.0.0.1:1", clock=clock)
    )


async def test_bind_async_retries_a_port_in_use_on_the_clock_while_the_loop_runs() -> None:
    clock, sock = FakeClock(), PortInUse(busy=2)
    task = await bind_on(clock, sock)
    for attempt in (1, 2):
        await eventually(
            lambda: clock.sleepers == 1, wake=None, timeout=5, what=f"the wait after attempt {attempt}"
        )
        assert sock.attempts == attempt and not task.done()  # waiting, and this test's task runs meanwhile
        clock.advance(0.05)  # the longest wait between attempts
    await asyncio.wait_for(task, 5)
    assert sock.attempts == 3


async def test_bind_async_gives_up_after_retry_s_with_the_bind_error() -> None:
    clock, sock = FakeClock(), PortInUse(busy=10_000)
    task = await bind_on(clock, sock)
    while not task.done():
        await eventually(
            lambda: clock.sleepers == 1 or task.done(), wake=None, timeout=5, what="the next wait"
        )
        clock.advance(0.05)
    with pytest.raises(zmq.ZMQError) as raised:
        await task
    assert raised.value.errno == errno.EADDRINUSE and "cannot bind tcp://127.0.0.1:1" in str(raised.value)
    assert 1.0 / 0.05 <= sock.attempts <= 1.0 / 0.005 + 2  # waits between 2.5 and 50 ms for 1 s


def test_bind_gives_up_on_an_error_other_than_address_in_use() -> None:
    sock = context().socket(zmq.PUB)
    with pytest.raises(zmq.ZMQError):
        security.bind(sock, "tcp://256.0.0.1:1")
    sock.close()


async def test_a_socket_bound_later_waits_on_the_loop_for_a_port_in_use_then_serves() -> None:
    endpoint, clock = tcp_endpoint(), FakeClock()
    holder = context().socket(zmq.PUB)
    holder.bind(endpoint)
    pub = Publisher(endpoint, service="test", heartbeat_interval=0, bind_later=True)  # no bind yet
    task = asyncio.create_task(pub.bound(clock, retry_s=3600))
    await eventually(lambda: clock.sleepers == 1, wake=None, timeout=5, what="a wait for the port")
    assert not task.done()  # the port is in use; the loop (this test) runs meanwhile
    holder.close(linger=0)
    while not task.done():  # ZeroMQ frees the port on its I/O thread: retry until it has
        await eventually(lambda: clock.sleepers == 1 or task.done(), wake=None, timeout=5, what="a retry")
        clock.advance(0.05)
    assert await task is pub
    pub.start()
    sub = Subscriber(endpoint, ("",))
    try:
        await pub.wait_for_subscriber("", timeout=5)
        pub.publish("px.test", Price(symbol="test", price=1.0, event_ns=1))
        pub.flush()
        [(topic, msg)] = await sub.recv_batch(timeout=5)
        assert topic == "px.test" and isinstance(msg, Price) and msg.price == 1.0
        with pytest.raises(RuntimeError, match="already bound"):
            await pub.bound(clock)
    finally:
        sub.close()
        await pub.close()
