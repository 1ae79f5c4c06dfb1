"""The ExEx client against the simulator's ExEx server over a real Unix socket."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from services.simulator.exex_chain import SimChain
from services.simulator.exex_server import ExExServer
from services.sync.buffer import Block, BlockAssembler
from services.sync.exex_client import ExExClient
from services.sync.source import Resync
from shared.exex import BeginBlock, EndBlock, PoolUpdate, encode_payload
from tests.helpers import eventually


async def until(pred: Callable[[], bool], what: str) -> None:
    """In-process client state that nothing announces: re-checked every few ms (never a spin)."""
    await eventually(pred, wake=None, timeout=5.0, what=what)


@pytest.fixture
def sock_path() -> AsyncIterator[str]:  # type: ignore[misc]
    with tempfile.TemporaryDirectory() as tmp:
        yield str(Path(tmp) / "exex.sock")


async def start(path: str, *, capacity: int = 10_000, events: int = 10) -> tuple[ExExServer, ExExClient]:
    server = await ExExServer(SimChain(seed=3, events_per_block=events), path).start()
    client = ExExClient(path, capacity=capacity)
    client.start()
    await asyncio.wait_for(server.connected.wait(), 5)
    await asyncio.wait_for(client.connected.wait(), 5)
    return server, client


async def next_item(client: ExExClient) -> Block | Resync:
    return await asyncio.wait_for(client.blocks.get(), 5)


async def test_buffering_then_sorted_events_then_live(sock_path: str) -> None:
    server, client = await start(sock_path)
    try:
        for _ in range(5):
            await server.block()
        assert await client.wait_for_block(5, timeout=5)
        events = client.take_buffered_events()
        assert len(events) == 50
        assert [e.key() for e in events] == sorted(e.key() for e in events)
        assert {e.block for e in events} == {1, 2, 3, 4, 5}
        client.go_live()
        await server.block()
        item = await next_item(client)
        assert isinstance(item, Block) and item.number == 6 and len(item.updates) == 10
        assert all(isinstance(u, PoolUpdate) for u in item.updates)
    finally:
        await client.close()
        await server.close()


async def test_buffer_overflow_is_an_explicit_error(sock_path: str) -> None:
    server, client = await start(sock_path, capacity=15)
    try:
        await server.block()
        await server.block()
        assert await client.wait_for_block(2, timeout=5)
        assert client.buffer_error is not None and "capacity 15" in client.buffer_error
        assert client.stats.buffer_overflows == 1
        assert len(client.buffer) == 0
    finally:
        await client.close()
        await server.close()


async def test_mismatched_begin_end_skips_that_block_and_counts_it(sock_path: str) -> None:
    server, client = await start(sock_path)
    client.go_live()
    try:
        await server.block()
        await server.block("mismatch")
        await server.block()
        first, second = await next_item(client), await next_item(client)
        assert isinstance(first, Block) and isinstance(second, Block)
        assert (first.number, second.number) == (1, 3)
        assert client.assembler.stats.mismatched_blocks == 1
    finally:
        await client.close()
        await server.close()


@pytest.mark.parametrize("fault", ["corrupt", "gap"])
async def test_corrupt_frame_or_sequence_gap_reconnects_and_resyncs(sock_path: str, fault: str) -> None:
    server, client = await start(sock_path)
    client.go_live()
    try:
        await server.block()
        assert isinstance(await next_item(client), Block)
        await server.block(fault)
        item = await next_item(client)
        assert isinstance(item, Resync)
        assert (client.stats.corrupt_frames, client.stats.sequence_gaps) == (
            (1, 0) if fault == "corrupt" else (0, 1)
        )
        await until(lambda: client.stats.connects == 2 and len(server.conns) == 1, "the reconnect")
        await server.block()
        item = await next_item(client)
        assert isinstance(item, Block) and item.number == 3
    finally:
        await client.close()
        await server.close()


async def test_corrupt_frame_while_buffering_voids_the_buffer(sock_path: str) -> None:
    server, client = await start(sock_path)
    try:
        await server.block("corrupt")
        await until(lambda: client.buffer_error is not None, "the buffer voided")
        assert client.stats.resyncs_requested == 1
    finally:
        await client.close()
        await server.close()


async def test_revert_live_and_buffered(sock_path: str) -> None:
    server, client = await start(sock_path)
    try:
        for _ in range(3):
            await server.block()
        await server.block("revert")  # reverts 3, then a new 3 on a fork
        assert await client.wait_for_block(3, timeout=5)
        await until(lambda: client.stats.blocks_received == 5, "five blocks")
        blocks = client.take_buffered_blocks()
        assert [b[0] for b in blocks] == [1, 2, 3]
        assert blocks[2][1] == server.chain.head_hash  # the fork's block 3
        client.go_live()
        await server.block("revert")
        item = await next_item(client)
        assert isinstance(item, Block) and item.is_revert and item.number == 3
        item = await next_item(client)
        assert isinstance(item, Block) and not item.is_revert and item.number == 3
    finally:
        await client.close()
        await server.close()


async def test_connects_with_backoff_when_the_server_comes_up_late(sock_path: str) -> None:
    client = ExExClient(sock_path, backoff_initial=0.01, backoff_max=0.05).start()
    try:
        await until(lambda: client.stats.connect_failures >= 2, "two failed connects")
        server = await ExExServer(SimChain(seed=1), sock_path).start()
        try:
            await asyncio.wait_for(client.connected.wait(), 5)
            # the server goes away and comes back: the client reconnects by itself
            server.drop_clients()
            await until(lambda: client.stats.connects == 2, "the reconnect")
        finally:
            await server.close()
    finally:
        await client.close()


def test_begin_end_mismatch_is_logged_rate_limited_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    asm = BlockAssembler()
    asm.skip_log.clock = lambda: now[0]
    seq = iter(range(1_000_000))
    with caplog.at_level("WARNING", logger="poolwire.sync.exex"):
        for n in range(1, 31):  # every block announces one update more than it has
            begin = BeginBlock(seq=next(seq), number=n, hash=bytes([n]) * 32, parent_hash=b"\0" * 32)
            assert asm.feed(encode_payload(begin)) is None
            assert asm.feed(encode_payload(EndBlock(seq=next(seq), number=n, num_updates=1))) is None
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == asm.skip_log.burst
        assert lines[0] == (
            "Begin/End block mismatch, block skipped: block 1: EndBlock 1 with num_updates 1, 0 update(s) received"
        )
        caplog.clear()
        now[0] = 61.0
        begin = BeginBlock(seq=next(seq), number=31, hash=b"\1" * 32, parent_hash=b"\0" * 32)
        asm.feed(encode_payload(begin))
        asm.feed(encode_payload(EndBlock(seq=next(seq), number=32, num_updates=0)))
        lines = [r.getMessage() for r in caplog.records]
        assert lines[0].startswith(f"{30 - asm.skip_log.burst} more block_mismatch message(s) suppressed")
        assert "EndBlock 32" in lines[1]
    assert asm.stats.mismatched_blocks == 31 and asm.stats.blocks == 0


def test_the_block_time_of_begin_block_reaches_the_block() -> None:
    asm = BlockAssembler()
    begin = BeginBlock(seq=1, number=7, hash=b"\7" * 32, parent_hash=b"\6" * 32, timestamp=1_700_000_123)
    assert asm.feed(encode_payload(begin)) is None
    block = asm.feed(encode_payload(EndBlock(seq=2, number=7, num_updates=0)))
    assert block is not None and block.timestamp == 1_700_000_123
