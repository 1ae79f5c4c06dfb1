"""Scrapers: pool state pinned at a block. The interface (:class:`Scraper`), what a scrape returns,
and pool keys. Implementations: rpc_scraper.py (JSON-RPC), simulator_scraper.py (the ExEx
simulator's scrape socket, for tests and the demo: config ``sync.scraper: simulator``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from services.sync.pool import Pool, parse_hex, v4_pool_id
from shared.messages import PoolSpec

NOT_ON_CHAIN = "not on chain"  # how a scrape failure's reason starts when the chain has no such pool


def pool_key(spec: PoolSpec) -> bytes:
    """A pool's key in sync's state and on the ExEx stream: its address, or its V4 pool id."""
    if spec.protocol == "v4":
        if spec.pool_id:
            return parse_hex(spec.pool_id, 32)
        return v4_pool_id(spec.currency0, spec.currency1, spec.fee, spec.tick_spacing, spec.hooks)
    return parse_hex(spec.address, 20)


@dataclass
class ScrapeResult:
    block: int  # the latest block any pool was scraped at
    hash: bytes
    pools: list[Pool] = field(default_factory=list)  # each with its own snapshot_block
    failed: list[tuple[PoolSpec, str]] = field(default_factory=list)
    round_trips: int = 0
    timestamp: int = 0  # block time of ``block``, seconds (0: unknown)


@dataclass(slots=True)
class ScrapeProgress:
    """The scrape under way (or the last one): pools done of total, moved after every batch."""

    done: int = 0
    total: int = 0
    block: int = 0


class PinUnavailable(Exception):
    """The block a scrape was asked to pin (``at``) is not canonical on the node (any more)."""


class Scraper(Protocol):
    async def scrape(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        """State of ``specs`` at one block per batch; pools that fail after retries go in ``failed``.
        ``at`` (number, hash): that block instead of the latest, if the scraper can (``can_pin``);
        raises :class:`PinUnavailable` if the node does not have it."""
        ...
