"""alerts killed (-9) while a strategy job is in flight: that evaluation's alert is not lost, nor repeated.

The strategy (tests.e2e.strategies:gated) reports its bucket on a Unix socket the test holds and
waits there, so the kill lands exactly between the bucket's claim and its result. The job was
persisted with the claim: the restart dispatches it again (and the killed service's worker, if it
still finishes it, answers the same job: one of the two results is handled, the other is late).
On Redis the restart (a new owner) adopts the job once the killed instance's lease ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.bus import Publisher, Subscriber
from shared.messages import AlertFired, Price
from tests.alerts.conftest import redis_url  # noqa: F401 - the session's redis-server, for store=redis
from tests.e2e.pipeline import Proc
from tests.helpers import eventually, python_env
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow
S = 1_000_000_000


class Gate:
    """The test's end of the gated strategy: which buckets run, and when they may finish."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.buckets: list[int] = []
        self.open = False
        self.held: list[asyncio.StreamWriter] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> Gate:
        self.server = await asyncio.start_unix_server(self._on_job, path=str(self.path))
        return self

    async def _on_job(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        if line:
            self.buckets.append(int(line))
        if self.open:
            writer.write(b"x")
            writer.close()
        else:
            self.held.append(writer)

    def release(self) -> None:
        self.open = True
        for writer in self.held:
            writer.write(b"x")
            writer.close()
        self.held.clear()

    async def close(self) -> None:
        self.release()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_kill_9_with_a_job_in_flight_loses_no_evaluation(
    tmp_path: Path, store: str, request: pytest.FixtureRequest
) -> None:
    # the Redis server first: a skip must not leave the gate's socket open
    redis = request.getfixturevalue("redis_url") if store == "redis" else ""
    source, pub_ep = tcp_endpoint(), tcp_endpoint()
    gate = await Gate(tmp_path / "gate.sock").start()
    section: dict[str, Any] = {
        "sub": [source],
        "pub": pub_ep,
        "jobs": tcp_endpoint(),
        "results": tcp_endpoint(),
        "metrics_port": free_port(),
        "workers": 1,
        "job_timeout": "20s",
        "strategies": [
            {"id": "gated", "kind": "python", "function": "tests.e2e.strategies:gated", "bucket": "1s",
             "universe": ["pm.x"], "params": {"gate": str(gate.path)}, "frequency": "every"},
        ],
    }  # fmt: skip
    if store == "redis":  # sharing state: the restart adopts the job when the dead one's lease ends
        section |= {
            "store": "redis",
            "redis_url": redis,
            "redis_prefix": f"t{uuid.uuid4().hex[:8]}:",
            "job_lease": "2s",
        }
    common = {"data_dir": str(tmp_path / "data"), "heartbeat_interval": "200ms"}
    path = tmp_path / "alerts.yaml"
    path.write_text(yaml.safe_dump({"common": common, "alerts": section}))
    alerts = Proc(
        "alerts", f"exec {sys.executable} -m services.alerts --config {path}", python_env(), tmp_path
    )
    got: list[AlertFired] = []
    try:
        async with (
            Publisher(source, service="ingest", heartbeat_interval=0.2) as prices,
            Subscriber(pub_ep, ["alert."]) as sub,
        ):
            price = 0.5

            async def pump() -> None:
                nonlocal price
                price += 0.001
                prices.publish("px.pm.x", Price(symbol="pm.x", price=price))
                got.extend(m for _, m in await sub.recv_batch(timeout=0.1) if isinstance(m, AlertFired))

            async def pump_until(done: Callable[[], object], timeout: float, what: str) -> None:
                """Move pm.x's price (every 0.1 s, or as alerts arrive) until ``done()``."""
                await eventually(
                    lambda: bool(done()), wake=pump, timeout=timeout, what=lambda: f"{what}\n{alerts.tail()}"
                )

            alerts.start()
            await sub.wait_for_publisher("alerts", timeout=20)
            await pump_until(lambda: gate.buckets, 20, "a job at the gate")
            in_flight = gate.buckets[0]
            alerts.kill9()  # the bucket is claimed, its job is running
            alerts.start()
            gate.release()
            # until alerts of later buckets came, and that evaluation's (or 10 s: it is lost)
            given_up = asyncio.get_running_loop().time() + 10

            def settled() -> bool:
                if not any(a.bucket_ns > in_flight + 3 * S for a in got):
                    return False
                return (
                    any(a.bucket_ns == in_flight for a in got) or asyncio.get_running_loop().time() > given_up
                )

            await pump_until(settled, 30, "alerts")
        assert any(a.bucket_ns == in_flight for a in got), (
            f"the evaluation at {in_flight} was lost; alerts of buckets {sorted(a.bucket_ns for a in got)}"
        )
        evaluations = Counter(a.bucket_ns for a in got)
        assert max(evaluations.values()) == 1, f"published twice: {evaluations.most_common(3)}"
    finally:
        with contextlib.suppress(Exception):
            if alerts.alive():
                alerts.stop()
        alerts.cleanup()
        await gate.close()
