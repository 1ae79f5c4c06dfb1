"""Fixtures: a real redis-server on a free port (session), and a store of each backend."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from tests.helpers import redis_server
from tests.ports import free_port


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    binary = redis_server()
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # redis logs to stdout; bounded by its own exit on failure
            lines.append(line)
            if "Ready to accept connections" in line:
                break
        else:
            pytest.fail("redis-server did not start:\n" + "".join(lines))
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Makes stores of one backend; calling it again gives a store on the same state (a restart)."""
    made: list[Any] = []
    if request.param == "sqlite":
        path = str(tmp_path / "alerts.sqlite3")

        def make(large_universe: int = 1000) -> Any:
            s = SqliteStore(path, large_universe=large_universe)
            made.append(s)
            return s
    else:
        url = request.getfixturevalue("redis_url")
        prefix = f"t{uuid.uuid4().hex[:8]}:"

        def make(large_universe: int = 1000) -> Any:
            s = RedisStore(url, prefix=prefix, large_universe=large_universe)
            made.append(s)
            return s

    yield make
    for s in made:
        s.close()
