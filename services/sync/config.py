"""The ``sync`` section of the config file."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from services.sync.whitelist import SpecError, check_spec
from shared.config import Duration, Endpoint, Port
from shared.constants import PORTS, tcp
from shared.messages import PoolSpec

Positive = Annotated[int, msgspec.Meta(ge=1)]


class SyncConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = tcp("sync", "pub")
    pull: Endpoint = tcp("sync", "pull")  # WhitelistAdd commands
    snapshot: Endpoint = tcp("sync", "snapshot")  # Clone snapshots of every pool state
    metrics_port: Port = PORTS["sync"]["metrics"]
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so that Prometheus can scrape it
    # where blocks come from: "exex" (the socket), "rpc" (the log follower), "auto": rpc when
    # rpc_urls is set, else exex when exex_socket is set; neither is a config error (exit 2)
    source: Literal["auto", "exex", "rpc"] = "auto"
    exex_socket: str = ""  # e.g. /tmp/reth_exex.sock
    # where pool state is scraped: "auto" = "rpc" (batched eth_calls; needs rpc_urls); "simulator"
    # (the ExEx simulator's scrape socket, scrape_socket: tests and the demo) only when named
    scraper: Literal["auto", "simulator", "rpc"] = "auto"
    scrape_socket: str = ""  # the simulator's scrape socket, e.g. /tmp/poolwire-demo-scrape.sock
    rpc_urls: list[str] = []  # JSON-RPC over HTTP, tried in turn on failures
    rpc_ws_url: str = ""  # optional: newHeads subscription as the follower's trigger
    chain_id: int = 0  # checked against eth_chainId at start when not 0
    v4_state_view: str = ""  # StateView contract (V4 scrapes)
    v4_pool_manager: str = ""  # PoolManager contract (V4 logs)
    rpc_timeout: Duration = Duration(10.0)
    rpc_retries: int = 3  # per request, with backoff (timeouts, transport errors, garbage)
    rpc_batch_size: Positive = 500  # JSON-RPC calls per batch request
    scraping_concurrency: Positive = 4  # batches of pools scraped at once (seed)
    v3_word_radius: int = 0  # tick bitmap words scraped either side of the price; 0 = every word
    poll_interval: Duration = Duration(1.0)  # follower: polls the tip this often (and on newHeads)
    logs_range: Positive = 1000  # follower: blocks per eth_getLogs while catching up
    reorg_keep: Positive = 256  # follower: block hashes kept to find a common ancestor
    # write pool states to <data_dir>/sync/ and resume from them (needs rpc_urls: the catch-up is eth_getLogs)
    checkpoint: bool = True
    checkpoint_interval: Duration = Duration(30.0)
    pools: list[PoolSpec] = []
    buffer_capacity: Positive = 100_000  # events held during a cold start
    incremental_buffer_capacity: Positive = 10_000  # events held for pools being added live
    journal_depth: Positive = 64  # blocks that can be reverted
    v2_scrape_batch_size: Positive = 500
    v3_v4_scrape_batch_size: Positive = 50
    v2_add_batch_size: Positive = 100  # pools added while live are scraped in smaller batches (seed)
    v3_v4_add_batch_size: Positive = 10
    pin_by_hash: bool = False  # rpc scraper: name the block by hash in eth_call (EIP-1898)
    scrape_retries: int = 2  # a pool that failed is retried this many times, then skipped
    backoff_initial: Duration = Duration(0.05)
    backoff_max: Duration = Duration(5.0)
    failed_pool_retry: Duration = Duration(5.0)  # a pool whose scrape failed is tried again after this,
    failed_pool_retry_max: Duration = Duration(300.0)  # doubling up to this while it keeps failing
    # pools added over PULL (not sync.pools) that the chain does not have: kept and retried up to
    # this many; more are forgotten, counted (whitelist_missing_dropped_total)
    whitelist_max_missing: Annotated[int, msgspec.Meta(ge=0)] = 100
    replay_wait: Duration = Duration(30.0)  # how long to wait for the stream to reach the scrape block

    def __post_init__(self) -> None:
        if self.source == "auto":
            self.source = "rpc" if self.rpc_urls else "exex" if self.exex_socket else "auto"
        if self.source == "auto":
            raise ValueError(
                "no block source: set sync.rpc_urls (a JSON-RPC node) or sync.exex_socket (a Reth ExEx)"
            )
        if self.source == "rpc" and not self.rpc_urls:
            raise ValueError("sync.source is rpc but sync.rpc_urls is empty")
        if self.source == "exex" and not self.exex_socket:
            raise ValueError("sync.source is exex but sync.exex_socket is empty")
        if self.scraper == "auto":
            self.scraper = "rpc"
        if self.scraper == "rpc" and not self.rpc_urls:
            raise ValueError(
                "no scraper: pool state is read over JSON-RPC: set sync.rpc_urls "
                "(or sync.scraper: simulator with sync.scrape_socket, the ExEx simulator's)"
            )
        if self.scraper == "simulator" and not self.scrape_socket:
            raise ValueError("sync.scraper is simulator but sync.scrape_socket is empty")
        for base, cap in (("backoff_initial", "backoff_max"), ("failed_pool_retry", "failed_pool_retry_max")):
            if not 0 < getattr(self, base) <= getattr(self, cap):
                raise ValueError(f"sync.{base} must be above 0 and at most sync.{cap}")
        for i, spec in enumerate(self.pools):
            try:
                check_spec(spec)
            except SpecError as exc:
                raise ValueError(f"sync.pools[{i}]: {exc}") from None
        v4 = any(p.protocol == "v4" for p in self.pools)
        if v4 and self.scraper == "rpc" and not self.v4_state_view:
            raise ValueError("V4 pools scraped over JSON-RPC need sync.v4_state_view (StateView address)")
        if v4 and self.source == "rpc" and not self.v4_pool_manager:
            raise ValueError(
                "V4 pools followed over JSON-RPC need sync.v4_pool_manager (PoolManager address)"
            )
