"""The store's two tables, each clustered on its key (``WITHOUT ROWID``), and the move of a file
written by an older registry to that layout.

A rowid table keyed by a text column is two B-trees: the rows by rowid and an index from the key
to the rowid. An upsert searches the index, then rewrites a leaf in each tree, and each dirtied
page goes to the WAL whole. Clustered, a row lives in one B-tree under its key: in the replay
bench's writes (about 950 rows a transaction, most of them zones touched again, a checkpoint every
four writes as the service does), 6.0-6.4 us of CPU a row instead of 6.8-7.3, and 2 016 bytes of
WAL a row instead of 2 355 (``bench/_registry_store.py``).

A file whose tables have the older layout is copied into the new one once, when the store opens:
one transaction, so a failure (a locked or full disk) leaves the file as it was, logged, and the
store works on the older layout, which reads and writes the same rows.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("poolwire.registry.store")

# name -> (columns, the rest of its CREATE TABLE after the columns)
TABLES: dict[str, tuple[str, str]] = {
    "zones": ("id, body", "(id TEXT PRIMARY KEY, body BLOB NOT NULL) WITHOUT ROWID"),
    "detector_state": (
        "symbol, timeframe, body",
        "(symbol TEXT NOT NULL, timeframe TEXT NOT NULL, body BLOB NOT NULL,"
        " PRIMARY KEY (symbol, timeframe)) WITHOUT ROWID",
    ),
}


# What an older registry made: the tables it moves (and the store bench compares with).
ROWID_TABLES = (
    "CREATE TABLE zones (id TEXT PRIMARY KEY, body BLOB NOT NULL)",
    "CREATE TABLE detector_state (symbol TEXT NOT NULL, timeframe TEXT NOT NULL,"
    " body BLOB NOT NULL, PRIMARY KEY (symbol, timeframe))",
)


def clustered(db: sqlite3.Connection, table: str) -> bool | None:
    """Whether ``table`` is clustered on its key; None if there is no such table."""
    row = db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return None if row is None else "WITHOUT ROWID" in str(row[0]).upper()


def create_tables(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables a new file lacks; move those of an older layout to the clustered one.
    ``db`` is in autocommit mode (``isolation_level=None``)."""
    for table, (columns, definition) in TABLES.items():
        layout = clustered(db, table)
        if layout is None:
            db.execute(f"CREATE TABLE {table} {definition}")
        elif not layout:
            _move(db, path, table, columns, definition)


def _move(db: sqlite3.Connection, path: Path, table: str, columns: str, definition: str) -> None:
    moving = f"{table}_clustered"
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute(f"DROP TABLE IF EXISTS {moving}")
        db.execute(f"CREATE TABLE {moving} {definition}")
        rows = db.execute(f"INSERT INTO {moving} ({columns}) SELECT {columns} FROM {table}").rowcount
        db.execute(f"DROP TABLE {table}")
        db.execute(f"ALTER TABLE {moving} RENAME TO {table}")
        db.execute("COMMIT")
    except sqlite3.Error as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        log.warning(
            "store %s: table %s kept in its older layout (%s): it works, each write costs more",
            path,
            table,
            exc,
        )
        return
    log.info("store %s: table %s moved to the clustered layout (%d rows)", path, table, rows)
