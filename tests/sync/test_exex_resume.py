"""Resuming from a checkpoint with the ExEx source: catch up over JSON-RPC, then the socket's buffer
on top (overlap applied once, the socket's reverts of blocks applied from JSON-RPC unwound)."""

from __future__ import annotations

from collections.abc import Sequence

from services.sync.buffer import Block
from services.sync.coordinator import StartupCoordinator
from services.sync.follower import LogFollower
from services.sync.rpc import Header, RpcClient
from services.sync.scraper import ScrapeResult
from services.sync.source import BlockSource
from shared.exex import PoolUpdate, encode_payload
from shared.messages import PoolSpec
from tests.sync.chaingen import V3_POOL, block_hash, fresh_pools

CP = 10  # the checkpoint's block


def mint(block: int, delta: int) -> PoolUpdate:
    return PoolUpdate(
        seq=0, block=block, tx=0, log=0, pool=V3_POOL, protocol="v3", kind="Mint",
        tick_lower=100, tick_upper=300, liquidity_delta=delta,
    )  # fmt: skip


def block(number: int, fork: int = 0, parent_fork: int | None = None) -> Block:
    """Block ``number`` of branch ``fork``: mints ``number * 10**fork`` (in range: liquidity adds up),
    so the final liquidity tells which blocks were applied, and how many times."""
    parent = block_hash(number - 1, fork if parent_fork is None else parent_fork)
    if number - 1 == CP:
        parent = block_hash(CP)
    return Block(number, block_hash(number, fork), parent, False, [mint(number, number * 10**fork)])


def revert(number: int, fork: int = 0) -> Block:
    return Block(number, block_hash(number, fork), block_hash(number - 1, fork), True, [])


class Socket(BlockSource):
    """The ExEx socket: blocks handed in by the test (raws filled as the ExEx client does)."""

    def feed(self, *blocks: Block) -> None:
        for blk in blocks:
            blk = Block(blk.number, blk.hash, blk.parent_hash, blk.is_revert, list(blk.updates), [])
            blk.raws = [encode_payload(u) for u in blk.updates]
            self._on_block(blk)


class Node(LogFollower):
    """The log follower over a node whose canonical chain after the checkpoint is ``chain``; every
    step also calls ``on_step`` (a block arriving on the socket meanwhile)."""

    def __init__(self, chain: list[Block], on_step: list[list[Block]] | None = None) -> None:
        super().__init__(RpcClient(["http://127.0.0.1:9"]), addresses=lambda: [])  # never called
        self.chain = chain
        self.on_step = on_step or []
        self.steps = 0

    async def step(self) -> None:
        self.steps += 1
        assert self.head is not None
        for blk in self.chain:
            if blk.number > self.head.number:
                header = Header(blk.number, blk.hash, blk.parent_hash)
                self.hashes[blk.number] = header
                self.head = header
                self._on_block(Block(blk.number, blk.hash, blk.parent_hash, False, list(blk.updates)))
        self.tip = self.head


class NoScraper:
    async def scrape(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        raise AssertionError("resuming scrapes nothing")


async def resume(socket: Socket, node: Node) -> tuple[StartupCoordinator, bool]:
    coord = StartupCoordinator(socket, NoScraper())
    pools = fresh_pools(CP)
    specs = [PoolSpec(protocol="v3", address="0x" + V3_POOL.hex())]
    ok = await coord.resume_with_catch_up(pools, specs, Header(CP, block_hash(CP), block_hash(CP - 1)), node)
    return coord, ok


def liquidity(coord: StartupCoordinator) -> int:
    return coord.processor.pools[V3_POOL].liquidity


async def test_blocks_from_both_sources_are_applied_once() -> None:
    socket = Socket()
    socket.feed(block(12), block(13))  # the socket connected at block 11
    node = Node([block(11), block(12), block(13)])
    coord, ok = await resume(socket, node)
    assert ok and coord.live and socket.mode == "live"
    socket.feed(block(14))  # live: on the queue
    assert coord.processor.head == (13, block_hash(13))
    assert liquidity(coord) == 11 + 12 + 13
    assert coord.metrics.blocks_replayed == 0


async def test_the_buffer_after_the_caught_up_head_is_replayed() -> None:
    socket = Socket()
    socket.feed(block(12), block(13), block(14), block(15))  # the node's RPC saw up to 13 only
    coord, ok = await resume(socket, Node([block(11), block(12), block(13)]))
    assert ok
    assert coord.processor.head == (15, block_hash(15))
    assert liquidity(coord) == 11 + 12 + 13 + 14 + 15
    assert coord.metrics.blocks_replayed == 2


async def test_a_reorg_reported_by_the_socket_unwinds_blocks_applied_from_json_rpc() -> None:
    socket = Socket()
    # the socket had 12 and 13 of branch 0, reverted them, then sent branch 1 from 12 on; the node's
    # RPC answered the catch-up from branch 0 (before the reorg)
    socket.feed(block(12), block(13), revert(13), revert(12))
    socket.feed(block(12, 1, parent_fork=0), block(13, 1), block(14, 1))
    coord, ok = await resume(socket, Node([block(11), block(12), block(13)]))
    assert ok
    assert coord.processor.head == (14, block_hash(14, 1))
    assert liquidity(coord) == 11 + 120 + 130 + 140
    assert coord.processor.stats.reverts_processed == 2


async def test_a_revert_below_the_buffer_of_a_block_applied_from_json_rpc_is_unwound() -> None:
    socket = Socket()
    socket.feed(revert(13))  # the chain got shorter (a rollback): 13 is gone, nothing replaced it yet
    coord, ok = await resume(socket, Node([block(11), block(12), block(13)]))
    assert ok
    assert coord.processor.head == (12, block_hash(12))
    assert liquidity(coord) == 11 + 12


async def test_the_catch_up_already_on_the_new_branch_ignores_the_socket_reverts() -> None:
    socket = Socket()
    socket.feed(block(12), revert(12), block(12, 1, parent_fork=0))
    coord, ok = await resume(socket, Node([block(11), block(12, 1, parent_fork=0)]))
    assert ok
    assert coord.processor.head == (12, block_hash(12, 1))
    assert liquidity(coord) == 11 + 120


async def test_a_stream_starting_after_the_caught_up_head_is_joined_by_catching_up_again() -> None:
    socket = Socket()
    socket.feed(block(14), block(15))  # the socket is ahead of what the node's RPC served at first
    node = Node([block(11), block(12)])

    async def grow() -> None:
        node.chain += [block(13), block(14)]

    node.clock.sleep = lambda _s: grow()  # type: ignore[method-assign,assignment]
    coord, ok = await resume(socket, node)
    assert ok
    assert coord.processor.head == (15, block_hash(15))
    assert liquidity(coord) == 11 + 12 + 13 + 14 + 15


async def test_a_buffer_that_does_not_join_the_caught_up_chain_means_a_scrape() -> None:
    socket = Socket()
    socket.feed(block(14), block(15))
    node = Node([block(11), block(12)])  # never reaches 13
    node.clock.sleep = lambda _s: _nothing()  # type: ignore[method-assign,assignment]
    coord, ok = await resume(socket, node)
    assert not ok and not coord.live and socket.mode == "buffering"


async def _nothing() -> None:
    return None
