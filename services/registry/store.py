"""Zones kept across restarts: one SQLite file (WAL), written in batches.

The service marks zones dirty as events happen and calls :meth:`ZoneStore.flush` after each batch
of events, before they are published (and every ``store_flush_interval`` and on shutdown as a
backstop): one transaction upserts the changed zones and deletes the removed ones. WAL with
synchronous=NORMAL makes a commit a write without fsync, so a killed process loses nothing it
published (a power loss may lose the last commits). The publisher's sequence is
not kept: a restarted registry is a new incarnation (new ``started_ns``), which subscribers see.

A second table, ``detector_state``, keeps one row per (symbol, timeframe): the detectors'
:class:`~services.registry.detectors.PairState` (open candle, closed-candle window, last closed
bucket). The service hands it a few symbols' states at a time (see its detector-state loop); each
flush writes what it was handed with the zones' changes in one transaction. Both tables are
clustered on their keys (``WITHOUT ROWID``; tables.py moves a file an older registry wrote).

A write that fails (disk full, database locked by another process) is rolled back and loses
nothing: every change stays pending and is written by a later flush, newer changes of the same
zone or pair replacing older ones. Failures are counted (:attr:`ZoneStore.failures`) and logged
rate-limited; after one, flushes wait ``retry_interval`` before trying again, so that a full disk
does not cost every batch of events a failed transaction. :meth:`ZoneStore.close` tries once more
and says how many changes were not written.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import msgspec

from services.registry.pair_state import PairState
from services.registry.tables import create_tables
from shared.messages import Zone
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.registry.store")

_ENCODE = msgspec.msgpack.Encoder().encode
_DECODE = msgspec.msgpack.Decoder(Zone).decode
_DECODE_STATE = msgspec.msgpack.Decoder(PairState).decode

StateKey = tuple[str, str]  # (symbol, timeframe)
# Row bytes written between checkpoints, or at least one a second: a commit writes whole pages,
# and the WAL grew ~10-50 times faster than the rows (8 MB/s at 2 000 symbols and 600 prices/s,
# most of it the detector states) while a checkpoint waited for 4 MB of rows.
CHECKPOINT_BYTES = 4 << 20
CHECKPOINT_INTERVAL_S = 1.0
# A checkpoint copies the frames of its own snapshot; the WAL starts over at the next commit only
# if nothing was committed meanwhile, which under a steady load never happened: the WAL grew by
# GBs (1.1 GB in 3 minutes). So rounds follow until one finds the WAL unchanged, and past
# WAL_LIMIT_BYTES the next write first copies the rest itself (on the store's thread, no commit
# between: ZoneStore.write), and the WAL starts over, cut back to WAL_LIMIT_BYTES.
CATCH_UP_ROUNDS = 8
WAL_LIMIT_BYTES = 32 << 20
# Rows per statement (INSERT, and DELETE: an executemany is one step per row too). sqlite3 lets go
# of the GIL around each step, and a thread that wants it back waits up to the switch interval
# (5 ms) while the event loop's thread runs Python: one step per row made a 75-row write take
# hundreds of ms under a burst, and each hand-over needs both threads scheduled by the OS. The sizes are fixed (a row
# count is split into them) so that the statement cache holds a handful of statements.
_CHUNKS = (256, 32, 4, 1)


@functools.cache
def _insert_sql(table: str, width: int, size: int) -> str:
    row = "(" + ", ".join("?" * width) + ")"
    return f"INSERT OR REPLACE INTO {table} VALUES {', '.join([row] * size)}"


@functools.cache
def _delete_sql(table: str, width: int, size: int) -> str:
    """``table`` is ``name (key column)``: the rows whose key is one of ``size`` (one column:
    SQLite searches its index; with a row value of two it scanned the table)."""
    name, keys = table.split(" ", 1)
    row = "(" + ", ".join("?" * width) + ")"
    return f"DELETE FROM {name} WHERE {keys} IN (VALUES {', '.join([row] * size)})"


def _by_chunks(
    db: sqlite3.Connection,
    sql: Callable[[str, int, int], str],
    table: str,
    width: int,
    rows: Sequence[tuple[object, ...]],
) -> None:
    """One statement per chunk of rows (not one step per row: each step lets go of the GIL)."""
    i, n = 0, len(rows)
    for size in _CHUNKS:
        if n - i < size:
            continue
        stmt = sql(table, width, size)
        while n - i >= size:
            db.execute(stmt, [v for row in rows[i : i + size] for v in row])
            i += size


@dataclass(slots=True)
class Batch:
    """The changes one transaction writes: taken on the loop, written on any thread, settled back
    on the loop (a failed one gives back what newer changes have not replaced)."""

    dirty: dict[str, Zone]
    removed: set[str]
    states: dict[StateKey, PairState]
    states_removed: set[StateKey]
    zone_rows: list[tuple[str, bytes]]
    state_rows: list[tuple[str, str, bytes]]
    rows: int
    size: int  # bytes encoded
    error: Exception | None = None


class ZoneStore:
    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout: float = 0.05,
        retry_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``busy_timeout``: how long a write waits for another connection's lock before it fails
        (the event loop waits with it: sqlite3's default of 5 s would stall every publish)."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.retry_interval = retry_interval
        self.clock = clock
        # Written by the service's store thread (one write at a time, under _lock), read at start.
        self._db = sqlite3.connect(
            str(self.path), isolation_level=None, timeout=busy_timeout, check_same_thread=False
        )
        self._lock = threading.Lock()
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpoint_lock = threading.Lock()
        self.bytes_since_checkpoint = 0  # settled writes (on the loop)
        self.checkpointed_at = clock()  # when the last checkpoint was asked for
        self._wal = Path(f"{self.path}-wal")
        self.wal_catch_ups = 0  # writes that copied the rest of the WAL first
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA wal_autocheckpoint=0")  # see checkpoint()
        self._db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
        # A statement that writes many rows keeps a statement journal; past 64 KiB SQLite spills it
        # to a temporary file (a file and its writes each flush): memory instead.
        self._db.execute("PRAGMA temp_store=MEMORY")
        create_tables(self._db, self.path)
        self._dirty: dict[str, Zone] = {}
        self._removed: set[str] = set()
        self._states: dict[StateKey, PairState] = {}
        self._states_removed: set[StateKey] = set()
        self.corrupt = 0
        self.corrupt_states = 0
        self.writes = 0
        self.failures = 0  # flushes that failed and kept their changes
        self.failing = False
        self._retry_at = 0.0
        self.fail_log = RateLimitedLog(log, level=logging.ERROR, clock=clock)

    def load(self) -> list[Zone]:
        """Every stored zone; rows that do not decode are counted, logged and skipped."""
        zones = []
        for zid, body in self._db.execute("SELECT id, body FROM zones"):
            try:
                zones.append(_DECODE(body))
            except msgspec.DecodeError:
                self.corrupt += 1
                log.warning("stored zone %s does not decode: skipped", zid)
        return zones

    def load_detector_state(self) -> list[PairState]:
        """Every stored detector state; rows that do not decode are counted, logged and skipped."""
        states = []
        for symbol, tf, body in self._db.execute("SELECT symbol, timeframe, body FROM detector_state"):
            try:
                states.append(_DECODE_STATE(body))
            except msgspec.DecodeError as exc:
                self.corrupt_states += 1
                log.warning("stored detector state of %s %s does not decode (%s): skipped", symbol, tf, exc)
        return states

    def states_changed(self, states: Iterable[PairState]) -> None:
        for st in states:
            key = (st.symbol, st.timeframe)
            self._states_removed.discard(key)
            self._states[key] = st

    def states_removed(self, keys: Iterable[StateKey]) -> None:
        for key in keys:
            self._states.pop(key, None)
            self._states_removed.add(key)

    def changed(self, zone: Zone) -> None:
        self._removed.discard(zone.id)
        self._dirty[zone.id] = zone

    def removed(self, zone_id: str) -> None:
        self._dirty.pop(zone_id, None)
        self._removed.add(zone_id)

    def changed_many(self, zones: Iterable[Zone]) -> None:
        for zone in zones:
            self.changed(zone)

    @property
    def pending(self) -> int:
        return len(self._dirty) + len(self._removed) + len(self._states) + len(self._states_removed)

    def flush(self, *, force: bool = False) -> int:
        """Write what changed since the last good flush in one transaction; returns rows written.

        On failure everything stays pending (see the module's doc); ``force`` ignores the wait
        between retries. :meth:`take`, :meth:`write` and :meth:`settle` are its three steps, for a
        caller that writes on another thread.
        """
        batch = self.take(force=force)
        if batch is None:
            return 0
        try:
            self.write(batch)
        except BaseException:
            self.settle(batch)
            raise
        return self.settle(batch)

    def take(self, *, force: bool = False) -> Batch | None:
        """The pending changes, encoded now (zones change in place later), as one batch; None when
        there are none or a failure's retry wait is not over."""
        rows = self.pending
        if not rows or (not force and self.failing and self.clock() < self._retry_at):
            return None
        dirty, states = self._dirty, self._states
        batch = Batch(
            dirty,
            self._removed,
            states,
            self._states_removed,
            [(zid, _ENCODE(z)) for zid, z in dirty.items()],
            [(sym, tf, _ENCODE(st)) for (sym, tf), st in states.items()],
            rows,
            0,
        )
        batch.size = sum(len(body) for _, body in batch.zone_rows) + sum(
            len(body) for _, _, body in batch.state_rows
        )
        self._dirty, self._removed, self._states, self._states_removed = {}, set(), {}, set()
        return batch

    def write(self, batch: Batch, *, catch_up: bool = False) -> None:
        """One transaction (any thread; one at a time). A failure is kept in ``batch.error``.
        ``catch_up`` (the store's thread): first copy the WAL's rest if it is over WAL_LIMIT_BYTES."""
        with self._lock:
            db = self._db
            if catch_up and self.catch_up_due:
                self._catch_up()
            try:
                db.execute("BEGIN IMMEDIATE")
                _by_chunks(db, _insert_sql, "zones (id, body)", 2, batch.zone_rows)
                _by_chunks(db, _delete_sql, "zones (id)", 1, [(zid,) for zid in batch.removed])
                _by_chunks(db, _insert_sql, "detector_state (symbol, timeframe, body)", 3, batch.state_rows)
                if batch.states_removed:  # rare (evicted symbols); a row-value IN would scan the table
                    db.executemany(
                        "DELETE FROM detector_state WHERE symbol = ? AND timeframe = ?", batch.states_removed
                    )
                db.execute("COMMIT")
            except Exception as exc:  # disk full, locked, I/O error: nothing written, nothing dropped
                self._rollback()
                batch.error = exc
            except BaseException as exc:
                self._rollback()
                batch.error = RuntimeError(f"interrupted: {exc!r}")
                raise

    @property
    def checkpoint_due(self) -> bool:
        written = self.bytes_since_checkpoint
        return written >= CHECKPOINT_BYTES or (
            written > 0 and self.clock() - self.checkpointed_at >= CHECKPOINT_INTERVAL_S
        )

    @property
    def catch_up_due(self) -> bool:
        """The WAL is past its limit: it did not start over (the file is cut back when it does)."""
        try:
            return self._wal.stat().st_size > WAL_LIMIT_BYTES
        except OSError:
            return False

    def checkpoint(self) -> None:
        """Copy the WAL into the database file (any thread; a connection of its own, so that writes
        go on meanwhile), in rounds until one finds it unchanged (see CATCH_UP_ROUNDS). Automatic
        checkpoints are off: one ran inside whichever commit crossed 1 000 pages, with an fsync,
        and held that commit's zone events for up to 200 ms."""
        with self._checkpoint_lock:
            try:
                if self._checkpoint_db is None:
                    self._checkpoint_db = sqlite3.connect(
                        str(self.path), isolation_level=None, check_same_thread=False
                    )
                last = -1
                for _ in range(CATCH_UP_ROUNDS):
                    busy, frames, copied = self._checkpoint_db.execute(
                        "PRAGMA wal_checkpoint(PASSIVE)"
                    ).fetchone()
                    if busy or (frames == last and copied >= frames) or self.catch_up_due:
                        break  # done, or the next write copies the rest
                    last = frames
            except sqlite3.Error as exc:  # the next one copies what this one did not
                self.fail_log("checkpoint", "store %s: checkpoint failed: %s", self.path, exc)

    def _catch_up(self) -> None:
        """Copy what the WAL holds beyond the database, on the writer's connection and lock: no
        commit comes between, so the next one starts the WAL over."""
        try:
            with self._checkpoint_lock:  # after the checkpoint thread's round, if one is running
                busy, frames, copied = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            self.fail_log("checkpoint", "store %s: checkpoint failed: %s", self.path, exc)
            return
        if not busy and copied >= frames:
            self.wal_catch_ups += 1

    def settle(self, batch: Batch) -> int:
        """Account for a written batch (on the loop); returns rows written. A failed batch's
        changes are pending again, except those newer changes replaced."""
        rows = batch.rows
        if batch.error is None:
            if self.failing:
                self.failing = False
                log.warning("store %s writable again: %d pending change(s) written", self.path, rows)
            self.writes += rows
            self.bytes_since_checkpoint += batch.size
            return rows
        for zid, zone in batch.dirty.items():
            if zid not in self._dirty and zid not in self._removed:
                self._dirty[zid] = zone
        for zid in batch.removed:
            if zid not in self._dirty:
                self._removed.add(zid)
        for key, st in batch.states.items():
            if key not in self._states and key not in self._states_removed:
                self._states[key] = st
        for key in batch.states_removed:
            if key not in self._states:
                self._states_removed.add(key)
        self.failures += 1
        self.failing = True
        self._retry_at = self.clock() + self.retry_interval
        self.fail_log(
            "write",
            "store write to %s failed (%s): %d change(s) kept, retried in %.1f s",
            self.path,
            batch.error,
            self.pending,
            self.retry_interval,
        )
        return 0

    def _rollback(self) -> None:
        if not self._db.in_transaction:  # SQLite already rolled back (e.g. on SQLITE_FULL)
            return
        try:
            self._db.execute("ROLLBACK")
        except sqlite3.Error as exc:
            log.error("store %s: ROLLBACK failed: %s", self.path, exc)

    def close(self) -> int:
        """A last flush, tried now; returns how many changes were not written (and logs them)."""
        self.flush(force=True)
        lost = self.pending
        if lost:
            log.error(
                "store %s: %d change(s) not written at shutdown (%d zone(s), %d removal(s), "
                "%d detector state(s), %d state removal(s)): they are lost",
                self.path,
                lost,
                len(self._dirty),
                len(self._removed),
                len(self._states),
                len(self._states_removed),
            )
        self.fail_log.flush()
        with self._checkpoint_lock:
            if self._checkpoint_db is not None:
                self._checkpoint_db.close()
        self._db.close()
        return lost
