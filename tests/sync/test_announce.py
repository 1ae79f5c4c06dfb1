"""What a consumer hears from the real sync process on a real node: every block it applies, the
ones caught up after a kill -9 too, as the block's PoolStates then its ``dex.block committed``;
``event_ns`` the block's time; V2 static fields; reorgs counted; ``PoolState.block`` the head
block the state is exact at, in updates and in the snapshot alike."""

from __future__ import annotations

import asyncio
import signal
import tempfile
from pathlib import Path

from services.sync import checkpoint
from shared.bus import Subscriber
from shared.messages import BlockUpdate, Message, PoolState
from shared.snapshot import request_snapshot
from tests.helpers import eventually, spawn
from tests.ports import free_port
from tests.sync.chain import Chain, Trader
from tests.sync.test_fuzz_service import scrape
from tests.sync.test_rpc_service import TipGate, Watch, config, observed


def block_time_ns(chain: Chain, number: int) -> int:
    return int(chain.a.rpc("eth_getBlockByNumber", hex(number), False)["timestamp"], 16) * 10**9


def check_order(messages: list[Message], top: int) -> list[int]:
    """Each committed block: its PoolStates (labelled with it, ``pools_changed`` of them) came
    before its dex.block, and none after; a revert's restored states come after its dex.block
    ``reverted``, labelled with the new head. Returns the committed numbers in arrival order."""
    committed: list[int] = []
    pending: list[PoolState] = []
    unwound_to = -1  # after a revert: the states it restored, labelled with the new head
    # top: our head as announced (at first the block a start resumed at); states labelled with it
    # are published again at the head (all pools after a start, a pool added), not a block's
    for msg in messages:
        if isinstance(msg, PoolState) and msg.block in (unwound_to, top):
            continue
        if isinstance(msg, PoolState):
            assert msg.block > top, (msg.block, top)
            pending.append(msg)
        elif isinstance(msg, BlockUpdate) and msg.status == "reverted":
            assert not pending
            unwound_to = top = msg.number - 1
        elif isinstance(msg, BlockUpdate) and msg.status == "committed":
            unwound_to = -1
            assert {s.block for s in pending} <= {msg.number}, (msg.number, pending)
            assert len(pending) == msg.pools_changed
            committed.append(msg.number)
            top = msg.number
            pending = []
    return committed


async def test_every_block_is_announced_after_a_kill_9_with_its_time_and_static_fields(chain: Chain) -> None:
    trader = Trader(chain, seed=91)
    trader.block(8)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        async with TipGate(chain.a.url) as gate:
            path, eps = config(chain, tmp, rpc_urls=[gate.url], metrics_port=port)
            watch = Watch(eps["pub"])
            cp_path = Path(tmp) / "data" / "sync" / "checkpoint.msgpack"
            try:
                with spawn("-m", "services.sync", "--config", str(path)) as proc:
                    await watch.sub.wait_for_publisher("sync", timeout=20)
                    await watch.until_head(chain, proc, nudge=True)

                    async def mine() -> None:
                        trader.block(4)
                        await watch.until_head(chain, proc)

                    await eventually(cp_path.exists, wake=mine, timeout=60, what="a checkpoint", process=proc)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
                cp = checkpoint.load(cp_path)
                assert cp is not None
                for _ in range(10):  # blocks the killed service never saw
                    trader.block(8)
                gate.closed = True  # the follower's first look at the tip waits for our subscriber
                with (
                    Subscriber(eps["pub"], ["dex."]) as sub,
                    spawn("-m", "services.sync", "--config", str(path)) as proc,
                ):
                    await sub.wait_for_publisher("sync", timeout=20)
                    await asyncio.wait_for(gate.arrived.wait(), 20)
                    gate.closed = False
                    gate.release()
                    heard: list[Message] = []
                    head, _ = chain.head()

                    async def receive() -> None:
                        heard.extend(m for _t, m in await sub.recv_batch(timeout=0.5))

                    async def until(number: int) -> None:
                        await eventually(
                            lambda: any(
                                isinstance(m, BlockUpdate) and m.status == "committed" and m.number == number
                                for m in heard[-40:]
                            ),
                            wake=receive,
                            timeout=30,
                            what=f"block {number} committed",
                            process=proc,
                        )

                    await until(head)
                    # a reorg: the head block replaced by two others
                    snap = chain.a.rpc("evm_snapshot")
                    trader.block(8)
                    await until(chain.head()[0])
                    chain.a.rpc("evm_revert", snap)
                    other = Trader(chain, seed=92)
                    other.block(8)
                    other.block(8)
                    await until(chain.head()[0])
                    last, last_hash = chain.head()
                    _header, items = await request_snapshot(eps["snapshot"], timeout=5)
                    figures = await asyncio.to_thread(scrape, port)
                    proc.send_signal(signal.SIGTERM)
                    _, err = proc.communicate(timeout=15)
            finally:
                watch.sub.close()
    assert proc.returncode == 0, err[-3000:]
    assert "resumed from the checkpoint" in err
    committed = check_order(heard, cp.block)
    caught_up = committed[: head - cp.block]
    assert caught_up == list(range(cp.block + 1, head + 1))  # every caught-up block, once, in order
    assert committed[-2:] == [last - 1, last]  # the new branch after the reorg
    assert figures["poolwire_sync_reorgs_total"] == 1
    reverted = [m for m in heard if isinstance(m, BlockUpdate) and m.status == "reverted"]
    assert [m.number for m in reverted] == [last - 1]
    blocks = [m for m in heard if isinstance(m, BlockUpdate) and m.status == "committed"]
    for msg in blocks[-2:]:  # the branch that stayed: its times as the node has them
        assert msg.event_ns == block_time_ns(chain, msg.number)
    assert all(m.event_ns > 0 for m in blocks)
    states = [m for m in heard if isinstance(m, PoolState)]
    times = {b.number: b.event_ns for b in blocks if b.number <= head}  # before the reorg: one each
    times[cp.block] = block_time_ns(chain, cp.block)  # the resume's states, at the checkpoint's block
    assert all(s.event_ns == times[s.block] for s in states if s.block <= head)
    v2 = [s for s in states if s.protocol == "v2"]
    assert v2 and all(s.fee == 3000 and len(s.token0) == len(s.token1) == 42 for s in v2)
    # the snapshot: every pool labelled with the head it is exact at, as an update after it would be
    pools = {s.pool: s for s in items if isinstance(s, PoolState)}
    assert {(s.block, s.block_hash) for s in pools.values()} == {(last, "0x" + last_hash.hex())}
    truth = chain.truth(last)
    assert {k: observed(s) for k, s in pools.items()} == {"0x" + k.hex(): v[:3] for k, v in truth.items()}
    assert {s.pool: s.token0 for s in pools.values() if s.protocol == "v2"} == {s.pool: s.token0 for s in v2}
