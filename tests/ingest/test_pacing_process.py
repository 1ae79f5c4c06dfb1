"""The paced loop in the real service: ingest as a process against the simulator, over real sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.bus import Subscriber
from shared.messages import Message
from tests.helpers import eventually, spawn
from tests.ingest.test_integration import (
    CopyCountingServer,
    assert_contiguous,
    collect_to_the_last,
    collect_until,
    hashes_by_asset,
    metric,
    sim_hashes,
    simulator,
    write_config,
)

pytestmark = pytest.mark.slow


async def test_a_paced_loop_naps_under_load_and_publishes_every_change(tmp_path: Path) -> None:
    """The simulator writes a tick every 20 ms; with a pace of 50 ms each tick after the first comes
    within a pace of the loop going idle, so the loop naps, and what arrives during a nap is read
    after it: every change is still published, in order, and the last hash of each asset is the
    simulator's."""
    async with simulator(40, events_per_s=400, server_cls=CopyCountingServer) as (server, ws_url, _):
        server.history = []
        cfg, pub, _pull, metrics = write_config(
            tmp_path, ws_url, assets=list(server.sim.assets), min_pending=10, loop_pace="50ms"
        )
        got: list[tuple[str, Message]] = []
        async with Subscriber(pub, ["md."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg):
                await sub.wait_for_publisher("ingest", timeout=20)
                await eventually(
                    lambda: server.connection_sizes() == [40],
                    wake=server.changed,
                    timeout=20,
                    what="one connection",
                )
                await collect_until(sub, got, lambda: server.events > 600, 30)
                server.slow(0)
                truth = sim_hashes(server.history)
                last = {a: hashes[-1] for a, hashes in truth.items()}
                await collect_to_the_last(sub, got, last)
                naps = await metric(metrics, "poolwire_ingest_loop_naps_total")
                napped = await metric(metrics, "poolwire_ingest_loop_nap_seconds_total")
        assert naps >= 5, f"the loop napped {naps} times over ~75 ticks, each within a pace of the last"
        assert 0 < napped <= naps * 0.05
        assert assert_contiguous(hashes_by_asset(got), truth, set(last)) == len(last)
