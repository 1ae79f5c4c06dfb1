"""Checkpoints: every pool's state with the block (number and hash) it is valid at.

Written atomically (temporary file + rename) under ``<data_dir>/sync/checkpoint.msgpack``,
periodically and on shutdown. On restart the service loads it, checks that the block hash is
still canonical (else it scrapes again), and catches up from there with eth_getLogs (with the ExEx
source too: the socket buffers meanwhile, and its buffer is replayed over the caught-up chain).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import msgspec

from services.sync.pool import Pool
from shared.messages import PoolSpec
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.sync.checkpoint")

VERSION = 1


class PoolRecord(msgspec.Struct, array_like=True, omit_defaults=True, kw_only=True):
    key: bytes
    protocol: str
    fee: int = 0
    tick_spacing: int = 0
    token0: str = ""
    token1: str = ""
    reserve0: str = "0"
    reserve1: str = "0"
    sqrt_price_x96: str = "0"
    tick: int = 0
    liquidity: str = "0"
    ticks: list[tuple[int, str, str]] = []  # (tick, gross, net)


class Checkpoint(msgspec.Struct, kw_only=True):
    version: int = VERSION
    chain_id: int = 0
    block: int
    hash: bytes
    written_ns: int = 0
    specs: list[PoolSpec] = []
    pools: list[PoolRecord] = []


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(Checkpoint)


def record(pool: Pool) -> PoolRecord:
    return PoolRecord(
        key=pool.key,
        protocol=pool.protocol,
        fee=pool.fee,
        tick_spacing=pool.tick_spacing,
        token0=pool.token0,
        token1=pool.token1,
        reserve0=str(pool.reserve0),
        reserve1=str(pool.reserve1),
        sqrt_price_x96=str(pool.sqrt_price_x96),
        tick=pool.tick,
        liquidity=str(pool.liquidity),
        ticks=[(t, str(g), str(n)) for t, (g, n) in sorted(pool.ticks.items())],
    )


def restore(rec: PoolRecord, block: int) -> Pool:
    if rec.protocol not in ("v2", "v3", "v4"):
        raise ValueError(f"unknown protocol {rec.protocol!r} in checkpoint")
    pool = Pool(
        rec.key,
        rec.protocol,  # type: ignore[arg-type]
        snapshot_block=block,
        fee=rec.fee,
        tick_spacing=rec.tick_spacing,
        token0=rec.token0,
        token1=rec.token1,
    )
    pool.reserve0, pool.reserve1 = int(rec.reserve0), int(rec.reserve1)
    pool.sqrt_price_x96, pool.tick, pool.liquidity = int(rec.sqrt_price_x96), rec.tick, int(rec.liquidity)
    if pool.tick_spacing > 0:
        pool.set_ticks((t, int(g), int(n)) for t, g, n in rec.ticks)
    return pool


def encode(
    block: int,
    block_hash: bytes,
    pools: Iterable[Pool],
    specs: Iterable[PoolSpec],
    chain_id: int = 0,
    written_ns: int | None = None,
) -> bytes:
    """A consistent snapshot (call it between blocks, without awaiting in between); ``written_ns``:
    the clock's time (the wall clock if not given)."""
    return _ENC.encode(
        Checkpoint(
            chain_id=chain_id,
            block=block,
            hash=block_hash,
            written_ns=time.time_ns() if written_ns is None else written_ns,
            specs=list(specs),
            pools=[record(p) for p in pools if not p.stale],
        )
    )


def write(path: Path, data: bytes) -> None:
    """Atomic replace: a crash or a failed write (disk full, unwritable directory: OSError) leaves
    the previous checkpoint intact; the temporary file of a failed write is removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            if not tmp.is_dir():
                tmp.unlink()
        raise
    # the rename itself is durable once the directory is synced
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load(path: Path) -> Checkpoint | None:
    """The checkpoint, or None if there is none or it cannot be read (the service scrapes)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    cp = _DEC.decode(data)
    if cp.version != VERSION:
        raise ValueError(f"checkpoint version {cp.version}, expected {VERSION}")
    return cp


class CheckpointStore:
    """The service's checkpoint file: written atomically, failures counted and logged (rate-limited).

    A failed write (disk full, unwritable directory) leaves the previous checkpoint as it was; the
    service goes on and the next interval tries again."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.written = 0
        self.failures = 0
        self.skip_log = RateLimitedLog(log, level=logging.ERROR)
        # one write at a time: a periodic write still running in its thread when the service stops
        # (cancelling to_thread does not stop the thread) would share the temporary file with the
        # final write, and one rename would find it gone
        self._writing = threading.Lock()

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self.skip_log(
            "checkpoint_failed", "checkpoint %s not written (the previous one stays): %r", self.path, exc
        )

    def encode(self, encoder: Callable[[], bytes | None]) -> bytes | None:
        """``encoder()`` (on the event loop, between blocks); None if there is nothing or it failed."""
        try:
            return encoder()
        except Exception as exc:  # a state that does not encode is counted, not raised out of a loop
            self.failed(exc)
            return None

    def store(self, data: bytes) -> bool:
        """Write ``data`` (blocking: run it in a thread from the loop); False if it failed."""
        with self._writing:
            t0 = time.perf_counter()
            try:
                write(self.path, data)
            except OSError as exc:
                self.failed(exc)
                return False
        self.written += 1
        log.debug("checkpoint: %d bytes in %.1f ms", len(data), (time.perf_counter() - t0) * 1000)
        return True
