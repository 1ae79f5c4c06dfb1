"""The startup coordinator's vocabulary, shared by its parts (coordinator.py, catchup.py,
resume.py): its figures, its error, and the hook every block it applies is announced through."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.sync.journal import BlockResult
from shared.exex import PoolUpdate

OnBlock = Callable[[BlockResult, bool, Sequence[PoolUpdate]], None]


class StartupError(Exception):
    """AlreadyLive / NotLive / a startup that cannot complete (seed's coordinator errors)."""


@dataclass(slots=True)
class StartupMetrics:
    v2_pools_scraped: int = 0
    v3_v4_pools_scraped: int = 0
    pools_failed: int = 0
    events_buffered: int = 0  # in the buffer when the last cold start replayed it
    events_replayed: int = 0
    blocks_replayed: int = 0
    reference_block: int = 0
    v2_scraping_duration_ms: float = 0.0
    v3_v4_scraping_duration_ms: float = 0.0
    replay_duration_ms: float = 0.0
    total_startup_duration_ms: float = 0.0
    cold_starts: int = 0
    incremental_adds: int = 0  # add_pools calls (live additions)
    pools_added_live: int = 0
    rescrapes: int = 0  # scrapes repeated because the buffer did not cover a pool's snapshot


def unannounced(result: BlockResult, committed: bool, updates: Sequence[PoolUpdate]) -> None:
    pass
