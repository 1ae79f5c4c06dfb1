"""Checkpoint writes that fail (a directory in the way, a parent that is a file): counted, logged,
the previous checkpoint intact, the next write retried; a restart resumes from the newest good one.

Tests run as root, so permissions cannot make a write fail: the failures are real OS errors from
paths that cannot be written (the temporary file's path is a directory, the parent is a file)."""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import tempfile
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from services.sync import checkpoint
from services.sync.checkpoint import CheckpointStore
from services.sync.pool import Pool
from shared.messages import PoolSpec
from tests.helpers import eventually, spawn
from tests.ports import free_port
from tests.sync.chain import Chain, Trader
from tests.sync.test_rpc_service import Watch, assert_state, config


def data(block: int) -> bytes:
    pool = Pool(b"\x11" * 20, "v2", snapshot_block=block)
    pool.reserve0, pool.reserve1 = block, 2 * block
    spec = PoolSpec(protocol="v2", address="0x" + "11" * 20)
    return checkpoint.encode(block, block.to_bytes(32, "big"), [pool], [spec])


def loaded_block(path: Path) -> int:
    cp = checkpoint.load(path)
    assert cp is not None
    return cp.block


def test_a_failed_write_keeps_the_previous_checkpoint_and_the_next_write_succeeds(tmp_path: Path) -> None:
    path = tmp_path / "sync" / "checkpoint.msgpack"
    store = CheckpointStore(path)
    assert store.store(data(5))
    tmp = path.with_suffix(".tmp")
    tmp.mkdir()  # open(tmp, "wb") fails: IsADirectoryError
    assert not store.store(data(6))
    assert (store.written, store.failures) == (1, 1)
    assert loaded_block(path) == 5
    tmp.rmdir()
    assert store.store(data(7))
    assert (store.written, store.failures) == (2, 1)
    assert loaded_block(path) == 7
    assert not tmp.exists()


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.msgpack"
    path.mkdir()  # os.replace onto a directory fails after the temporary file was written
    (path / "keep").write_text("x")
    with pytest.raises(OSError):
        checkpoint.write(path, data(1))
    assert not path.with_suffix(".tmp").exists()
    assert (path / "keep").read_text() == "x"


def test_a_parent_that_is_a_file_is_counted_and_logged_rate_limited(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "sync").write_text("not a directory")
    store = CheckpointStore(tmp_path / "sync" / "checkpoint.msgpack")
    with caplog.at_level(logging.ERROR, logger="poolwire.sync.checkpoint"):
        for block in range(30):
            assert not store.store(data(block))
    assert store.failures == 30 and store.written == 0
    assert len(caplog.records) == store.skip_log.burst
    assert "not written (the previous one stays)" in caplog.records[0].getMessage()


def test_a_state_that_does_not_encode_is_counted_not_raised() -> None:
    store = CheckpointStore(Path("/nonexistent/checkpoint.msgpack"))

    def broken() -> bytes:
        raise ValueError("Exceeds the limit (4300 digits) for integer string conversion")

    assert store.encode(broken) is None
    assert store.failures == 1


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.fullmatch(r"(poolwire_sync_checkpoint\w+_total) (\S+)", line)
        if m:
            out[m[1]] = float(m[2])
    return out


async def mined_until(
    cond: Callable[[dict[str, float]], bool],
    port: int,
    proc: subprocess.Popen[str],
    step: Callable[[], Awaitable[None]],
    what: str,
    timeout: float = 30,
) -> dict[str, float]:
    """Mine blocks (``step``) until the metrics satisfy ``cond``; the service must stay alive."""
    figures = await asyncio.to_thread(scrape, port)

    async def mine() -> None:
        await step()
        figures.update(await asyncio.to_thread(scrape, port))

    await eventually(
        lambda: bool(figures) and cond(figures),
        wake=mine,
        timeout=timeout,
        what=what,
        state=lambda: figures,
        process=proc,
    )
    return figures


def block_writes(tmp: Path) -> None:
    """A directory where the service writes its temporary file; mkdir fails while a write has it
    open (the file exists), so once it succeeds no write can complete until it is removed."""
    for _ in range(1000):
        try:
            tmp.mkdir()
            return
        except FileExistsError:
            continue
    raise AssertionError(f"{tmp} stayed taken")


async def test_failing_checkpoints_in_the_real_service_then_recovery_then_resume(chain: Chain) -> None:
    trader = Trader(chain, seed=31)
    trader.block(6)
    with tempfile.TemporaryDirectory() as tmp:
        path, eps = config(chain, tmp, metrics_port=(port := free_port()))
        cp_path = Path(tmp) / "data" / "sync" / "checkpoint.msgpack"
        cp_tmp = cp_path.with_suffix(".tmp")
        cp_path.parent.mkdir(parents=True)
        block_writes(cp_tmp)
        watch = Watch(eps["pub"])
        try:
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.sub.wait_for_publisher("sync", timeout=20)

                async def step() -> None:
                    trader.block(4)
                    await watch.until_head(chain, proc)

                failures = "poolwire_sync_checkpoint_failures_total"
                written = "poolwire_sync_checkpoints_written_total"
                seen = await mined_until(lambda m: m[failures] >= 3, port, proc, step, "3 failed checkpoints")
                assert seen[written] == 0 and not cp_path.exists()
                await assert_state(chain, eps["snapshot"])

                cp_tmp.rmdir()  # the disk is back: the next interval writes
                seen = await mined_until(lambda m: m[written] >= 1, port, proc, step, "a checkpoint written")
                block_writes(cp_tmp)
                good = loaded_block(cp_path)
                before = (await asyncio.to_thread(scrape, port))[failures]
                await mined_until(lambda m: m[failures] >= before + 3, port, proc, step, "3 more failures")
                assert chain.head()[0] > good
                assert loaded_block(cp_path) == good  # the previous checkpoint is intact
                await assert_state(chain, eps["snapshot"])
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
            cp_tmp.rmdir()
            for _ in range(5):  # blocks the service does not see
                trader.block(6)
            with spawn("-m", "services.sync", "--config", str(path)) as proc:
                await watch.until_head(chain, proc, nudge=True)
                await assert_state(chain, eps["snapshot"])
                proc.send_signal(signal.SIGTERM)
                _, err = proc.communicate(timeout=15)
                assert proc.returncode == 0, err[-3000:]
                assert f"resumed from the checkpoint at block {good} " in err
        finally:
            watch.sub.close()
