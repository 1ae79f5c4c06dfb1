"""The embedded default throttle store: working set in memory, written through to SQLite.

Memory is the truth while the service runs; SQLite is what the next start reads. A write that
fails (disk full, another process holding a lock) is rolled back and kept: its statements are
replayed, in order and ahead of any newer one, with every later commit and :meth:`retry_writes`,
until one succeeds. Each failure is counted (``write_failures``) and logged rate-limited; the
service goes on. Nothing is lost once writes succeed again, unless the service dies before that
(then the next start sees the state of the last successful commit: as after a crash then).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from services.alerts.checkpoint import Checkpointer
from services.alerts.frequency import STATE_DECODER, STATE_ENCODER, AlertState
from services.alerts.store import (
    GROUP_CLAIM_MIN,
    MEMBERS_DEC,
    MEMBERS_ENC,
    Plan,
    adopted,
    pack_jobs,
)
from shared.messages import StrategyJob
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.alerts.store")

Op = tuple[str, list[tuple[Any, ...]]]  # one statement and its rows (executemany)
BUSY_TIMEOUT_S = 0.1  # a locked database fails fast: the write is kept and retried, the loop not held

# ticker_updates has no index on ns (dropped from older files): it doubled the pages every flush
# writes, and only the daily cleanup reads by ns (a scan of one row per ticker).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS ticker_updates (ticker TEXT PRIMARY KEY, ns INTEGER NOT NULL) WITHOUT ROWID;
DROP INDEX IF EXISTS ticker_updates_ns;
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
CREATE TABLE IF NOT EXISTS open_inputs (key TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID;
"""


class SqliteStore:
    """Embedded store: in-memory working set, written through to one SQLite file."""

    name = "sqlite"

    def __init__(
        self, path: str, *, large_universe: int = 1000, busy_timeout: float = BUSY_TIMEOUT_S
    ) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.large_universe = large_universe
        self.write_failures = 0  # commits that failed (their statements kept and retried)
        self.ratelog = RateLimitedLog(log)
        self._buffer: list[Op] | None = None  # statements of the transaction open
        self._retry: list[Op] = []  # statements of failed commits, oldest first
        self._db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA temp_store=MEMORY")  # statement journals: no temporary files
        self._checkpointer: Checkpointer | None = None
        if path != ":memory:":  # the checkpoints' fsyncs off the event loop (checkpoint.py)
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = Checkpointer(path)
            self._checkpointer.start()
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
            for s in MEMBERS_DEC.decode(members):
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
        (top,) = self._db.execute(
            "SELECT max(coalesce((SELECT max(batch) FROM job_batches), 0),"
            " coalesce((SELECT max(batch) FROM pending_jobs), 0))"
        ).fetchone()
        self._next_batch = int(top) + 1  # batch ids are chosen here, so a delayed write keeps its id

    @contextlib.contextmanager
    def _tx(self) -> Iterator[None]:
        """Group the writes made inside into one commit (joined if one is open)."""
        if self._buffer is not None:
            yield
            return
        self._buffer = []
        try:
            yield
        except BaseException:
            self._buffer = None  # an error inside: none of it is written (as if killed before the commit)
            raise
        ops, self._buffer = self._buffer, None
        self._commit(ops)

    def transaction(self) -> contextlib.AbstractContextManager[object]:
        return self._tx()

    def _write(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        if self._buffer is not None:
            self._buffer.append((sql, rows))
        else:
            self._commit([(sql, rows)])

    def _commit(self, ops: list[Op]) -> bool:
        """Write the kept statements, then ``ops``, in one transaction; never raises."""
        todo = self._retry + ops if self._retry else ops
        if not todo:
            return True
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            for sql, rows in todo:
                db.executemany(sql, rows)
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            self._retry = todo
            self.write_failures += 1
            self.ratelog(
                "write failed",
                "store %s: write failed (%s): %d statement(s) kept, retried with the next write",
                self.path,
                exc,
                len(todo),
            )
            return False
        if self._retry:
            log.info("store %s: %d kept statement(s) written after a failure", self.path, len(self._retry))
            self._retry = []
        return True

    def retry_writes(self) -> bool:
        """Write what failed before (cheap when nothing did); True when nothing is left."""
        self.ratelog.flush()
        return self._commit([]) if self._retry else True

    def pending_writes(self) -> int:
        return len(self._retry)

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

    def save_inputs(self, rows: Mapping[str, bytes], deletes: Sequence[str] = ()) -> None:
        with self._tx():
            if deletes:
                self._write("DELETE FROM open_inputs WHERE key = ?", [(k,) for k in deletes])
            if rows:
                self._write(
                    "INSERT INTO open_inputs (key, body) VALUES (?, ?) "
                    "ON CONFLICT (key) DO UPDATE SET body = excluded.body",
                    list(rows.items()),
                )

    def load_inputs(self) -> dict[str, bytes]:
        return {k: bytes(b) for k, b in self._db.execute("SELECT key, body FROM open_inputs")}

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
        self._write("DELETE FROM ticker_updates WHERE ns < ?", [(cutoff_ns,)])
        return len(old)

    def get_universe(self, strategy: str) -> set[str] | None:
        u = self._universes.get(strategy)
        return None if u is None else set(u)

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = set(tickers)
        self._universes[strategy] = new
        with self._tx():
            self._write("DELETE FROM universes WHERE strategy = ?", [(strategy,)])
            self._write("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", [(strategy,)])
            self._write(
                "INSERT INTO universes (strategy, ticker) VALUES (?, ?)", [(strategy, t) for t in new]
            )

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        u = self._universes.setdefault(strategy, set())
        new = [t for t in tickers if t not in u]
        u.update(new)
        with self._tx():
            self._write("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", [(strategy,)])
            self._write(
                "INSERT OR IGNORE INTO universes (strategy, ticker) VALUES (?, ?)",
                [(strategy, t) for t in new],
            )

    def drop_universe(self, strategy: str) -> None:
        self._universes.pop(strategy, None)
        with self._tx():
            self._write("DELETE FROM universes WHERE strategy = ?", [(strategy,)])
            self._write("DELETE FROM universe_known WHERE strategy = ?", [(strategy,)])

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
        try:
            jobs = plan(out) if plan is not None else ()
            mine = [j for j in jobs if j.strategy in out]
            blob = pack_jobs(mine) if mine else b""
        except BaseException:
            last.update(out)  # nothing was claimed: the previous runs stand
            raise
        batch = 0
        with self._tx():
            if not group:
                self._write(
                    "INSERT INTO last_runs (strategy, bucket_ns) VALUES (?, ?) "
                    "ON CONFLICT (strategy) DO UPDATE SET bucket_ns = excluded.bucket_ns",
                    [(s, bucket_ns) for s in out],
                )
            elif key in self._groups:
                # After this every one of ``strategies`` ran ``bucket_ns`` or later: one row says it.
                self._write("UPDATE claim_groups SET bucket_ns = ? WHERE group_key = ?", [(bucket_ns, key)])
            else:
                self._write(
                    "INSERT OR REPLACE INTO claim_groups (group_key, members, bucket_ns) VALUES (?, ?, ?)",
                    [(key, MEMBERS_ENC.encode(list(strategies)), bucket_ns)],
                )
            if mine:
                batch = self._next_batch
                self._next_batch += 1
                self._write("INSERT INTO job_batches (batch, jobs) VALUES (?, ?)", [(batch, blob)])
                self._write(
                    "INSERT INTO pending_jobs (job_id, batch) VALUES (?, ?)",
                    [(j.job_id, batch) for j in mine],
                )
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
        with self._tx():
            if states:
                self._write(
                    "INSERT INTO alert_states (strategy, symbol, state) VALUES (?, ?, ?) "
                    "ON CONFLICT (strategy, symbol) DO UPDATE SET state = excluded.state",
                    [(s, sym, STATE_ENCODER.encode(st)) for (s, sym), st in states.items()],
                )
            if batch is not None:
                self._write("DELETE FROM pending_jobs WHERE job_id = ?", [(job_id,)])
                if last:
                    self._write("DELETE FROM job_batches WHERE batch = ?", [(batch,)])
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
        jobs, bad = adopted(orphans, blobs)
        for job_id in bad:
            self.finish_job(job_id, {})
        return jobs

    def pending_jobs(self) -> int:
        return len(self._job_batch)

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
        self._db.close()


# ----------------------------------------------------------------------------------------------
# Redis


# Claim bucket ARGV[1] (ms) for the ARGV[6] strategies that follow; the (strategy, job id) pairs
# after them are the jobs of batch ARGV[4] (blob ARGV[5]): those of the strategies claimed are
# stored, owned by ARGV[2], whose lease is made to last at least until ARGV[3] (ms).
# KEYS: last runs, jobs (id -> batch), job owners, batches, batch job counts, leases.
