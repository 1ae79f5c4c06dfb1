"""Throttle state: ticker updates, strategy universes, last runs, alert states, pending jobs.

Two backends behind one interface:

- ``SqliteStore`` (store_sqlite.py), the embedded default: one process owns it, so it keeps the working set in
  memory (dicts and sets) and writes through to SQLite in the data directory, which is read back
  at start-up. Intersections run in memory, iterating the smaller side.
- ``RedisStore`` (store_redis.py), for several alerts instances sharing state, in the seed's layout: a ZSET of
  ticker updates (``TICK:UPD``, score = ms), a SET per strategy universe
  (``STRAT:<id>:UNIV``), a hash of last runs. Universes larger than ``large_universe`` are
  intersected server-side by a Lua script that iterates the smaller side; smaller ones are fetched
  and intersected here. The bucket claim is one atomic script, so two instances never both run a
  strategy for one bucket.

Pending jobs make a claim recoverable: :meth:`ThrottleStore.claim` persists the jobs it is given
(inputs included) in the same transaction as the bucket claim, :meth:`ThrottleStore.finish_job`
forgets one in the same transaction as the alert states its result changed, and
:meth:`ThrottleStore.adopt_jobs` hands the jobs that no live instance is handling (a crashed or
stopped one's) to be dispatched again. On SQLite (one instance) that is every job a previous run
left; on Redis each instance holds a lease, renewed by ``adopt_jobs``, and jobs are adopted from
owners whose lease ran out (or who released it on a clean stop). A claim's jobs are stored as one
*batch* blob, the inputs they share (the bucket's closed bars) once, plus one small row per job
naming its batch; the batch goes with its last job.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from services.alerts.frequency import AlertState
from shared.messages import StrategyJob, TickerInput

log = logging.getLogger("poolwire.alerts.store")

NS_PER_MS = 1_000_000
GROUP_CLAIM_MIN = 64  # SQLite: a claim of this many strategies or more is stored as one group row
DEFAULT_LEASE_NS = 10_000_000_000  # Redis: an instance that has not renewed its lease this long is gone
MEMBERS_DEC = msgspec.msgpack.Decoder(list[str])
MEMBERS_ENC = msgspec.msgpack.Encoder()

# Given the strategies a claim may take and their previous buckets (0: never ran), the jobs to run
# for them (at most one per strategy): persisted with the claim, for the strategies it takes.
Plan = Callable[[dict[str, int]], Sequence[StrategyJob]]


class _Batch(msgspec.Struct, array_like=True):
    """The jobs of one claim, compactly: the inputs they share (their bucket's bars) once, and a job
    whose inputs are exactly those of its tickers as a row of its field values (inputs left out)."""

    fields: list[str]  # StrategyJob's, in the order of each row
    inputs: dict[str, TickerInput]
    rows: list[tuple[Any, ...]]
    whole: list[StrategyJob]  # the others (an order-flow job's bars carry its own window)


_BATCH_ENC = msgspec.msgpack.Encoder()
_BATCH_DEC = msgspec.msgpack.Decoder(_Batch)
_JOB_FIELDS = list(StrategyJob.__struct_fields__)


def pack_jobs(jobs: Sequence[StrategyJob]) -> bytes:
    """One blob for a claim's jobs; which share inputs is checked with C-level set and dict
    operations, never per input in Python."""
    shared: dict[str, TickerInput] = {}
    for job in reversed(jobs):  # the first job's input of a ticker wins
        shared.update(job.inputs)
    common = shared.items()
    known = shared.keys()
    replace = msgspec.structs.replace
    astuple = msgspec.structs.astuple
    rows: list[tuple[Any, ...]] = []
    whole: list[StrategyJob] = []
    for job in jobs:
        if job.inputs.keys() == (known & job.tickers) and job.inputs.items() <= common:
            rows.append(astuple(replace(job, inputs={})))
        else:
            whole.append(job)
    return _BATCH_ENC.encode(_Batch(_JOB_FIELDS, shared, rows, whole))


def unpack_jobs(blob: bytes | str) -> dict[str, StrategyJob]:
    """job id -> job (inputs restored) of a batch (msgpack, or its hex on Redis)."""
    batch = _BATCH_DEC.decode(as_bytes(blob))
    shared = batch.inputs
    fields = batch.fields
    out: dict[str, StrategyJob] = {}
    for row in batch.rows:
        job = msgspec.convert(dict(zip(fields, row, strict=True)), StrategyJob)
        job.inputs = {t: shared[t] for t in job.tickers if t in shared}
        out[job.job_id] = job
    for job in batch.whole:
        out[job.job_id] = job
    return out


def adopted(
    pending: Iterable[tuple[str, Any]], blobs: Mapping[Any, bytes | str | None]
) -> tuple[list[StrategyJob], list[str]]:
    """The jobs (job id, batch) out of their batches' blobs, oldest evaluation first; and the ids of
    those that could not be read (logged: they are dropped)."""
    batches: dict[Any, dict[str, StrategyJob]] = {}
    for batch, blob in blobs.items():
        try:
            batches[batch] = unpack_jobs(blob) if blob is not None else {}
        except (msgspec.DecodeError, ValueError):
            batches[batch] = {}
    jobs: list[StrategyJob] = []
    bad: list[str] = []
    for job_id, batch in pending:
        job = batches.get(batch, {}).get(job_id)
        if job is None:
            bad.append(job_id)
        else:
            jobs.append(job)
    if bad:
        log.warning("dropped %d pending job(s) that could not be read: %s", len(bad), bad[:5])
    jobs.sort(key=lambda j: j.bucket_ns)  # stable: the claim's order within an evaluation
    return jobs, bad


class ThrottleStore(Protocol):
    name: str
    write_failures: int  # writes that failed and are kept to retry (SQLite)

    def record_updates(self, updates: Mapping[str, int]) -> None:
        """Ticker -> time (ns) of its last update; an older time never replaces a newer one."""

    def save_inputs(self, rows: Mapping[str, bytes], deletes: Sequence[str] = ()) -> None:
        """Write (replace) rows of the open bars' inputs and delete others: what a restart takes
        back with :meth:`load_inputs` (alerts' core owns the keys and the bodies)."""

    def load_inputs(self) -> dict[str, bytes]: ...

    def ticker_count(self) -> int: ...

    def tickers(self) -> list[str]: ...

    def last_update(self, ticker: str) -> int | None: ...

    def cleanup(self, cutoff_ns: int) -> int:
        """Forget ticker updates older than ``cutoff_ns``; returns how many were removed."""

    def get_universe(self, strategy: str) -> set[str] | None:
        """The strategy's universe; None when it has none (it watches every ticker)."""

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None: ...

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None: ...

    def drop_universe(self, strategy: str) -> None: ...

    def universe_sizes(self) -> dict[str, int]: ...

    def claim(self, bucket_ns: int, strategies: Sequence[str], plan: Plan | None = None) -> dict[str, int]:
        """Mark these strategies as run for ``bucket_ns``, atomically.

        Returns {strategy: its previous bucket (0: never ran)} for those claimed; a strategy that
        already ran this bucket (or a later one) is left out: a bucket duplicate. ``plan`` is
        called (once, if any strategy may be claimed) with those strategies and their previous
        buckets; the jobs it returns for the strategies claimed are persisted in the same
        transaction as the claim (pending until :meth:`finish_job`). If it raises, nothing is
        claimed.
        """

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        """For each (strategy, since_ns): the tickers of its universe updated at or after since.

        Returns the sets in request order and how many were large-universe intersections.
        """

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]: ...

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None: ...

    def finish_job(self, job_id: str, states: Mapping[tuple[str, str], AlertState]) -> None:
        """A pending job's result is handled (or it failed for good): persist the alert states it
        changed and forget the job, in one transaction."""

    def adopt_jobs(self, now_ns: int) -> list[StrategyJob]:
        """Pending jobs that no live instance is handling, now this one's to dispatch (oldest
        evaluation first). Call it at start and then regularly: on Redis it renews this
        instance's lease too."""

    def pending_jobs(self) -> int:
        """How many jobs are pending (dispatched, result not handled yet), by every instance."""

    def transaction(self) -> contextlib.AbstractContextManager[object]:
        """Group this instance's writes into one commit (SQLite; on Redis each one is atomic alone)."""

    def retry_writes(self) -> bool:
        """Write again what failed to be written (SQLite); True when nothing is left."""

    def pending_writes(self) -> int:
        """Statements kept after a failed write, not written yet."""

    def close(self) -> None:
        """Close; on Redis, release the lease (this instance's pending jobs are adoptable at once)."""


def intersect(updated: set[str], universe: set[str] | frozenset[str]) -> set[str]:
    """Iterate the smaller side (what CPython's ``&`` does too; spelled out because it matters)."""
    if len(universe) <= len(updated):
        return {t for t in universe if t in updated}
    return {t for t in updated if t in universe}


# ----------------------------------------------------------------------------------------------
# SQLite


def as_bytes(value: str | bytes) -> bytes:
    return bytes.fromhex(value) if isinstance(value, str) else value
