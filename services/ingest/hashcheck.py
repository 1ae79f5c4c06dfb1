"""Book hash verification (issue 12): variants, pinning, deferred checks, the resync throttle. Pure.

The server's hash rule has changed before and will again (book.py states the known variants). A
book tries the variants in order and pins, on its asset, the first one it reproduces; the asset's
changes are then checked under that variant only. A book that no variant reproduces marks its
asset **unverifiable**: counted (``unverifiable``), logged rate-limited, its changes not checked,
and never a resync because of it (a resync would bring a book hashed the same way: a storm of
resubscriptions for nothing). The next book tries the variants again, so a rule that comes back is
picked up, and so is a switch between known variants.

A change's mismatch under the pinned variant asks for a resync, at most one per asset per
``resync_interval``. Checks are deferred: at most once per asset per frame (the frame's last entry
hash covers the book after all its entries), or, with ``defer``, once the frames at hand are routed
and published (the service's event loop), once per asset in its latest state.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from services.ingest.book import VARIANTS, LocalBook
from shared.clock import Clock

UNPINNED: Final = 0
UNVERIFIABLE: Final = -1

ResyncRequest = Callable[[str, str], None]  # connection id, asset id
SkipLog = Callable[..., None]


class Checked(Protocol):
    """What the checker reads and writes on an asset's state (the router's AssetState)."""

    asset: str
    market: str
    owner: str
    hash: str
    book: LocalBook
    variant: int  # fields of the pinned variant; UNPINNED, or UNVERIFIABLE
    checks: int
    last_resync: float
    stale: bool  # a change mismatched: the next book replaces the local one even at the same hash


@dataclass(slots=True)
class HashStats:
    checks: int = 0
    mismatches: int = 0  # a change's hash not reproduced under its asset's pinned variant
    book_mismatches: int = 0  # a book not reproduced under its pinned variant (another may be)
    unverifiable: int = 0  # books that no variant reproduces
    unverified_changes: int = 0  # changes not checked: their asset's rule is not known
    pins: int = 0  # books that pinned (or re-pinned) a variant
    resyncs: int = 0
    resyncs_suppressed: int = 0


class HashChecker:
    def __init__(
        self,
        *,
        clock: Clock,
        resync_interval: float = 30.0,
        every: int = 1,
        on_resync: ResyncRequest | None = None,
        skip_log: SkipLog | None = None,
        defer: Callable[[Callable[[], object]], object] | None = None,
        before: Callable[[], None] | None = None,
    ) -> None:
        self.clock = clock
        self.resync_interval = resync_interval
        self.every = max(1, every)
        self.on_resync = on_resync
        self.skip_log: SkipLog = skip_log or (lambda reason, msg, *args: None)
        self.defer = defer
        self.before = before
        self.stats = HashStats()
        self.pending: dict[str, tuple[Checked, str, str]] = {}  # asset -> (state, timestamp, hash)
        self._scheduled = False

    # -- books -------------------------------------------------------------------------------------

    def on_book(self, st: Checked, timestamp: str, expected: str) -> bool:
        """Pin the variant this book reproduces (pinned one first); returns whether one did."""
        self.pending.pop(st.asset, None)
        stats = self.stats
        pinned = st.variant
        order = (pinned, *(v for v in VARIANTS if v != pinned)) if pinned > 0 else VARIANTS
        for fields in order:
            stats.checks += 1
            if st.book.hash(st.market, st.asset, timestamp, fields) == expected:
                if fields != pinned:
                    stats.pins += 1
                    st.variant = fields
                return True
            if fields == pinned:
                stats.book_mismatches += 1
        st.variant = UNVERIFIABLE
        stats.unverifiable += 1
        self.skip_log(
            "hash_unverifiable",
            "ingest: no known hash rule reproduces the book of %.80r (hash %.48r): its changes go "
            "unchecked until a book verifies",
            st.asset,
            expected,
        )
        return False

    # -- changes -----------------------------------------------------------------------------------

    def on_change(self, st: Checked, timestamp: str, expected: str) -> None:
        """A change whose resulting book should hash to ``expected``: checked later, once."""
        if st.variant <= 0:
            self.stats.unverified_changes += 1
            return
        pending = self.pending
        if st.asset in pending:
            pending[st.asset] = (st, timestamp, expected)  # its latest state, checked once
            return
        st.checks += 1
        if st.checks % self.every:
            return
        pending[st.asset] = (st, timestamp, expected)
        if self.defer is not None and not self._scheduled:
            self._scheduled = True
            self.defer(self.run)

    def cancel(self, asset: str) -> None:
        """The hashed document changed another way (a trade, a tick size, a book): no check."""
        if self.pending:
            self.pending.pop(asset, None)

    def end_of_frame(self) -> None:
        """Without ``defer``, a frame's checks run when it is routed."""
        if self.defer is None and self.pending:
            self.run()

    def run(self) -> int:
        """Check what is pending (after ``before``, the publisher's flush); returns how many."""
        self._scheduled = False
        pending, self.pending = self.pending, {}
        if self.before is not None:
            self.before()
        n = 0
        stats = self.stats
        for st, ts, expected in pending.values():
            if st.hash != expected or st.variant <= 0:
                continue  # released, or something else came since
            n += 1
            stats.checks += 1
            if st.book.hash(st.market, st.asset, ts, st.variant) == expected:
                continue
            stats.mismatches += 1
            st.stale = True
            self.request_resync(st)
        return n

    def request_resync(self, st: Checked) -> None:
        now = self.clock.monotonic()
        if now - st.last_resync < self.resync_interval:
            self.stats.resyncs_suppressed += 1
            return
        st.last_resync = now
        self.stats.resyncs += 1
        self.skip_log("hash_mismatch", "ingest: book hash mismatch on %.80r: resync", st.asset)
        if self.on_resync is not None:
            self.on_resync(st.owner, st.asset)
