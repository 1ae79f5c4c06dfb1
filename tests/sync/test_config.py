"""The sync section: a scraper is named or read over JSON-RPC (no simulator by default); backoffs
that cannot work are config errors."""

from __future__ import annotations

import pytest

from services.sync.config import SyncConfig
from shared.config import ConfigError, convert

# the ExEx simulator's sockets, named as tests and the demo do
SIMULATED = {"exex_socket": "/tmp/x.sock", "scraper": "simulator", "scrape_socket": "/tmp/x-scrape.sock"}


def test_the_scraper_is_json_rpc_unless_the_simulator_is_named() -> None:
    assert convert({"rpc_urls": ["http://node:8545"]}, SyncConfig, "sync").scraper == "rpc"
    assert convert(SIMULATED, SyncConfig, "sync").scraper == "simulator"
    # an ExEx socket alone has nothing to scrape from: said, not a simulator socket assumed
    with pytest.raises(ConfigError, match=r"no scraper: .*sync.rpc_urls.*sync.scraper: simulator"):
        convert({"exex_socket": "/tmp/x.sock"}, SyncConfig, "sync")
    with pytest.raises(ConfigError, match=r"sync\.scrape_socket is empty"):
        convert({"exex_socket": "/tmp/x.sock", "scraper": "simulator"}, SyncConfig, "sync")
    raw = {"source": "exex", "exex_socket": "/tmp/x.sock", "rpc_urls": ["http://node:8545"]}
    cfg = convert(raw, SyncConfig, "sync")
    assert (cfg.source, cfg.scraper) == ("exex", "rpc")


@pytest.mark.parametrize(
    "bad",
    [
        {"backoff_initial": "0s"},
        {"backoff_initial": "10s", "backoff_max": "5s"},
        {"failed_pool_retry": "0s"},
        {"failed_pool_retry": "10m", "failed_pool_retry_max": "5m"},
    ],
)
def test_a_backoff_that_cannot_work_is_a_config_error(bad: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="must be above 0 and at most"):
        convert({**SIMULATED, **bad}, SyncConfig, "sync")
