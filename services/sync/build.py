"""Sync's parts built from its config: the JSON-RPC client, the block source (ExEx socket or log
follower), the scraper (JSON-RPC, or the simulator's scrape socket when configured so), the startup
coordinator and what it resumes from. No sockets are opened here; the shell (service.py) starts them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.sync.config import SyncConfig
from services.sync.coordinator import StartupCoordinator
from services.sync.exex_client import ExExClient
from services.sync.follower import LogFollower
from services.sync.resume import ResumeFrom
from services.sync.retry import StartupRetry
from services.sync.rpc import RpcClient
from services.sync.rpc_scraper import RpcScraper
from services.sync.scraper import Scraper
from services.sync.simulator_scraper import SimulatorScraper
from services.sync.source import BlockSource
from shared.clock import Clock


class SyncParts:
    def __init__(self, cfg: SyncConfig, clock: Clock, data_dir: str) -> None:
        self.cfg = cfg
        self.clock = clock
        self.rpc: RpcClient | None = None
        if cfg.rpc_urls:
            self.rpc = RpcClient(
                cfg.rpc_urls,
                timeout=cfg.rpc_timeout,
                retries=cfg.rpc_retries,
                backoff_initial=cfg.backoff_initial,
                backoff_max=cfg.backoff_max,
                max_batch=cfg.rpc_batch_size,
                clock=clock,
            )
        self.client: BlockSource
        self.follower: LogFollower | None = None
        if cfg.source == "rpc":
            self.follower = self.log_follower(capacity=cfg.buffer_capacity, ws_url=cfg.rpc_ws_url)
            self.client = self.follower
        else:
            self.client = ExExClient(
                cfg.exex_socket,
                capacity=cfg.buffer_capacity,
                backoff_initial=cfg.backoff_initial,
                backoff_max=cfg.backoff_max,
                clock=clock,
            )
        scraper: Scraper
        self.rpc_scraper: RpcScraper | None = None
        if cfg.scraper == "rpc":
            assert self.rpc is not None
            self.rpc_scraper = scraper = RpcScraper(
                self.rpc,
                state_view=cfg.v4_state_view,
                concurrency=cfg.scraping_concurrency,
                retries=cfg.scrape_retries,
                word_radius=cfg.v3_word_radius,
                pin_by_hash=cfg.pin_by_hash,
            )
        else:
            scraper = SimulatorScraper(cfg.scrape_socket, retries=cfg.scrape_retries)
        self.coord = StartupCoordinator(
            self.client,
            scraper,
            journal_depth=cfg.journal_depth,
            buffer_capacity=cfg.buffer_capacity,
            incremental_capacity=cfg.incremental_buffer_capacity,
            v2_batch=cfg.v2_scrape_batch_size,
            v3_v4_batch=cfg.v3_v4_scrape_batch_size,
            add_v2_batch=cfg.v2_add_batch_size,
            add_v3_v4_batch=cfg.v3_v4_add_batch_size,
            replay_wait=cfg.replay_wait,
            clock=clock,
        )
        self.retry = StartupRetry(clock, cfg.backoff_initial, cfg.backoff_max)
        self.checkpoint_path = Path(data_dir) / "sync" / "checkpoint.msgpack"
        # the ExEx source resumes too when there is a node to catch up from (eth_getLogs)
        self.use_checkpoint = cfg.checkpoint and self.rpc is not None
        if self.use_checkpoint:
            assert self.rpc is not None
            self.coord.resume_from = ResumeFrom(
                self.checkpoint_path,
                self.rpc,
                self.retry,
                catch_up=self.log_follower,
                follower=self.follower,
                v4_logs=bool(cfg.v4_pool_manager),
                replay_wait=cfg.replay_wait,
            )

    def log_addresses(self) -> list[str]:
        """What the follower asks eth_getLogs for: V2/V3 pools, and the PoolManager for V4."""
        specs = self.coord.specs.values()
        out = [s.address for s in specs if s.protocol != "v4" and s.address]
        if self.cfg.v4_pool_manager and any(s.protocol == "v4" for s in specs):
            out.append(self.cfg.v4_pool_manager)
        return out

    def log_follower(self, **options: Any) -> LogFollower:
        """A log follower on the configured node, addresses and limits (``options``: the rest)."""
        assert self.rpc is not None
        cfg = self.cfg
        return LogFollower(
            self.rpc,
            addresses=self.log_addresses,
            poll_interval=cfg.poll_interval,
            logs_range=cfg.logs_range,
            header_batch=cfg.rpc_batch_size,
            keep=max(cfg.reorg_keep, cfg.journal_depth + 1),
            backoff_initial=cfg.backoff_initial,
            backoff_max=cfg.backoff_max,
            clock=self.clock,
            **options,
        )
