"""``shared.client.follow`` (the Clone consumer) across a kill -9 of the state owner.

The owner has a stable publisher id (a container restarted on the same host: same hostname, pid 1),
so its restarted incarnation numbers its messages from 1 again under the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from shared.bus import Pusher, Subscriber
from shared.client import follow
from shared.messages import DetectorEvent, Message, SnapshotReply, ZoneCreated, ZoneSnapshotItem
from tests.e2e.pipeline import Proc
from tests.helpers import eventually, python_env
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow

ZONES = 40


async def test_follow_sees_the_restarted_owners_updates(tmp_path: Path) -> None:
    pub, pull, snap = tcp_endpoint(), tcp_endpoint(), tcp_endpoint()
    config = {
        "common": {"data_dir": str(tmp_path / "data")},
        "registry": {
            "pub": pub, "pull": pull, "snapshot": snap, "prices": [tcp_endpoint()],
            "metrics_port": free_port(), "detectors": {"enabled": False}, "pools": {"H1": {"ttl": "2h"}},
        },
    }  # fmt: skip
    path = tmp_path / "registry.yaml"
    path.write_text(yaml.safe_dump(config))
    env = python_env({"POOLWIRE_PUBLISHER_ID": "registry@e2e"})
    registry = Proc("registry", f"exec {sys.executable} -m services.registry --config {path}", env, tmp_path)
    seen: list[tuple[str, Message]] = []
    changed = asyncio.Event()

    async def consume() -> None:
        async for topic, msg in follow(pub, snap, "zone."):
            seen.append((topic, msg))
            changed.set()

    async def until(cond: Callable[[], bool], timeout: float, what: str) -> None:
        await eventually(cond, wake=changed, timeout=timeout, what=lambda: f"{what}\n{registry.tail()}")

    def zone(symbol: str) -> DetectorEvent:
        return DetectorEvent(
            detector="t",
            symbol=symbol,
            timeframe="H1",
            kind="custom",
            top=0.6,
            bottom=0.5,
            created_ns=time.time_ns(),
        )

    pusher = Pusher(pull, sender="test-detector")
    task: asyncio.Task[None] | None = None
    try:
        async with Subscriber(pub, ("zone.created.",)) as plain:
            registry.start()
            await plain.wait_for_publisher("registry", timeout=20)
            for i in range(ZONES):
                await pusher.send(zone(f"pm.{i}"), timeout=5)
            created = 0
            while created < ZONES:
                batch = await plain.recv_batch(timeout=10)
                assert batch, "zones not created"
                created += len(batch)

            task = asyncio.get_running_loop().create_task(consume())
            await until(lambda: sum(t == "snapshot" for t, _ in seen) == ZONES + 1, 20, "the snapshot")
            assert isinstance(seen[0][1], SnapshotReply)
            assert all(isinstance(m, ZoneSnapshotItem) for _, m in seen[1:])

            await registry.kill9_and_restart(heard_by=plain)
            await pusher.send(zone("pm.new"), timeout=5)
            published: list[tuple[str, Message]] = []

            async def receive() -> None:
                published.extend(await plain.recv_batch(timeout=1))

            await eventually(
                lambda: any(isinstance(m, ZoneCreated) and m.zone.symbol == "pm.new" for _, m in published),
                wake=receive,
                timeout=10,
                what="pm.new published",
            )

        def has_new_zone() -> bool:  # as an update, or in the state fetched from the new incarnation
            return any(
                isinstance(m, ZoneCreated | ZoneSnapshotItem) and m.zone.symbol == "pm.new" for _, m in seen
            )

        await until(has_new_zone, 5, "follow() to show the zone created after the restart")
        headers = [m for _, m in seen if isinstance(m, SnapshotReply)]
        assert len(headers) == 2  # the state was fetched again from the new incarnation
        assert headers[1].count in (
            ZONES,
            ZONES + 1,
        )  # every zone survived kill -9 (+ pm.new if already made)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        pusher.close()
        with contextlib.suppress(Exception):
            if registry.alive():
                registry.stop()
        registry.cleanup()
