"""The ``sync`` section of the config file."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from shared.config import Duration, Endpoint, Port
from shared.constants import PORTS, tcp
from shared.messages import PoolSpec

Positive = Annotated[int, msgspec.Meta(ge=1)]


class SyncConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = tcp("sync", "pub")
    pull: Endpoint = tcp("sync", "pull")  # WhitelistAdd commands
    snapshot: Endpoint = tcp("sync", "snapshot")  # Clone snapshots of every pool state
    metrics_port: Port = PORTS["sync"]["metrics"]
    exex_socket: str = "/tmp/reth_exex.sock"
    scraper: Literal["simulator"] = "simulator"  # issue 6 adds "rpc"
    scrape_socket: str = "/tmp/poolwire_exex_scrape.sock"
    pools: list[PoolSpec] = []
    buffer_capacity: Positive = 100_000  # events held during a cold start
    incremental_buffer_capacity: Positive = 10_000  # events held for pools being added live
    journal_depth: Positive = 64  # blocks that can be reverted
    v2_scrape_batch_size: Positive = 500
    v3_v4_scrape_batch_size: Positive = 50
    scrape_retries: int = 2  # a pool that failed is retried this many times, then skipped
    backoff_initial: Duration = Duration(0.05)
    backoff_max: Duration = Duration(5.0)
    replay_wait: Duration = Duration(30.0)  # how long to wait for the stream to reach the scrape block
