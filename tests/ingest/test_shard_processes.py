"""Two ingest shards as real processes against one simulator: they split the assets between them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.ingest.shard import Shard, shard_of
from shared.bus import Pusher, Subscriber
from shared.messages import ForceSubscribe, MarketLifecycle
from tests.helpers import eventually, spawn
from tests.ingest.test_integration import metric, simulator, stop, write_config

pytestmark = pytest.mark.slow


async def test_two_shards_split_discovery_force_subscribe_and_broadcasts(tmp_path: Path) -> None:
    async with simulator(200, events_per_s=50) as (server, ws_url, http_url):
        configs = []
        for i in range(2):
            d = tmp_path / f"s{i}"
            d.mkdir()
            configs.append(
                write_config(
                    d,
                    ws_url,
                    gamma_url=http_url,
                    min_pending=10,
                    shard_index=i,
                    shard_count=2,
                    publisher_id=f"ingest-{i}",
                )
            )
        shares = [set(Shard(i, 2).mine(server.sim.assets)) for i in range(2)]
        assert all(60 < len(s) < 140 for s in shares)

        def placed() -> list[set[str]]:
            return sorted((set(c.assets) for c in server.conns.values()), key=len)

        async with Subscriber([c[1] for c in configs], ["md.market."]) as sub:
            with (
                spawn("-m", "services.ingest", "--config", configs[0][0]) as p0,
                spawn("-m", "services.ingest", "--config", configs[1][0]) as p1,
            ):
                # discovery: each shard subscribes exactly its share, nothing else
                await eventually(
                    lambda: placed() == sorted(shares, key=len),
                    wake=server.changed,
                    timeout=30,
                    what="the two shares",
                )
                assert await metric(configs[1][3], 'poolwire_ingest_shard_info{count="2",index="1"}') == 1
                assert await metric(configs[0][3], "poolwire_ingest_foreign_assets") == len(shares[1])
                await sub.wait_for_publisher("ingest", timeout=10)
                while {p.publisher for p in sub.publishers.values()} != {"ingest-0", "ingest-1"}:
                    await sub.recv_batch(timeout=0.5)

                # the same ForceSubscribe pushed to both: each takes its own share of it
                extra = [f"9{n:03d}" for n in range(8)]
                for _, _, pull, _ in configs:
                    pusher = Pusher(pull, sender="test")
                    await pusher.send(ForceSubscribe(asset_ids=extra), timeout=5)
                    pusher.close()
                want = [shares[i] | set(Shard(i, 2).mine(extra)) for i in range(2)]
                await eventually(
                    lambda: placed() == sorted(want, key=len), wake=server.changed, timeout=20, what="forced"
                )

                # new_market reaches every connection; each asset is announced once, by its shard
                made = await server.new_markets(4)
                new = {a.asset_id for m in made for a in m.assets}
                announced: dict[str, set[str]] = {}

                async def receive() -> None:
                    for _, msg in await sub.recv_batch(timeout=0.5):
                        if isinstance(msg, MarketLifecycle) and msg.status == "new":
                            announced.setdefault(msg.asset, set()).add(msg.publisher)

                await eventually(
                    lambda: set(announced) == new,
                    wake=receive,
                    timeout=20,
                    what="new_market announcements",
                    state=lambda: sorted(announced),
                )
                for asset, publishers in announced.items():
                    assert publishers == {f"ingest-{shard_of(asset, 2)}"}, asset
                assert sub.stats.gaps == 0
                assert await asyncio.to_thread(stop, p0) < 10.0
                assert await asyncio.to_thread(stop, p1) < 10.0
                assert p0.returncode == 0 and p1.returncode == 0
