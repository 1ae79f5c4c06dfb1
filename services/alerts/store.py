"""Throttle state: ticker updates, strategy universes, last runs, alert states, pending jobs.

Two backends behind one interface:

- :class:`SqliteStore`, the embedded default: one process owns it, so it keeps the working set in
  memory (dicts and sets) and writes through to SQLite in the data directory, which is read back
  at start-up. Intersections run in memory, iterating the smaller side.
- :class:`RedisStore`, for several alerts instances sharing state, in the seed's layout: a ZSET of
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
import hashlib
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from services.alerts.frequency import STATE_DECODER, STATE_ENCODER, AlertState
from shared.messages import StrategyJob, TickerInput

log = logging.getLogger("poolwire.alerts.store")

NS_PER_MS = 1_000_000
GROUP_CLAIM_MIN = 64  # SQLite: a claim of this many strategies or more is stored as one group row
DEFAULT_LEASE_NS = 10_000_000_000  # Redis: an instance that has not renewed its lease this long is gone
_MEMBERS = msgspec.msgpack.Decoder(list[str])
_MEMBERS_ENC = msgspec.msgpack.Encoder()

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
    batch = _BATCH_DEC.decode(_b(blob))
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


def _adopted(
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

    def record_updates(self, updates: Mapping[str, int]) -> None:
        """Ticker -> time (ns) of its last update; an older time never replaces a newer one."""

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

    def close(self) -> None:
        """Close; on Redis, release the lease (this instance's pending jobs are adoptable at once)."""


def intersect(updated: set[str], universe: set[str] | frozenset[str]) -> set[str]:
    """Iterate the smaller side (what CPython's ``&`` does too; spelled out because it matters)."""
    if len(universe) <= len(updated):
        return {t for t in universe if t in updated}
    return {t for t in updated if t in universe}


# ----------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ticker_updates (ticker TEXT PRIMARY KEY, ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ticker_updates_ns ON ticker_updates (ns);
CREATE TABLE IF NOT EXISTS universes (strategy TEXT NOT NULL, ticker TEXT NOT NULL,
    PRIMARY KEY (strategy, ticker)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS universe_known (strategy TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_runs (strategy TEXT PRIMARY KEY, bucket_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claim_groups (group_key TEXT PRIMARY KEY, members BLOB NOT NULL,
    bucket_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_states (strategy TEXT NOT NULL, symbol TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (strategy, symbol)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS job_batches (batch INTEGER PRIMARY KEY, jobs BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS pending_jobs (job_id TEXT PRIMARY KEY, batch INTEGER NOT NULL) WITHOUT ROWID;
"""


class SqliteStore:
    """Embedded store: in-memory working set, written through to one SQLite file."""

    name = "sqlite"

    def __init__(self, path: str, *, large_universe: int = 1000) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.large_universe = large_universe
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._updates: dict[str, int] = dict(self._db.execute("SELECT ticker, ns FROM ticker_updates"))
        self._universes: dict[str, set[str]] = {
            s: set() for (s,) in self._db.execute("SELECT strategy FROM universe_known")
        }
        for strategy, ticker in self._db.execute("SELECT strategy, ticker FROM universes"):
            self._universes.setdefault(strategy, set()).add(ticker)
        self._last: dict[str, int] = dict(self._db.execute("SELECT strategy, bucket_ns FROM last_runs"))
        self._groups: set[str] = set()
        for key, members, bucket_ns in self._db.execute(
            "SELECT group_key, members, bucket_ns FROM claim_groups"
        ):
            self._groups.add(key)
            for s in _MEMBERS.decode(members):
                if self._last.get(s, 0) < bucket_ns:
                    self._last[s] = bucket_ns
        self._alerts: dict[tuple[str, str], AlertState] = {
            (s, sym): STATE_DECODER.decode(blob)
            for s, sym, blob in self._db.execute("SELECT strategy, symbol, state FROM alert_states")
        }
        self._job_batch: dict[str, int] = {}  # pending job -> its batch
        self._batch_left: dict[int, int] = {}  # batch -> its pending jobs
        # Jobs a previous run left pending: one instance owns the file, so they are all orphans.
        self._db.execute("DELETE FROM job_batches WHERE batch NOT IN (SELECT batch FROM pending_jobs)")
        self._orphans: list[tuple[str, int]] | None = list(
            self._db.execute("SELECT job_id, batch FROM pending_jobs ORDER BY batch")
        )
        for job_id, batch in self._orphans:
            self._job_batch[job_id] = batch
            self._batch_left[batch] = self._batch_left.get(batch, 0) + 1

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One transaction (joined if one is open): committed at the end, rolled back on error."""
        db = self._db
        if db.in_transaction:
            yield db
            return
        db.execute("BEGIN")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def transaction(self) -> contextlib.AbstractContextManager[object]:
        return self._tx()

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        with self._tx() as db:
            db.executemany(sql, rows)

    def record_updates(self, updates: Mapping[str, int]) -> None:
        mine = self._updates
        rows = []
        for ticker, ns in updates.items():
            if ns > mine.get(ticker, -1):
                mine[ticker] = ns
                rows.append((ticker, ns))
        if rows:
            self._write(
                "INSERT INTO ticker_updates (ticker, ns) VALUES (?, ?) "
                "ON CONFLICT (ticker) DO UPDATE SET ns = max(ns, excluded.ns)",
                rows,
            )

    def ticker_count(self) -> int:
        return len(self._updates)

    def tickers(self) -> list[str]:
        return list(self._updates)

    def last_update(self, ticker: str) -> int | None:
        return self._updates.get(ticker)

    def cleanup(self, cutoff_ns: int) -> int:
        old = [t for t, ns in self._updates.items() if ns < cutoff_ns]
        for t in old:
            del self._updates[t]
        self._db.execute("DELETE FROM ticker_updates WHERE ns < ?", (cutoff_ns,))
        return len(old)

    def get_universe(self, strategy: str) -> set[str] | None:
        u = self._universes.get(strategy)
        return None if u is None else set(u)

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = set(tickers)
        self._universes[strategy] = new
        with self._tx() as db:
            db.execute("DELETE FROM universes WHERE strategy = ?", (strategy,))
            db.execute("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", (strategy,))
            db.executemany(
                "INSERT INTO universes (strategy, ticker) VALUES (?, ?)", [(strategy, t) for t in new]
            )

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        u = self._universes.setdefault(strategy, set())
        new = [t for t in tickers if t not in u]
        u.update(new)
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", (strategy,))
            db.executemany(
                "INSERT OR IGNORE INTO universes (strategy, ticker) VALUES (?, ?)",
                [(strategy, t) for t in new],
            )

    def drop_universe(self, strategy: str) -> None:
        self._universes.pop(strategy, None)
        with self._tx() as db:
            db.execute("DELETE FROM universes WHERE strategy = ?", (strategy,))
            db.execute("DELETE FROM universe_known WHERE strategy = ?", (strategy,))

    def universe_sizes(self) -> dict[str, int]:
        return {s: len(u) for s, u in self._universes.items()}

    def claim(self, bucket_ns: int, strategies: Sequence[str], plan: Plan | None = None) -> dict[str, int]:
        last = self._last
        out: dict[str, int] = {}
        for s in strategies:
            prev = last.get(s, 0)
            if prev < bucket_ns:
                out[s] = prev
                last[s] = bucket_ns
        if not out:
            return out
        group = len(strategies) >= GROUP_CLAIM_MIN
        key = hashlib.blake2b("\n".join(strategies).encode(), digest_size=16).hexdigest() if group else ""
        batch = 0
        try:
            jobs = plan(out) if plan is not None else ()
            mine = [j for j in jobs if j.strategy in out]
            with self._tx() as db:
                if not group:
                    db.executemany(
                        "INSERT INTO last_runs (strategy, bucket_ns) VALUES (?, ?) "
                        "ON CONFLICT (strategy) DO UPDATE SET bucket_ns = excluded.bucket_ns",
                        [(s, bucket_ns) for s in out],
                    )
                elif key in self._groups:
                    # After this every one of ``strategies`` ran ``bucket_ns`` or later: one row says it.
                    db.execute("UPDATE claim_groups SET bucket_ns = ? WHERE group_key = ?", (bucket_ns, key))
                else:
                    db.execute(
                        "INSERT OR REPLACE INTO claim_groups (group_key, members, bucket_ns) VALUES (?, ?, ?)",
                        (key, _MEMBERS_ENC.encode(list(strategies)), bucket_ns),
                    )
                if mine:
                    cur = db.execute("INSERT INTO job_batches (jobs) VALUES (?)", (pack_jobs(mine),))
                    batch = cur.lastrowid or 0
                    db.executemany(
                        "INSERT INTO pending_jobs (job_id, batch) VALUES (?, ?)",
                        [(j.job_id, batch) for j in mine],
                    )
        except BaseException:
            last.update(out)  # nothing was claimed: the previous runs stand
            raise
        if mine:
            self._job_batch.update(dict.fromkeys([j.job_id for j in mine], batch))
            self._batch_left[batch] = len(mine)
        if group:
            self._groups.add(key)
        return out

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        universes = self._universes.get
        updates = self._updates
        large_at = self.large_universe
        large = 0
        out: list[set[str]] = []
        append = out.append
        last_since: int | None = None
        updated: set[str] = set()
        for strategy, since in requests:
            if since != last_since:
                updated = {t for t, ns in updates.items() if ns >= since}
                last_since = since
            universe = universes(strategy)
            if universe is None:
                append(set(updated))
            else:
                if len(universe) > large_at:
                    large += 1
                append(universe & updated)  # C loop over the smaller side (see intersect())
        return out, large

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]:
        mine = self._alerts
        return {k: mine[k] for k in keys if k in mine}

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        if not states:
            return
        self._alerts.update(states)
        self._write(
            "INSERT INTO alert_states (strategy, symbol, state) VALUES (?, ?, ?) "
            "ON CONFLICT (strategy, symbol) DO UPDATE SET state = excluded.state",
            [(s, sym, STATE_ENCODER.encode(st)) for (s, sym), st in states.items()],
        )

    def finish_job(self, job_id: str, states: Mapping[tuple[str, str], AlertState]) -> None:
        batch = self._job_batch.get(job_id)
        last = batch is not None and self._batch_left[batch] <= 1
        with self._tx() as db:
            if states:
                db.executemany(
                    "INSERT INTO alert_states (strategy, symbol, state) VALUES (?, ?, ?) "
                    "ON CONFLICT (strategy, symbol) DO UPDATE SET state = excluded.state",
                    [(s, sym, STATE_ENCODER.encode(st)) for (s, sym), st in states.items()],
                )
            if batch is not None:
                db.execute("DELETE FROM pending_jobs WHERE job_id = ?", (job_id,))
                if last:
                    db.execute("DELETE FROM job_batches WHERE batch = ?", (batch,))
        self._alerts.update(states)
        if batch is not None:
            del self._job_batch[job_id]
            if last:
                del self._batch_left[batch]
            else:
                self._batch_left[batch] -= 1

    def adopt_jobs(self, now_ns: int) -> list[StrategyJob]:
        """Every job a previous run left pending, the first time; then none (one instance)."""
        orphans, self._orphans = self._orphans, None
        if not orphans:
            return []
        blobs: dict[Any, bytes | str | None] = {b: None for _, b in orphans}
        for batch, blob in self._db.execute(
            f"SELECT batch, jobs FROM job_batches WHERE batch IN ({','.join('?' * len(blobs))})", list(blobs)
        ):
            blobs[batch] = blob
        jobs, bad = _adopted(orphans, blobs)
        for job_id in bad:
            self.finish_job(job_id, {})
        return jobs

    def pending_jobs(self) -> int:
        return len(self._job_batch)

    def close(self) -> None:
        self._db.close()


# ----------------------------------------------------------------------------------------------
# Redis


# Claim bucket ARGV[1] (ms) for the ARGV[6] strategies that follow; the (strategy, job id) pairs
# after them are the jobs of batch ARGV[4] (blob ARGV[5]): those of the strategies claimed are
# stored, owned by ARGV[2], whose lease is made to last at least until ARGV[3] (ms).
# KEYS: last runs, jobs (id -> batch), job owners, batches, batch job counts, leases.
_CLAIM_LUA = """
local b = tonumber(ARGV[1])
local n = tonumber(ARGV[6])
local out = {}
local claimed = {}
for i = 7, 6 + n do
  local prev = redis.call('HGET', KEYS[1], ARGV[i])
  local p = 0
  if prev then p = tonumber(prev) end
  if p < b then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    claimed[ARGV[i]] = true
    out[#out + 1] = ARGV[i]
    out[#out + 1] = tostring(prev or '0')
  end
end
local stored = 0
for i = 7 + n, #ARGV, 2 do
  if claimed[ARGV[i]] then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[4])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[2])
    stored = stored + 1
  end
end
if stored > 0 then
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
  redis.call('HSET', KEYS[5], ARGV[4], stored)
  redis.call('ZADD', KEYS[6], 'GT', ARGV[3], ARGV[2])
end
return out
"""

# Write the alert states (field, value pairs from ARGV[2]) and forget job ARGV[1] (its batch with its
# last job). KEYS: jobs, job owners, batches, batch job counts, alert states.
_FINISH_LUA = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]) end
local b = redis.call('HGET', KEYS[1], ARGV[1])
if b then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if redis.call('HINCRBY', KEYS[4], b, -1) <= 0 then
    redis.call('HDEL', KEYS[4], b)
    redis.call('HDEL', KEYS[3], b)
  end
end
return 0
"""

# Renew ARGV[1]'s lease until ARGV[3] (ms), forget leases that ended by ARGV[2] (ms), and take over
# the jobs of owners without a lease. KEYS: jobs, job owners, batches, leases.
# Returns the number of jobs k, k (job id, batch) pairs, then (batch, blob) pairs of their batches.
_ADOPT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
local live = {}
local jobs = {}
local batches = {}
local owners = redis.call('HGETALL', KEYS[2])
for i = 1, #owners, 2 do
  local id, o = owners[i], owners[i + 1]
  if o ~= ARGV[1] then
    local alive = live[o]
    if alive == nil then
      alive = redis.call('ZSCORE', KEYS[4], o) ~= false
      live[o] = alive
    end
    if not alive then
      local b = redis.call('HGET', KEYS[1], id)
      if b then
        redis.call('HSET', KEYS[2], id, ARGV[1])
        jobs[#jobs + 1] = id
        jobs[#jobs + 1] = b
        batches[b] = true
      else
        redis.call('HDEL', KEYS[2], id)
      end
    end
  end
end
local out = {#jobs / 2}
for i = 1, #jobs do out[#out + 1] = jobs[i] end
for b, _ in pairs(batches) do
  out[#out + 1] = b
  out[#out + 1] = redis.call('HGET', KEYS[3], b) or ''
end
return out
"""

# Server-side intersection of one universe with the tickers updated since ARGV[1] (ms),
# iterating the smaller side.
_INTERSECT_LUA = """
local since = tonumber(ARGV[1])
local n_univ = redis.call('SCARD', KEYS[1])
local n_upd = redis.call('ZCOUNT', KEYS[2], since, '+inf')
local out = {}
if n_upd < n_univ then
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], since, '+inf')) do
    if redis.call('SISMEMBER', KEYS[1], t) == 1 then out[#out + 1] = t end
  end
else
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local s = redis.call('ZSCORE', KEYS[2], t)
    if s and tonumber(s) >= since then out[#out + 1] = t end
  end
end
return out
"""


class RedisStore:
    """Shared store on a Redis server (seed 004's layout)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        large_universe: int = 1000,
        lease_ns: int = DEFAULT_LEASE_NS,
        client: Any = None,
    ) -> None:
        import redis

        self.large_universe = large_universe
        self.script_failures = 0
        self.owner = uuid.uuid4().hex  # this instance, as the owner of the jobs it dispatches
        self.lease_ms = max(lease_ns // NS_PER_MS, 1)
        self._now_ms = 0  # the time of the last adopt_jobs (a claim's lease lasts from there)
        self._r: Any = client if client is not None else redis.Redis.from_url(url, decode_responses=True)
        self._p = prefix
        self._upd = f"{prefix}TICK:UPD"
        self._univs = f"{prefix}STRAT:UNIVS"
        self._last = f"{prefix}STRAT:LAST"
        self._alerts = f"{prefix}ALERT:STATE"
        self._jobs = f"{prefix}JOBS"
        self._owners = f"{prefix}JOBS:OWNER"
        self._batches = f"{prefix}JOBS:BATCH"
        self._left = f"{prefix}JOBS:LEFT"
        self._leases = f"{prefix}JOBS:LEASE"
        self._batch_n = 0
        self._claim = self._r.register_script(_CLAIM_LUA)
        self._finish = self._r.register_script(_FINISH_LUA)
        self._adopt = self._r.register_script(_ADOPT_LUA)
        self._intersect = self._r.register_script(_INTERSECT_LUA)

    def _univ(self, strategy: str) -> str:
        return f"{self._p}STRAT:{strategy}:UNIV"

    def record_updates(self, updates: Mapping[str, int]) -> None:
        if updates:
            self._r.zadd(self._upd, {t: ns // NS_PER_MS for t, ns in updates.items()}, gt=True)

    def ticker_count(self) -> int:
        return int(self._r.zcard(self._upd))

    def tickers(self) -> list[str]:
        return list(self._r.zrange(self._upd, 0, -1))

    def last_update(self, ticker: str) -> int | None:
        score = self._r.zscore(self._upd, ticker)
        return None if score is None else int(score) * NS_PER_MS

    def cleanup(self, cutoff_ns: int) -> int:
        return int(self._r.zremrangebyscore(self._upd, "-inf", f"({cutoff_ns // NS_PER_MS}"))

    def get_universe(self, strategy: str) -> set[str] | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.sismember(self._univs, strategy)
        pipe.smembers(self._univ(strategy))
        known, members = pipe.execute()
        return set(members) if known else None

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = list(set(tickers))
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._univ(strategy))
        for i in range(0, len(new), 10_000):
            pipe.sadd(self._univ(strategy), *new[i : i + 10_000])
        pipe.sadd(self._univs, strategy)
        pipe.execute()

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = list(tickers)
        pipe = self._r.pipeline(transaction=True)
        for i in range(0, len(new), 10_000):
            pipe.sadd(self._univ(strategy), *new[i : i + 10_000])
        pipe.sadd(self._univs, strategy)
        pipe.execute()

    def drop_universe(self, strategy: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._univ(strategy))
        pipe.srem(self._univs, strategy)
        pipe.execute()

    def universe_sizes(self) -> dict[str, int]:
        names = sorted(self._r.smembers(self._univs))
        pipe = self._r.pipeline(transaction=False)
        for s in names:
            pipe.scard(self._univ(s))
        return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))

    def claim(self, bucket_ns: int, strategies: Sequence[str], plan: Plan | None = None) -> dict[str, int]:
        """Read the last runs, plan, then claim and store the jobs in one script.

        Another instance may claim in between: the script claims only what is still unclaimed (the
        other's claim wins, its jobs are not stored). A last run can only move forward meanwhile, so
        a job planned from an earlier one covers a superset of the changes: never a loss.
        """
        if not strategies:
            return {}
        bucket_ms = bucket_ns // NS_PER_MS
        prevs = self._r.hmget(self._last, list(strategies))
        may: dict[str, int] = {}
        for s, p in zip(strategies, prevs, strict=True):
            prev = 0 if p is None else int(p)
            if prev < bucket_ms:
                may[s] = prev * NS_PER_MS
        if not may:
            return {}
        jobs = {j.strategy: j for j in plan(may)} if plan is not None else {}
        lease_until = max(self._now_ms, bucket_ms) + self.lease_ms
        names = list(may)
        out: dict[str, int] = {}
        keys = [self._last, self._jobs, self._owners, self._batches, self._left, self._leases]
        for i in range(0, len(names), 5000):
            chunk = names[i : i + 5000]
            mine = [j for j in (jobs.get(s) for s in chunk) if j is not None]
            self._batch_n += 1
            batch, blob = f"{self.owner}:{self._batch_n}", pack_jobs(mine).hex() if mine else ""
            args: list[Any] = [bucket_ms, self.owner, lease_until, batch, blob, len(chunk), *chunk]
            for job in mine:
                args += (job.strategy, job.job_id)
            flat = self._claim(keys=keys, args=args)
            for j in range(0, len(flat), 2):
                out[flat[j]] = int(flat[j + 1]) * NS_PER_MS
        return out

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        if not requests:
            return [], 0
        r = self._r
        pipe = r.pipeline(transaction=False)
        for strategy, _ in requests:
            pipe.sismember(self._univs, strategy)
            pipe.scard(self._univ(strategy))
        since_ms = sorted({since // NS_PER_MS for _, since in requests})
        for ms in since_ms:
            pipe.zrangebyscore(self._upd, ms, "+inf")
        replies = pipe.execute()
        n = len(requests)
        updated = {ms: set(replies[2 * n + i]) for i, ms in enumerate(since_ms)}
        pipe = r.pipeline(transaction=False)
        plan: list[str] = []  # "all" | "small" | "large" per request
        for i, (strategy, since) in enumerate(requests):
            known, size = replies[2 * i], int(replies[2 * i + 1])
            if not known:
                plan.append("all")
            elif size > self.large_universe:
                plan.append("large")
                self._intersect(
                    keys=[self._univ(strategy), self._upd], args=[since // NS_PER_MS], client=pipe
                )
            else:
                plan.append("small")
                pipe.smembers(self._univ(strategy))
        fetched = iter(pipe.execute(raise_on_error=False))
        out: list[set[str]] = []
        large = 0
        for (strategy, since), how in zip(requests, plan, strict=True):
            upd = updated[since // NS_PER_MS]
            if how == "all":
                out.append(set(upd))
                continue
            reply = next(fetched)
            if how == "large":
                if isinstance(reply, Exception):  # the seed's graceful fallback: do it client-side
                    self.script_failures += 1
                    out.append(intersect(upd, set(r.smembers(self._univ(strategy)))))
                else:
                    large += 1
                    out.append(set(reply))
            else:
                out.append(intersect(upd, reply))
        return out, large

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]:
        if not keys:
            return {}
        blobs = self._r.hmget(self._alerts, [f"{s}|{sym}" for s, sym in keys])
        return {k: STATE_DECODER.decode(_b(b)) for k, b in zip(keys, blobs, strict=True) if b is not None}

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        if states:
            self._r.hset(
                self._alerts,
                mapping={f"{s}|{sym}": STATE_ENCODER.encode(st).hex() for (s, sym), st in states.items()},
            )

    def finish_job(self, job_id: str, states: Mapping[tuple[str, str], AlertState]) -> None:
        args: list[Any] = [job_id]
        for (s, sym), st in states.items():
            args += (f"{s}|{sym}", STATE_ENCODER.encode(st).hex())
        self._finish(keys=[self._jobs, self._owners, self._batches, self._left, self._alerts], args=args)

    def adopt_jobs(self, now_ns: int) -> list[StrategyJob]:
        """Renew this instance's lease; take the jobs of owners whose lease ended (or was released)."""
        self._now_ms = now_ns // NS_PER_MS
        flat = self._adopt(
            keys=[self._jobs, self._owners, self._batches, self._leases],
            args=[self.owner, self._now_ms, self._now_ms + self.lease_ms],
        )
        k = int(flat[0])
        if not k:
            return []
        pending = [(flat[i], flat[i + 1]) for i in range(1, 2 * k + 1, 2)]
        blobs = {flat[i]: flat[i + 1] or None for i in range(2 * k + 1, len(flat), 2)}
        jobs, bad = _adopted(pending, blobs)
        for job_id in bad:
            self.finish_job(job_id, {})
        return jobs

    def pending_jobs(self) -> int:
        return int(self._r.hlen(self._jobs))

    def transaction(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def close(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError):
            self._r.zrem(self._leases, self.owner)  # our pending jobs are adoptable at once
        self._r.close()


def _b(value: str | bytes) -> bytes:
    return bytes.fromhex(value) if isinstance(value, str) else value
