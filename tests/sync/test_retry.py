"""Pools whose scrape failed at start are scraped again while live, until they are all there."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import yaml

from services.simulator.exex_chain import SimChain
from services.simulator.exex_server import ExExServer
from shared.bus import Pusher, Subscriber
from shared.messages import PoolSpec, PoolState, WhitelistAdd
from tests.helpers import eventually, spawn
from tests.ports import free_port, tcp_endpoint
from tests.sync.test_fuzz_service import scrape
from tests.sync.test_service import spec


async def test_pools_are_retried_when_the_chain_comes_up_after_sync() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        chain = SimChain(seed=3, pools_per_protocol=2, events_per_block=6)
        pub = tcp_endpoint()
        config = {
            "common": {"heartbeat_interval": "200ms"},
            "sync": {
                "pub": pub, "pull": tcp_endpoint(), "snapshot": tcp_endpoint(), "metrics_port": 0,
                "exex_socket": f"{tmp}/exex.sock", "scraper": "simulator", "scrape_socket": f"{tmp}/scrape.sock",
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

                async def block() -> None:
                    await server.block()
                    for _topic, msg in await sub.recv_batch(timeout=0.2):
                        if isinstance(msg, PoolState):
                            pools.add(msg.pool)

                await eventually(
                    lambda: len(pools) >= len(chain.pools),
                    wake=block,
                    timeout=30,
                    what="every pool's state",
                    state=lambda: len(pools),
                    process=proc,
                )
            finally:
                await server.close()
            proc.terminate()
            _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
        assert pools == {"0x" + k.hex() for k in chain.pools}
        assert "retrying" in err and "whose scrape failed" in err
        assert "checkpoint not used: the ExEx source without sync.rpc_urls" in err  # said once, at start


async def test_whitelisted_pools_not_on_chain_are_capped_the_rest_forgotten_and_counted() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        chain = SimChain(seed=4, pools_per_protocol=2, events_per_block=6)
        keys = list(chain.pools)
        pub, pull, port = tcp_endpoint(), tcp_endpoint(), free_port()
        config = {
            "common": {"heartbeat_interval": "200ms"},
            "sync": {
                "pub": pub, "pull": pull, "snapshot": tcp_endpoint(), "metrics_port": port,
                "exex_socket": f"{tmp}/exex.sock", "scraper": "simulator", "scrape_socket": f"{tmp}/scrape.sock",
                "pools": [spec(chain.pools[keys[0]])], "failed_pool_retry": "100ms",
                "whitelist_max_missing": 2,
            },
        }  # fmt: skip
        cfg = Path(tmp) / "poolwire.yaml"
        cfg.write_text(yaml.safe_dump(config))
        server = await ExExServer(chain, f"{tmp}/exex.sock", f"{tmp}/scrape.sock").start()
        absent = [PoolSpec(protocol="v2", address="0x" + bytes([0xE0 + i]).hex() * 20) for i in range(5)]
        real = PoolSpec(**spec(chain.pools[keys[1]]))  # type: ignore[arg-type]
        pusher = Pusher(pull, sender="test")
        try:
            with (
                Subscriber(pub, ["dex.pool."]) as sub,
                spawn("-m", "services.sync", "--config", str(cfg)) as proc,
            ):
                await sub.wait_for_publisher("sync", timeout=20)
                await pusher.send(WhitelistAdd(pools=[*absent[:3], real]), timeout=5)
                await pusher.send(WhitelistAdd(pools=absent[3:]), timeout=5)
                name = "poolwire_sync_whitelist_missing_dropped_total"
                while (await asyncio.to_thread(scrape, port)).get(name, 0) < 3:
                    await server.block()  # the stream moves on meanwhile; each block a chance to look
                    await sub.recv_batch(timeout=0.1)
                    assert proc.poll() is None
                for _ in range(5):  # retries of the two kept go on; nothing more is dropped
                    await server.block()
                    await sub.recv_batch(timeout=0.2)
                m = await asyncio.to_thread(scrape, port)
                proc.terminate()
                _, err = proc.communicate(timeout=15)
        finally:
            pusher.close()
            await server.close()
    assert proc.returncode == 0, err[-3000:]
    assert m[name] == 3
    assert m["poolwire_sync_whitelist_missing"] == 2
    assert m["poolwire_sync_pools"] == 2  # the configured pool and the real one added
    assert err.count("is not on chain and 2 whitelisted pools already are not: forgotten") == 3
