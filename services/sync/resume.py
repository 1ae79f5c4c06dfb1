"""The resume policy of the startup coordinator: start from the checkpoint when it can be trusted,
else scrape (the caller's cold start).

A checkpoint is used when it reads back, is of the node's chain, and its block is still canonical
on the node. The JSON-RPC source (the log follower) goes live from its block; the ExEx socket,
which cannot replay the past, is caught up over eth_getLogs first (catchup.py), which needs a
PoolManager address for V4 pools and the socket connected within ``replay_wait``. A node that fails
meanwhile costs an attempt (``StartupRetry``, counted under ``resume``), not the checkpoint.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from services.sync import checkpoint
from services.sync.catchup import CatchUp
from services.sync.follower import LogFollower
from services.sync.pool import Pool
from services.sync.retry import StartupRetry
from services.sync.rpc import Header, RpcClient
from shared.messages import PoolSpec

log = logging.getLogger("poolwire.sync.startup")


@dataclass(slots=True)
class ResumeFrom:
    """What a resume needs besides the coordinator's state."""

    path: Path  # the checkpoint file
    rpc: RpcClient  # the node the checkpoint's block is checked on (and caught up from)
    retry: StartupRetry
    catch_up: Callable[[], LogFollower]  # a follower to step through the catch-up (ExEx source)
    follower: LogFollower | None = None  # the JSON-RPC source, when blocks come from it
    v4_logs: bool = False  # V4 pools' logs can be followed (a PoolManager address is configured)
    replay_wait: float = 30.0  # how long the ExEx socket may take to connect


class Resume(CatchUp):
    """The coordinator's resume from a checkpoint (a mixin: the coordinator's state)."""

    resume_from: ResumeFrom | None

    if TYPE_CHECKING:

        def resume(
            self,
            pools: Sequence[Pool],
            specs: Sequence[PoolSpec],
            block: int,
            block_hash: bytes,
            timestamp: int = 0,
        ) -> None: ...

    def read_checkpoint(self, chain_id: int) -> checkpoint.Checkpoint | None:
        """The checkpoint if there is one the node (``chain_id``) can resume from (None: scrape)."""
        settings = self.resume_from
        if settings is None:
            return None
        try:
            cp = checkpoint.load(settings.path)
            if cp is None:
                return None
            for rec in cp.pools:
                checkpoint.restore(rec, cp.block)
        except Exception as exc:  # unreadable for any reason: scrape instead
            log.warning("checkpoint %s unreadable (%r): scraping", settings.path, exc)
            return None
        if cp.chain_id and cp.chain_id != chain_id:
            log.warning("checkpoint is of chain %d, the node is chain %d: scraping", cp.chain_id, chain_id)
            return None
        return cp

    async def try_resume(self, chain_id: int) -> bool:
        """Resume from the checkpoint if its block is still canonical; False: cold start instead.
        A node that fails meanwhile costs an attempt (counted), not the checkpoint."""
        cp = self.read_checkpoint(chain_id)
        if cp is None or self.resume_from is None:
            return False
        return await self.resume_from.retry.run("resume", lambda: self._resume(cp))

    async def _resume(self, cp: checkpoint.Checkpoint) -> bool:
        settings = self.resume_from
        assert settings is not None
        raw = await settings.rpc.call("eth_getBlockByNumber", [hex(cp.block), False])
        header = Header.parse(raw) if raw is not None else None
        if header is None or header.hash != cp.hash:
            log.warning("checkpoint block %d is no longer canonical (reorged away): scraping", cp.block)
            return False
        pools = [checkpoint.restore(rec, cp.block) for rec in cp.pools]  # afresh: an attempt moves them
        if settings.follower is not None:
            settings.follower.anchor(header)
            self.resume(pools, cp.specs, cp.block, cp.hash, header.timestamp)
            settings.follower.connected.set()
            return True
        return await self._resume_exex(pools, cp.specs, header)

    async def _resume_exex(self, pools: list[Pool], specs: list[PoolSpec], header: Header) -> bool:
        """ExEx source: the socket is buffering (started first); catch up from the checkpoint over
        JSON-RPC (the log follower's ranged eth_getLogs), replay the buffer over it, go live."""
        settings = self.resume_from
        assert settings is not None
        if any(s.protocol == "v4" for s in specs) and not settings.v4_logs:
            log.warning(
                "checkpoint has V4 pools, and no sync.v4_pool_manager to catch up their logs: scraping"
            )
            return False
        try:
            await asyncio.wait_for(self.client.connected.wait(), settings.replay_wait)
        except TimeoutError:
            log.warning("ExEx socket not connected in %.0f s: scraping", settings.replay_wait)
            return False
        return await self.resume_with_catch_up(pools, specs, header, settings.catch_up())
