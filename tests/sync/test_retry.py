"""Pools whose scrape failed at start are scraped again while live, until they are all there."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import yaml

from services.simulator.exex_chain import SimChain
from services.simulator.exex_server import ExExServer
from shared.bus import Subscriber
from shared.messages import PoolState
from tests.helpers import spawn, tcp_endpoint
from tests.sync.test_service import spec


async def test_pools_are_retried_when_the_chain_comes_up_after_sync() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        chain = SimChain(seed=3, pools_per_protocol=2, events_per_block=6)
        pub = tcp_endpoint()
        config = {
            "common": {"heartbeat_interval": "200ms"},
            "sync": {
                "pub": pub, "pull": tcp_endpoint(), "snapshot": tcp_endpoint(), "metrics_port": 0,
                "exex_socket": f"{tmp}/exex.sock", "scrape_socket": f"{tmp}/scrape.sock",
                "pools": [spec(p) for p in chain.pools.values()], "failed_pool_retry": "200ms",
                "backoff_max": "200ms",
            },
        }  # fmt: skip
        cfg = Path(tmp) / "poolwire.yaml"
        cfg.write_text(yaml.safe_dump(config))
        with (
            Subscriber(pub, ["dex.pool."]) as sub,
            spawn("-m", "services.sync", "--config", str(cfg)) as proc,
        ):
            await sub.wait_for_publisher("sync", timeout=20)  # live, with every scrape failed
            server = await ExExServer(chain, f"{tmp}/exex.sock", f"{tmp}/scrape.sock").start()
            try:
                pools: set[str] = set()

                async def until_all_pools() -> None:
                    while len(pools) < len(chain.pools):
                        await server.block()
                        for _topic, msg in await sub.recv_batch(timeout=0.2):
                            if isinstance(msg, PoolState):
                                pools.add(msg.pool)

                await asyncio.wait_for(until_all_pools(), 30)
            finally:
                await server.close()
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert pools == {"0x" + k.hex() for k in chain.pools}
        assert "retrying" in err and "whose scrape failed" in err
        assert "checkpoint not used: the ExEx source without sync.rpc_urls" in err  # said once, at start
