"""The sync service as a real process on a real node: live state, swaps, kill -9 and resume."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from shared.bus import Subscriber
from shared.messages import BlockUpdate, PoolState, Swap
from shared.snapshot import request_snapshot
from tests.helpers import spawn, tcp_endpoint
from tests.sync.chain import Chain, Trader


def config(chain: Chain, tmp: str, **extra: Any) -> tuple[Path, dict[str, str]]:
    eps = {"pub": tcp_endpoint(), "pull": tcp_endpoint(), "snapshot": tcp_endpoint()}
    cfg = {
        "common": {"heartbeat_interval": "200ms", "data_dir": f"{tmp}/data"},
        "sync": {
            **eps, "metrics_port": 0, "rpc_urls": [chain.a.url], "chain_id": 31337,
            "v4_state_view": chain.state_view, "v4_pool_manager": chain.manager,
            "poll_interval": "50ms", "checkpoint_interval": "100ms", "pools": chain.specs(), **extra,
        },
    }  # fmt: skip
    path = Path(tmp) / "poolwire.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, eps


class Watch:
    def __init__(self, pub: str) -> None:
        self.sub = Subscriber(pub, ["dex."])
        self.swaps: list[Swap] = []
        self.head: tuple[int, str] = (0, "")

    async def until_head(
        self, chain: Chain, proc: subprocess.Popen[str], timeout: float = 30, nudge: bool = False
    ) -> None:
        """Wait for the service's dex.block of the node's head. ``nudge``: when nothing arrives
        (a restarted publisher's first messages may go before our SUB reconnected), mine an
        empty block so that there is a new head to report."""

        def target() -> tuple[int, str]:
            number, bhash = chain.head()
            return number, "0x" + bhash.hex()

        async def run() -> None:
            want = target()
            while self.head != want:
                assert proc.poll() is None, proc.communicate()[1][-3000:]
                batch = await self.sub.recv_batch(timeout=0.5)
                for _topic, msg in batch:
                    if isinstance(msg, BlockUpdate) and msg.status == "committed":
                        self.head = (msg.number, msg.hash)
                    elif isinstance(msg, Swap):
                        self.swaps.append(msg)
                if not batch and nudge:
                    chain.mine()
                    want = target()

        await asyncio.wait_for(run(), timeout)


async def assert_state(chain: Chain, snap: str) -> None:
    number, _ = chain.head()
    _header, items = await request_snapshot(snap, timeout=5)
    states = {s.pool: s for s in items if isinstance(s, PoolState)}
    truth = chain.truth(number)
    assert len(states) == len(truth)
    for key, want in truth.items():
        state = states["0x" + key.hex()]
        assert state.block == number
        if state.protocol == "v2":
            assert (int(state.reserve0), int(state.reserve1)) == want
        else:
            assert (int(state.sqrt_price_x96), state.tick, int(state.liquidity)) == want[:3]


async def test_live_state_swaps_and_kill_9_then_resume_from_the_checkpoint(chain: Chain) -> None:
    trader = Trader(chain, seed=21)
    for _ in range(3):
        trader.block(8)
    with tempfile.TemporaryDirectory() as tmp:
        path, eps = config(chain, tmp)
        watch = Watch(eps["pub"])
        try:
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.sub.wait_for_publisher("sync", timeout=20)
                for _ in range(8):
                    trader.block(8)
                    await watch.until_head(chain, proc)
                await assert_state(chain, eps["snapshot"])
                assert watch.swaps and {s.protocol for s in watch.swaps} == {"v2", "v3", "v4"}
                checkpoint = Path(tmp) / "data" / "sync" / "checkpoint.msgpack"
                while not checkpoint.exists():  # written every 100 ms: wait for the next block's news
                    trader.block(2)
                    await watch.until_head(chain, proc)
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            for _ in range(12):  # blocks the service does not see
                trader.block(8)
            chain.mine(5)
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.until_head(chain, proc, nudge=True)
                await assert_state(chain, eps["snapshot"])
                trader.block(8)
                await watch.until_head(chain, proc)
                await assert_state(chain, eps["snapshot"])
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=15)
                assert proc.returncode == 0, err[-3000:]
                assert "resumed from the checkpoint" in err
                assert "checkpoint written at block" in err
        finally:
            watch.sub.close()


async def test_a_reorged_checkpoint_is_not_trusted_the_pools_are_scraped_again(chain: Chain) -> None:
    trader = Trader(chain, seed=22)
    trader.block(8)
    with tempfile.TemporaryDirectory() as tmp:
        path, eps = config(chain, tmp)
        watch = Watch(eps["pub"])
        try:
            snap = chain.a.rpc("evm_snapshot")
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.sub.wait_for_publisher("sync", timeout=20)
                trader.block(8)
                await watch.until_head(chain, proc)
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=15)
                assert "checkpoint written at block" in err
            chain.a.rpc("evm_revert", snap)
            other = Trader(chain, seed=23)
            for _ in range(3):
                other.block(6)
            watch.head = (0, "")
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.until_head(chain, proc, nudge=True)
                await assert_state(chain, eps["snapshot"])
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=15)
                assert "no longer canonical" in err
        finally:
            watch.sub.close()


def test_without_a_node_or_a_socket_the_service_says_so_and_exits_2() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "poolwire.yaml"
        path.write_text(yaml.safe_dump({"sync": {"metrics_port": 0}}))
        with spawn("-m", "services.sync", "--config", str(path)) as proc:
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert "sync.rpc_urls" in err and "sync.exex_socket" in err


async def test_the_exex_socket_path_on_real_chain_data_through_the_bridge(chain: Chain) -> None:
    trader = Trader(chain, seed=31)
    trader.block(8)
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/exex.sock"
        path, eps = config(chain, tmp, source="exex", exex_socket=sock, scraper="rpc")
        watch = Watch(eps["pub"])
        try:
            with (
                spawn(
                    "-m",
                    "services.simulator.exex_bridge",
                    "--rpc",
                    chain.a.url,
                    "--socket",
                    sock,
                    "--poll",
                    "0.05",
                ),
                spawn("-m", "services.sync", "--config", str(path)) as proc,
            ):
                await watch.sub.wait_for_publisher("sync", timeout=20)
                await watch.until_head(chain, proc, nudge=True)
                for _ in range(6):
                    trader.block(8)
                    await watch.until_head(chain, proc)
                await assert_state(chain, eps["snapshot"])
                snap = chain.a.rpc("evm_snapshot")
                trader.block(8)
                await watch.until_head(chain, proc)
                chain.a.rpc("evm_revert", snap)
                other = Trader(chain, seed=32)
                other.block(6)
                other.block(6)
                await watch.until_head(chain, proc)
                await assert_state(chain, eps["snapshot"])
                assert watch.swaps
        finally:
            watch.sub.close()
