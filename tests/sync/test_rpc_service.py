"""The sync service as a real process on a real node: live state, swaps, kill -9 and resume."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from services.sync import checkpoint
from services.sync.exex_client import ExExClient
from services.sync.scraper import pool_key
from shared.bus import Pusher, Subscriber
from shared.messages import BlockUpdate, Message, PoolSpec, PoolState, Swap, WhitelistAdd
from shared.snapshot import request_snapshot
from tests.helpers import eventually, spawn
from tests.ports import tcp_endpoint
from tests.sync.chain import Chain, Trader, pools_view
from tests.sync.test_bad_rpc import FaultyProxy


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
        self.states: dict[str, list[PoolState]] = {}  # every dex.pool.<id> received, by pool
        self.committed: list[int] = []
        self.committed_by: dict[str, list[int]] = {}  # the same, by publisher (a restart is a new one)

    async def until_head(
        self, chain: Chain, proc: subprocess.Popen[str], timeout: float = 30, nudge: bool = False
    ) -> None:
        """Wait for the service's dex.block of the node's head. ``nudge``: when nothing arrives
        (a restarted publisher's first messages may go before our SUB reconnected), mine an
        empty block so that there is a new head to report."""

        def target() -> tuple[int, str]:
            number, bhash = chain.head()
            return number, "0x" + bhash.hex()

        want = target()

        async def receive() -> None:
            nonlocal want
            batch = await self.sub.recv_batch(timeout=0.5)
            self.take(batch)
            if not batch and nudge:
                chain.mine()
                want = target()

        await eventually(
            lambda: self.head == want,
            wake=receive,
            timeout=timeout,
            what=lambda: f"dex.block of the head {want}",
            state=lambda: self.head,
            process=proc,
        )

    def take(self, batch: list[tuple[str, Message]]) -> None:
        for _topic, msg in batch:
            if isinstance(msg, BlockUpdate) and msg.status == "committed":
                self.head = (msg.number, msg.hash)
                self.committed.append(msg.number)
                self.committed_by.setdefault(msg.publisher, []).append(msg.number)
            elif isinstance(msg, Swap):
                self.swaps.append(msg)
            elif isinstance(msg, PoolState):
                self.states.setdefault(msg.pool, []).append(msg)

    async def until_published(
        self, pools: set[str], proc: subprocess.Popen[str], timeout: float = 30
    ) -> None:
        """Read the bus until every pool of ``pools`` has a dex.pool.<id> state."""
        await eventually(
            lambda: pools <= set(self.states),
            wake=self.receive,
            timeout=timeout,
            what="a dex.pool.<id> state of every pool",
            state=lambda: sorted(pools - set(self.states)),
            process=proc,
        )

    async def receive(self) -> None:
        self.take(await self.sub.recv_batch(timeout=0.5))

    def state_at(self, pool: str, number: int) -> PoolState | None:
        """The pool's state after block ``number`` as published: the last one labelled at or below
        it (the publisher batches by topic, so a state may arrive before an earlier block's dex.block)."""
        return next((s for s in reversed(self.states.get(pool, [])) if s.block <= number), None)


def observed(state: PoolState) -> tuple[int, ...]:
    """A dex.pool.<id> state in the shape of Chain.truth()'s values without the ticks (``want[:3]``)."""
    if state.protocol == "v2":
        return int(state.reserve0), int(state.reserve1)
    return int(state.sqrt_price_x96), state.tick, int(state.liquidity)


async def assert_state(chain: Chain, snap: str) -> None:
    number, _ = chain.head()
    _header, items = await request_snapshot(snap, timeout=5)
    states = {s.pool: s for s in items if isinstance(s, PoolState)}
    truth = chain.truth(number)
    assert len(states) == len(truth)
    for key, want in truth.items():
        state = states["0x" + key.hex()]
        assert state.block == number
        assert observed(state) == want[:3]


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


class ScrapeGate(FaultyProxy):
    """A clean proxy in front of anvil that, while ``closed``, holds every request carrying an
    eth_call (the scraper's; the follower makes none) until ``release()``. The test mines blocks while
    a scrape round waits here, so the scrape straddles blocks with trades, yet no block is mined while
    anvil answers a scrape call: anvil serves calls at its head block from the live state, which a
    block being mined changes under them (a call pinned to block N may see N+1's writes).
    ``needles``: what a held request carries (all of them)."""

    needles: tuple[bytes, ...] = (b'"eth_call"',)

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream, faults=["ok"])
        self.closed = False
        self.held: list[asyncio.Future[None]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if self.closed and all(needle in body for needle in self.needles):
            held = asyncio.get_running_loop().create_future()
            self.held.append(held)
            self.arrived.set()
            await held
        return await super().handle(request)

    def release(self) -> None:
        self.arrived.clear()
        for held in self.held:
            if not held.done():  # not given up by its client
                held.set_result(None)
        self.held.clear()


async def test_whitelist_add_over_pull_while_live_on_the_rpc_source(chain: Chain) -> None:
    """Pools added over PULL while blocks with trades keep coming (one between every round of their
    scrape): published, then equal to the contracts at every block, every initialized tick too (the
    shutdown checkpoint); the pools configured from the start go on without a gap."""
    trader = Trader(chain, seed=41)
    trader.block(8)
    specs = chain.specs()  # V2 x2, V3 x3, V4 x2
    first = [specs[0], specs[2], specs[5]]  # one pool of each protocol from the start
    later = [s for s in specs if s not in first]  # the others, V2, V3 and V4, while live
    first_ids = {"0x" + pool_key(PoolSpec(**s)).hex() for s in first}
    later_ids = {"0x" + pool_key(PoolSpec(**s)).hex() for s in later}
    with tempfile.TemporaryDirectory() as tmp:
        async with ScrapeGate(chain.a.url) as gate:
            # the retry loop of failed pools runs during the add, as it does in production when an add
            # over JSON-RPC of many pools outlasts failed_pool_retry (5 s): it must leave the add alone
            path, eps = config(chain, tmp, pools=first, rpc_urls=[gate.url], failed_pool_retry="100ms")
            watch = Watch(eps["pub"])
            pusher = Pusher(eps["pull"], sender="test")
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    await watch.sub.wait_for_publisher("sync", timeout=20)
                    await watch.until_head(chain, proc, nudge=True)
                    _header, items = await request_snapshot(eps["snapshot"], timeout=5)
                    start = watch.head[0]  # no block mined since: the snapshot is of this block
                    watch.states = {s.pool: [s] for s in items if isinstance(s, PoolState)}
                    assert set(watch.states) == first_ids
                    assert {s[0].block for s in watch.states.values()} == {start}
                    trader.block(8)
                    await watch.until_head(chain, proc)
                    gate.closed = True
                    await pusher.send(WhitelistAdd(pools=[PoolSpec(**s) for s in later]), timeout=5)
                    rounds = 0
                    try:
                        for _ in range(20):  # a block with trades before each round of the scrape
                            published = asyncio.ensure_future(watch.until_published(later_ids, proc))
                            arrived = asyncio.ensure_future(gate.arrived.wait())
                            await asyncio.wait({published, arrived}, return_when=asyncio.FIRST_COMPLETED)
                            for task in (published, arrived):  # cancelling a reader loses nothing
                                task.cancel()
                            await asyncio.gather(published, arrived, return_exceptions=True)
                            if not published.cancelled():
                                published.result()  # raises what went wrong (the timeout, a dead service)
                                break
                            trader.block(8)
                            await watch.until_head(chain, proc)  # the service holds the new pools' events
                            gate.release()
                            rounds += 1
                    finally:
                        gate.closed = False
                        gate.release()
                    assert later_ids <= set(watch.states) and rounds >= 3, rounds
                    for _ in range(3):
                        trader.block(8)
                        await watch.until_head(chain, proc)
                    await assert_state(chain, eps["snapshot"])
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
                    assert proc.returncode == 0, err[-3000:]
            finally:
                pusher.close()
                watch.sub.close()
        head = watch.head[0]
        blocks = [n for n in watch.committed if n > start]
        assert blocks == list(range(start + 1, head + 1))  # every block once, in order
        assert watch.sub.stats.gaps == 0
        assert err.count("live at block") == 1 and "resync" not in err  # no cold start again
        assert "added 4 pool(s) while live" in err
        added_at = min(s.block for pid in later_ids for s in watch.states[pid])
        for number in blocks:  # what a consumer of dex.pool.* knows of each block
            truth = {"0x" + key.hex(): want for key, want in chain.truth(number).items()}
            for pid in first_ids | (later_ids if number >= added_at else set()):
                state = watch.state_at(pid, number)
                assert state is not None and observed(state) == truth[pid][:3], (number, pid)
        cp = checkpoint.load(Path(tmp) / "data" / "sync" / "checkpoint.msgpack")
        assert cp is not None and cp.block == head
        pools = {rec.key: checkpoint.restore(rec, cp.block) for rec in cp.pools}
        assert pools_view(pools) == chain.truth(head)  # reserves, slot0, liquidity, every tick's net


class TipGate(ScrapeGate):
    """Holds, while closed, every request for the node's latest block: the follower's trigger (the
    scraper pinned to a block never asks for it). The follower stops at its head meanwhile."""

    needles = (b'"eth_getBlockByNumber"', b'"latest"')


async def test_a_pool_added_while_the_follower_lags_is_scraped_at_our_head_block(chain: Chain) -> None:
    """The follower is held at block H while the node mines blocks with trades on a pool; that pool,
    added over PULL, is scraped pinned to H: its first dex.pool state is labelled H and equals the
    contracts at H (not at the node's tip); once the follower moves on, the blocks after H apply on
    top of it, each once."""
    trader = Trader(chain, seed=51)
    trader.block(8)
    specs = chain.specs()
    new = specs[3]  # a V3 pool, added while live
    first = [s for s in specs if s is not new]
    new_key = pool_key(PoolSpec(**new))
    new_id = "0x" + new_key.hex()
    with tempfile.TemporaryDirectory() as tmp:
        async with TipGate(chain.a.url) as gate:
            path, eps = config(chain, tmp, pools=first, rpc_urls=[gate.url], rpc_timeout="60s")
            watch = Watch(eps["pub"])
            pusher = Pusher(eps["pull"], sender="test")
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    await watch.sub.wait_for_publisher("sync", timeout=20)
                    await watch.until_head(chain, proc, nudge=True)
                    pinned, _ = chain.head()  # our head: no block mined since
                    gate.closed = True
                    await asyncio.wait_for(gate.arrived.wait(), 10)  # the follower waits for the tip
                    at_pin = chain.truth(pinned)[new_key]
                    for _ in range(20):  # blocks the follower does not see, trading on the new pool
                        trader.block(8)
                        if chain.truth()[new_key] != at_pin:
                            break
                    tip, _ = chain.head()
                    assert chain.truth(tip)[new_key] != at_pin
                    await pusher.send(WhitelistAdd(pools=[PoolSpec(**new)]), timeout=5)
                    await watch.until_published({new_id}, proc)
                    state = watch.states[new_id][0]
                    assert state.block == pinned
                    assert observed(state) == at_pin[:3]
                    gate.closed = False
                    gate.release()
                    await watch.until_head(chain, proc)  # the follower catches up over the new pool
                    await assert_state(chain, eps["snapshot"])
                    trader.block(8)
                    await watch.until_head(chain, proc)
                    await assert_state(chain, eps["snapshot"])
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
                    assert proc.returncode == 0, err[-3000:]
            finally:
                pusher.close()
                watch.sub.close()
        assert "added 1 pool(s) while live" in err
        assert "at the latest block" not in err  # pinned, no fallback
        head = watch.head[0]
        for number in range(pinned, head + 1):  # the new pool as published, at every block
            got = watch.state_at(new_id, number)
            assert got is not None and observed(got) == chain.truth(number)[new_key][:3], number
        cp = checkpoint.load(Path(tmp) / "data" / "sync" / "checkpoint.msgpack")
        assert cp is not None and cp.block == head
        pools = {rec.key: checkpoint.restore(rec, cp.block) for rec in cp.pools}
        assert pools_view(pools) == chain.truth(head)  # every initialized tick's net too


async def test_exex_source_kill_9_then_resume_from_the_checkpoint_over_json_rpc(chain: Chain) -> None:
    """ExEx source (through the bridge) with a node: killed -9 mid-trading, restarted, it resumes from
    its checkpoint (no scrape): catches up over JSON-RPC while the socket buffers; blocks mined during
    the catch-up come from both (the catch-up's tip is held until the socket has them), and are
    applied once; state equals the contracts again."""
    trader = Trader(chain, seed=61)
    trader.block(8)
    with tempfile.TemporaryDirectory() as tmp:
        sock = f"{tmp}/exex.sock"
        async with TipGate(chain.a.url) as gate:
            path, eps = config(
                chain, tmp, source="exex", exex_socket=sock, rpc_urls=[gate.url], rpc_timeout="60s"
            )
            watch = Watch(eps["pub"])
            probe = ExExClient(
                sock, backoff_max=0.2
            )  # the test's own socket client: sees what the bridge sent
            bridge_args = ["--rpc", chain.a.url, "--socket", sock, "--poll", "0.05"]
            try:
                with spawn("-m", "services.simulator.exex_bridge", *bridge_args):
                    with spawn("-m", "services.sync", "--config", str(path)) as proc:
                        await watch.sub.wait_for_publisher("sync", timeout=20)
                        await watch.until_head(chain, proc, nudge=True)
                        for _ in range(4):
                            trader.block(8)
                            await watch.until_head(chain, proc)
                        await assert_state(chain, eps["snapshot"])
                        cp_path = Path(tmp) / "data" / "sync" / "checkpoint.msgpack"
                        while not cp_path.exists():  # written every 100 ms: wait for the next block's news
                            trader.block(2)
                            await watch.until_head(chain, proc)
                        trader.block(8)  # the service is applying it, or not yet, when killed
                        proc.send_signal(signal.SIGKILL)
                        _, err = proc.communicate(timeout=10)
                    assert "scraped" in err and "checkpoint not used" not in err
                    for _ in range(12):  # blocks the service does not see
                        trader.block(8)
                    probe.start()
                    await asyncio.wait_for(probe.connected.wait(), 10)
                    gate.closed = True
                    with spawn("-m", "services.sync", "--config", str(path)) as proc:
                        restarted_pid = proc.pid
                        # the catch-up asks for the tip (the socket is connected and buffering by then)
                        await asyncio.wait_for(gate.arrived.wait(), 30)
                        for _ in range(3):
                            trader.block(8)
                        tip, _ = chain.head()
                        assert await probe.wait_for_block(tip, 10)  # the bridge sent them to every client
                        gate.closed = False
                        gate.release()
                        await watch.until_head(chain, proc, nudge=True)
                        await assert_state(chain, eps["snapshot"])
                        for _ in range(2):
                            trader.block(8)
                            await watch.until_head(chain, proc)
                        await assert_state(chain, eps["snapshot"])
                        final, _ = chain.head()
                        proc.send_signal(signal.SIGTERM)
                        _, err = proc.communicate(timeout=15)
                        assert proc.returncode == 0, err[-3000:]
            finally:
                await probe.close()
                watch.sub.close()
    assert "resumed from the checkpoint at block" in err
    assert "caught up over JSON-RPC" in err
    assert "scraped" not in err  # no scrape: the scraper logs every one
    assert "resync" not in err
    # every block once, in order, from each process: the killed one's last announcements can still be
    # unread in our SUB when the restarted one, resumed from an older checkpoint, announces them again
    restarted = watch.committed_by.pop(f"sync@{socket.gethostname()}:{restarted_pid}")
    assert restarted == sorted(set(restarted)) and restarted[-1] == final
    for before in watch.committed_by.values():
        assert before == sorted(set(before))
    assert "checkpoint written at block" in err
