"""A service's loops, run together until a stop is asked or one of them fails.

``run_loops`` is the one shape of a service's main: its loops in an ``asyncio.TaskGroup`` with a
watcher of ``stopping``. A stop cancels every loop and returns; a loop that raises cancels the
others and its exception (itself, not a group of one) reaches the runner, which logs it and exits 1.
A loop that returns simply ends; the others go on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any


class _Stopped(Exception):
    """Raised by the watcher when ``stopping`` is set: how a TaskGroup is told to wind down."""


async def _watch(stopping: asyncio.Event) -> None:
    await stopping.wait()
    raise _Stopped


async def run_loops(stopping: asyncio.Event, loops: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run ``loops`` (name -> coroutine) until ``stopping`` is set or one fails."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_watch(stopping), name="stop-watch")
            for name, loop in loops.items():
                group.create_task(loop, name=name)
    except* _Stopped:
        pass
    except* Exception as failed:
        errors = failed.exceptions
        if len(errors) == 1 and not isinstance(errors[0], BaseExceptionGroup):
            raise errors[0] from None
        raise
