"""The ``ingest`` config section."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import Duration, Endpoint, Port
from shared.constants import PORTS, tcp

MAX_LOOP_PACE = 0.05
Count = Annotated[int, msgspec.Meta(ge=1)]


class IngestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = tcp("ingest", "pub")
    pull: Endpoint = tcp("ingest", "pull")  # ForceSubscribe commands
    snapshot: Endpoint = tcp("ingest", "snapshot")  # Clone snapshots of the books and mids
    metrics_port: Port = PORTS["ingest"]["metrics"]
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 in a container, so that Prometheus can scrape it
    publisher_id: str = ""  # default: ingest@host:pid
    # scale-out: this instance takes the assets whose blake2b(asset id) mod shard_count == shard_index
    shard_index: Annotated[int, msgspec.Meta(ge=0)] = 0
    shard_count: Count = 1
    ws_url: str = "wss://ws-subscriptions-clob.polymarket.com/ws/market"
    # discovery (Gamma); "" turns it off
    gamma_url: str = "https://gamma-api.polymarket.com"
    discovery_interval: Duration = Duration(300.0)
    gamma_page_limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    gamma_params: dict[str, str] = {}  # extra filters sent with every /markets/keyset request
    max_assets: Annotated[int, msgspec.Meta(ge=0)] = 0  # cap on discovered assets (0: none)
    assets: list[str] = []  # a static list, subscribed as well as whatever discovery finds
    subscribe_new_markets: bool = False  # queue the assets of new_market events
    # the pool (ENG-001)
    per_connection: Count = 400
    hard_limit: Count = 500
    min_pending: Count = 50
    max_connections: Count = 100
    subscribe_interval: Duration = Duration(30.0)
    # ForceSubscribe ids not known from discovery (or the static list) taken per minute; the rest
    # are refused and counted: any local peer can push the command, each id costs an upstream slot
    force_unknown_per_minute: Annotated[int, msgspec.Meta(ge=0)] = 200
    # each connection
    ping_interval: Duration = Duration(10.0)
    silence_timeout: Duration = Duration(60.0)  # no data this long: reconnect and resubscribe
    connect_timeout: Duration = Duration(10.0)
    backoff_base: Duration = Duration(0.5)
    backoff_cap: Duration = Duration(30.0)
    custom_features: bool = True  # best_bid_ask, new_market, market_resolved
    # recycling (ENG-005)
    pollution_threshold: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.30
    recycle_age: Duration = Duration(300.0)
    recycle_timeout: Duration = Duration(30.0)  # the replacement must deliver within this
    handoff_grace: Duration = Duration(1.0)  # then the old connection drains this long and closes
    # router (ENG-002)
    verify_hashes: bool = True
    hash_check_every: Count = 1  # check every Nth change per asset
    resync_interval: Duration = Duration(30.0)  # at most one resync per asset per interval
    # resync by REST (GET {rest_url}/book?token_id=); "" or a failed fetch: resubscribe on the socket
    rest_url: str = "https://clob.polymarket.com"
    rest_rate: Annotated[float, msgspec.Meta(gt=0)] = 10.0  # requests per second at most
    rest_timeout: Duration = Duration(5.0)
    rest_max_wait: Duration = Duration(5.0)  # a request that would queue longer is not sent
    rest_backoff_base: Duration = Duration(1.0)  # after a failure, equal jitter
    rest_backoff_cap: Duration = Duration(60.0)
    stop_timeout: Duration = Duration(8.0)
    # under load, at most one turn of the event loop this often: frames that arrive meanwhile wait
    # in the sockets and are read together (pacing.py); 0 reads each frame as it comes
    loop_pace: Duration = Duration(0.0005)

    def __post_init__(self) -> None:
        if self.loop_pace > MAX_LOOP_PACE:
            raise ValueError(
                f"loop_pace ({self.loop_pace * 1000:g} ms) is over {MAX_LOOP_PACE * 1000:g} ms: "
                "a frame could wait that long under load"
            )
        if self.shard_index >= self.shard_count:
            raise ValueError(
                f"shard_index ({self.shard_index}) must be below shard_count ({self.shard_count})"
            )
        if self.per_connection > self.hard_limit:
            raise ValueError(f"per_connection ({self.per_connection}) exceeds hard_limit ({self.hard_limit})")
