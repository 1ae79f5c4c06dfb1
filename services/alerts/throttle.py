"""Per-ticker throttling (seed 004): run a strategy at a bucket boundary only if its universe moved.

Pure and synchronous: no sockets, no clock of its own (every call takes ``now_ns``). The service
feeds it ticker updates, asks it at each boundary which strategies are due, and tells it the
``used_symbols`` that results report (universe discovery).

At boundary ``B`` of a strategy with bucket ``S``:

- claim ``B`` in the store (atomic there); a strategy that already ran ``B`` is a *bucket
  duplicate* (a restart inside the bucket, a second instance sharing Redis) and is skipped;
- changed = tickers updated since its previous run (or ``B - S`` for a first run), intersected
  with its universe (the store iterates the smaller side; Redis does large ones server-side);
- empty: *skipped, no update*; else one job is due with the changed tickers.

Given a job maker, the jobs of what is due are built during the claim and persisted with it, in
one transaction: a claimed bucket always has its jobs in the store until their results are handled.
"""

from __future__ import annotations

import fnmatch
import gc
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from services.alerts.store import ThrottleStore
from shared.messages import StrategyJob

UniverseMode = Literal["list", "glob", "discover"]
GLOB = "*?["  # a universe entry with one of these is a pattern (fnmatch), else a ticker

MAX_PASSED = 1000  # boundaries passed over that one call evaluates, per bucket size
SIZE_CLASSES: tuple[tuple[str, int], ...] = (("small", 10), ("medium", 100), ("large", 1000))


@dataclass(frozen=True, slots=True)
class StrategySpec:
    id: str
    bucket_ns: int
    mode: UniverseMode = "discover"
    tickers: frozenset[str] = frozenset()  # explicit tickers (list and glob modes)
    patterns: tuple[str, ...] = ()  # glob mode

    @classmethod
    def from_universe(cls, id: str, bucket_ns: int, universe: Sequence[str] | str) -> StrategySpec:
        if bucket_ns <= 0:
            raise ValueError(f"strategy {id}: bucket must be > 0")
        if isinstance(universe, str):
            if universe != "discover":
                raise ValueError(f"strategy {id}: universe must be a list or 'discover', not {universe!r}")
            return cls(id, bucket_ns, "discover")
        patterns = tuple(u for u in universe if any(c in u for c in GLOB))
        tickers = frozenset(u for u in universe if u not in patterns)
        return cls(id, bucket_ns, "glob" if patterns else "list", tickers, patterns)

    def matches(self, ticker: str) -> bool:
        return any(fnmatch.fnmatchcase(ticker, p) for p in self.patterns)


@dataclass(slots=True)
class Due:
    """A strategy to run now over the tickers of its universe that moved (in no order)."""

    strategy: str
    bucket_ns: int
    since_ns: int
    tickers: set[str]
    job: StrategyJob | None = None  # built by the job maker, persisted with the claim


class PartialBoundary(Exception):
    """The store failed during a boundary: ``due`` holds what the groups before it claimed (their
    jobs must still go out); the failed group is left to be evaluated again."""

    def __init__(self, due: list[Due], cause: Exception) -> None:
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.due = due
        self.cause = cause


# The jobs of what is due (one per Due, in order); they are persisted with the claim.
JobMaker = Callable[[list[Due]], Sequence[StrategyJob]]


@dataclass(slots=True)
class ThrottleStats:
    ticker_updates: int = 0  # updates noted (before batching)
    universe_updates: int = 0  # tickers added to universes (glob growth, discovery)
    evaluations: int = 0
    runs: int = 0
    skipped_no_update: int = 0
    skipped_duplicate: int = 0
    large_intersections: int = 0
    discoveries: int = 0
    cleanups: int = 0
    cleaned: int = 0  # ticker updates removed by cleanups


@dataclass(slots=True)
class Distribution:
    counts: dict[str, int] = field(default_factory=dict)  # small / medium / large / xlarge
    strategies: int = 0
    average: float = 0.0


class Throttle:
    def __init__(self, store: ThrottleStore, strategies: Iterable[StrategySpec]) -> None:
        self.store = store
        self.stats = ThrottleStats()
        self.strategies: dict[str, StrategySpec] = {}
        self._groups: dict[int, list[str]] = {}  # bucket_ns -> strategy ids
        self._group_last: dict[int, int] = {}  # bucket_ns -> last boundary evaluated here
        self._globs: list[StrategySpec] = []
        self._pending: dict[str, int] = {}
        self._latest_ns = 0  # the latest update noted here
        self._known: set[str] = set()
        self._universe_adds: dict[str, list[str]] = {}
        for spec in strategies:
            if spec.id in self.strategies:
                raise ValueError(f"duplicate strategy id {spec.id!r}")
            self.strategies[spec.id] = spec
            self._groups.setdefault(spec.bucket_ns, []).append(spec.id)
            if spec.mode == "glob":
                self._globs.append(spec)

    # -- start-up ------------------------------------------------------------------------------

    def start(self) -> None:
        """Load known tickers; write configured universes (a discovered one is kept as stored)."""
        self._known = set(self.store.tickers())
        for spec in self.strategies.values():
            if spec.mode == "list":
                self.store.set_universe(spec.id, spec.tickers)
            elif spec.mode == "glob":
                self.store.set_universe(spec.id, spec.tickers | {t for t in self._known if spec.matches(t)})

    def resume(self, evaluated: dict[int, int], latest_ns: int) -> None:
        """After a restart: the boundary each bucket size was evaluated through before it, and the
        latest input taken back, so the first evaluation catches up on the boundaries in between
        in order (a claimed one is a bucket duplicate), not only the latest."""
        for size, boundary in evaluated.items():
            if size in self._groups and boundary > 0:
                self._group_last[size] = max(self._group_last.get(size, -1), boundary)
        self._latest_ns = max(self._latest_ns, latest_ns)

    # -- ticker updates ------------------------------------------------------------------------

    def note_update(self, ticker: str, ns: int) -> None:
        """A ticker moved (a price, a trade, a swap); batched until :meth:`flush`."""
        self.stats.ticker_updates += 1
        pending = self._pending
        if pending.get(ticker, -1) < ns:
            pending[ticker] = ns
            if ns > self._latest_ns:
                self._latest_ns = ns
        if ticker not in self._known:
            self._known.add(ticker)
            for spec in self._globs:
                if spec.matches(ticker):
                    self._universe_adds.setdefault(spec.id, []).append(ticker)

    def flush(self) -> int:
        """Write batched updates (and glob universe growth) to the store; returns tickers written.

        If the store raises (Redis down), what was not written stays batched for the next flush.
        """
        adds, self._universe_adds = self._universe_adds, {}
        while adds:
            strategy, tickers = next(iter(adds.items()))
            try:
                self.store.add_to_universe(strategy, tickers)
            except BaseException:
                for s, t in self._universe_adds.items():
                    adds.setdefault(s, []).extend(t)
                self._universe_adds = adds
                raise
            del adds[strategy]
            self.stats.universe_updates += len(tickers)
        pending, self._pending = self._pending, {}
        if pending:
            try:
                self.store.record_updates(pending)
            except BaseException:
                for ticker, ns in self._pending.items():
                    if pending.get(ticker, -1) < ns:
                        pending[ticker] = ns
                self._pending = pending
                raise
        return len(pending)

    def flush_tickers(self, tickers: Iterable[str]) -> None:
        """Write the batched updates of these tickers only (the rest wait for :meth:`flush`);
        a restart counts them as changed. If the store raises, they stay batched."""
        pending = self._pending
        some = {t: pending.pop(t) for t in tickers if t in pending}
        if not some:
            return
        try:
            self.store.record_updates(some)
        except BaseException:
            for ticker, ns in some.items():
                if pending.get(ticker, -1) < ns:
                    pending[ticker] = ns
            raise

    # -- boundaries ----------------------------------------------------------------------------

    def next_boundary(self, now_ns: int) -> int | None:
        """The earliest bucket boundary after ``now_ns`` (None without strategies)."""
        if not self._groups:
            return None
        return min(now_ns - now_ns % s + s for s in self._groups)

    def run_due(self, now_ns: int, make_jobs: JobMaker | None = None) -> list[Due]:
        """Evaluate every bucket group whose boundary passed since it was last evaluated here.

        When ``now_ns`` moved more than a bucket since (a replay's event time, a stalled loop), the
        boundaries passed over are evaluated too, in order, as a live run evaluates each: those
        that can hold an update (up to a bucket after the latest one noted, at most
        ``MAX_PASSED``); the ones after that would find nothing changed and are not claimed.
        """
        due: list[Due] = []
        flushed = False
        for size, ids in self._groups.items():
            boundary = now_ns - now_ns % size
            last = self._group_last.get(size, -1)
            if last >= boundary:
                continue
            # before the first evaluation here (last -1): the latest boundary alone
            passed = range(last + size, min(boundary, self._latest_ns + size + 1) if last >= 0 else 0, size)
            if len(passed) > MAX_PASSED:  # a jump of the clock, not a gap in a stream: the first ones
                passed = passed[:MAX_PASSED]
            for b in (*passed, boundary):
                try:
                    if not flushed:
                        self.flush()
                        flushed = True
                    due.extend(self.evaluate(b, ids, size, make_jobs))
                except Exception as exc:  # the store failed: this boundary is evaluated again next time
                    raise PartialBoundary(due, exc) from exc
                self._group_last[size] = b
        return due

    def evaluate(
        self, bucket_ns: int, ids: Sequence[str], size_ns: int, make_jobs: JobMaker | None = None
    ) -> list[Due]:
        """One boundary for strategies of one bucket size: claim, intersect, classify (and with
        ``make_jobs``, build the jobs of what is due: persisted with the claim, set on each Due).

        It allocates a set per strategy and no reference cycles, so the cycle collector is paused
        meanwhile: otherwise it traverses those young sets (every member) again and again, which
        measured at 40 % of a 10 000-strategy bucket.
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._evaluate(bucket_ns, ids, size_ns, make_jobs)
        finally:
            if enabled:
                gc.enable()

    def _evaluate(
        self, bucket_ns: int, ids: Sequence[str], size_ns: int, make_jobs: JobMaker | None
    ) -> list[Due]:
        stats = self.stats
        stats.evaluations += len(ids)
        first = bucket_ns - size_ns
        planned: list[Due] = []
        asked = 0

        def plan(prevs: dict[str, int]) -> Sequence[StrategyJob]:
            """What the strategies the store may claim would run (called inside the claim)."""
            nonlocal planned, asked
            requests = [(sid, prev if prev > 0 else first) for sid, prev in prevs.items()]
            changed, large = self.store.changed(requests)
            stats.large_intersections += large
            asked = len(requests)
            planned = [
                Due(sid, bucket_ns, since, tickers)
                for (sid, since), tickers in zip(requests, changed, strict=True)
                if tickers
            ]
            if make_jobs is None or not planned:
                return ()
            jobs = make_jobs(planned)
            for d, job in zip(planned, jobs, strict=True):
                d.job = job
            return jobs

        claimed = self.store.claim(bucket_ns, ids, plan)
        stats.skipped_duplicate += len(ids) - len(claimed)
        # Claimed fewer than planned: another instance took some in between (Redis).
        due = planned if len(claimed) == asked else [d for d in planned if d.strategy in claimed]
        stats.runs += len(due)
        stats.skipped_no_update += len(claimed) - len(due)
        return due

    # -- results -------------------------------------------------------------------------------

    def discover(self, strategy: str, used_symbols: Iterable[str]) -> bool:
        """A result reported the symbols its strategy used: they become its universe."""
        used = set(used_symbols)
        if not used or strategy not in self.strategies:
            return False
        if self.store.get_universe(strategy) == used:
            return False
        self.store.set_universe(strategy, used)
        self.stats.discoveries += 1
        self.stats.universe_updates += len(used)
        return True

    # -- maintenance ---------------------------------------------------------------------------

    def cleanup(self, now_ns: int, retention_ns: int) -> int:
        removed = self.store.cleanup(now_ns - retention_ns)
        self.stats.cleanups += 1
        self.stats.cleaned += removed
        return removed

    def distribution(self) -> Distribution:
        sizes = self.store.universe_sizes()
        counts = {name: 0 for name, _ in SIZE_CLASSES} | {"xlarge": 0}
        for n in sizes.values():
            counts[size_class(n)] += 1
        avg = sum(sizes.values()) / len(sizes) if sizes else 0.0
        return Distribution(counts, len(sizes), avg)


def size_class(n: int) -> str:
    for name, limit in SIZE_CLASSES:
        if n <= limit:
            return name
    return "xlarge"
