"""Test helpers: free ports, subprocesses that are always reaped, required binaries."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tcp_endpoint() -> str:
    return f"tcp://127.0.0.1:{free_port()}"


def require_binary(name: str) -> str:
    """Path of a program the test needs; skipped locally when absent, a failure under CI."""
    path = shutil.which(name) or next(
        (str(p) for p in [ROOT / "node_modules" / ".bin" / name] if p.exists()), None
    )
    if path is None:
        message = f"{name} is not installed (.ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def python_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWIRE_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@contextmanager
def spawn(
    *args: str, env: Mapping[str, str] | None = None, stdout: int | None = subprocess.PIPE
) -> Iterator[subprocess.Popen[str]]:
    """Run ``python *args`` as a real process; killed and reaped when the block ends."""
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env=python_env(env),
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)
