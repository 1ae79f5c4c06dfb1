"""ipc:// endpoints, the single-host option that needs no keys: the socket's directory is 0700, so
only the user the services run as can connect (the kernel checks, not poolwire)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus import Subscriber
from shared.messages import Heartbeat
from tests.helpers import spawn

NOBODY = 65534
REFUSED, CONNECTED = 10, 11


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every local user can traverse, as /tmp or /run are."""
    base = Path(tempfile.mkdtemp(prefix="poolwire-ipc-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=True)


def connect_as_nobody(path: Path) -> str:
    """Connect to the socket from a child that has become user nobody (a fork: no program to run)."""
    with warnings.catch_warnings():  # 3.12+ warns about fork beside threads; the child only calls the kernel
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child does two system calls and leaves
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            code = CONNECTED
        except PermissionError:
            code = REFUSED
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return {REFUSED: "refused", CONNECTED: "connected"}.get(os.waitstatus_to_exitcode(status), "failed")


async def test_a_service_on_ipc_is_reachable_by_its_user_only(shared_base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to try the socket as another user")
    private = shared_base / "poolwire"
    sock_path = private / "beacon.sock"
    env = {"POOLWIRE_BEACON__PUB": f"ipc://{sock_path}", "POOLWIRE_BEACON__HEARTBEAT": "100ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        async with Subscriber(f"ipc://{sock_path}", ["beacon.health"]) as sub:
            got = await sub.recv_batch(timeout=20)
        assert got and isinstance(got[0][1], Heartbeat)  # the services' own user connects
        assert stat.S_IMODE(private.stat().st_mode) == 0o700  # bind made the directory private
        sock_path.chmod(0o777)  # even a socket file anyone may write to (a loose umask)...
        assert connect_as_nobody(sock_path) == "refused"  # ...is out of another user's reach
        private.chmod(0o755)  # the directory is what keeps them out:
        assert connect_as_nobody(sock_path) == "connected"
