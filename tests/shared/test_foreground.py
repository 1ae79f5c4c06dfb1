"""shared.foreground: Ctrl-C at a real terminal (a pty) stops the command, not its caller (make)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

from tests.helpers import ROOT, python_env

# Stands for honcho: says it is up, and exits as honcho does when a signal stops it (128 + signum).
SUPERVISOR = """
import signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM):
    signal.signal(s, lambda n, f: sys.exit(128 + n))
print("ready", flush=True)
time.sleep(60)
sys.exit(5)
"""

# Stands for make: a session of its own on the pty, dies of a SIGINT as make does, and reports the
# status of the command it ran.
CALLER = """
import os, signal, subprocess, sys
os.setsid()
fd = os.open(sys.argv[1], os.O_RDWR)  # a session leader opening a tty makes it its terminal
for n in (0, 1, 2):
    os.dup2(fd, n)
signal.signal(signal.SIGINT, signal.SIG_DFL)
rc = subprocess.call([sys.executable, "-m", "shared.foreground", sys.executable, "-c", sys.argv[2]])
print(f"RC={rc}", flush=True)
sys.exit(rc)
"""


def _read_until(fd: int, needle: bytes, timeout: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout
    while needle not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {needle!r} in {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: every slave end closed
                break
            seen += chunk
    return seen


def test_ctrl_c_at_the_terminal_stops_the_command_and_the_caller_exits_0() -> None:
    master, slave = os.openpty()
    caller = subprocess.Popen(
        [sys.executable, "-c", CALLER, os.ttyname(slave), SUPERVISOR], cwd=ROOT, env=python_env()
    )
    try:  # the slave stays open here too: reads on the master fail while no process holds it
        _read_until(master, b"ready", 20)
        os.write(master, b"\x03")  # the terminal's Ctrl-C: SIGINT to its foreground process group
        out = _read_until(master, b"RC=", 20)
        assert caller.wait(timeout=20) == 0, out
        assert b"RC=0" in out
    finally:
        if caller.poll() is None:
            caller.kill()
            caller.wait()
        os.close(slave)
        os.close(master)


def test_without_a_terminal_signals_are_passed_on_and_failures_kept() -> None:
    def start(code: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "shared.foreground", sys.executable, "-c", code],
            cwd=ROOT,
            env=python_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # no controlling terminal
        )

    proc = start(SUPERVISOR)
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 0
    assert proc.stdout.read() == ""
    proc.stdout.close()

    failing = start("import sys; sys.exit(3)")
    assert failing.wait(timeout=20) == 3
    assert failing.stdout is not None
    failing.stdout.close()
    killed = start("import os, signal; os.kill(os.getpid(), signal.SIGKILL)")
    assert killed.wait(timeout=20) == 128 + signal.SIGKILL
    assert killed.stdout is not None
    killed.stdout.close()
