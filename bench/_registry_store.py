"""The registry store's writes: CPU and WAL bytes per row, the clustered tables against the rowid
tables an older registry made, in the same run.

The rows are the replay bench's (bench/_registry_service.py): its recording through the detectors
and the core in-process, the changed zones taken every ``TICKS_PER_WRITE`` ticks (about the size of
a write of the replay, ~950 rows) with a few symbols' detector states, as the service's outbox
takes them. Each batch is written to both files in turn, so the two layouts see the same host.
CPU is this thread's (``time.thread_time``) for the writes and the checkpoints, which copy the
WAL into the database every ``CHECKPOINT_EVERY`` writes and start it over (the service runs them
on a thread of its own); WAL bytes are the frames the checkpoints found, over the rows written.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any
from unittest import mock

import services.registry.store as store_module
from bench._registry_service import _core, _recorded, _tick
from services.registry.store import Batch, ZoneStore
from services.registry.tables import ROWID_TABLES
from shared.messages import ZoneRemoved

TICKS_PER_WRITE = 1_600
STATES_EVERY = 10  # writes; 250 symbols' states each time
CHECKPOINT_EVERY = 4  # writes (~4 MB of rows: the service's CHECKPOINT_BYTES)


def _batches() -> list[Batch]:
    now = time.time_ns()
    det, reg = _core(now)
    with tempfile.TemporaryDirectory() as tmp:
        taker = ZoneStore(Path(tmp) / "taker.sqlite")  # only its pending changes are used
        batches = []
        for k, (sym, t, p) in enumerate(_recorded(), start=1):
            _tick(det, reg, sym, t, p, now)
            for event in reg.drain():
                zone = event.zone  # type: ignore[attr-defined]
                taker.removed(zone.id) if isinstance(event, ZoneRemoved) else taker.changed(zone)
            if k % TICKS_PER_WRITE == 0:
                if k % (TICKS_PER_WRITE * STATES_EVERY) == 0:
                    taker.states_changed(det.changed(250))
                batch = taker.take()
                if batch is not None:
                    batches.append(batch)
        taker.close()
    return batches


def _rowid_store(path: Path) -> ZoneStore:
    """A store on the older layout: the tables made as before, not moved."""

    def older(db: sqlite3.Connection, path: Path) -> None:
        for sql in ROWID_TABLES:
            db.execute(sql)

    with mock.patch.object(store_module, "create_tables", older):
        return ZoneStore(path)


def _checkpoint(store: ZoneStore) -> int:
    """Copy the WAL into the database and start it over (as the service's checkpoints do, here on
    this thread); returns the WAL frames it held."""
    busy, frames, _ = store._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
    if busy:
        raise RuntimeError("store bench: a checkpoint found the WAL busy")
    return int(frames)


def store_figures() -> dict[str, dict[str, Any]]:
    batches = _batches()
    rows = sum(b.rows for b in batches)
    names = ("clustered", "rowid")
    write_s = dict.fromkeys(names, 0.0)
    checkpoint_s = dict.fromkeys(names, 0.0)
    frames = dict.fromkeys(names, 0)
    with tempfile.TemporaryDirectory() as tmp:
        stores = {
            "clustered": ZoneStore(Path(tmp) / "clustered.sqlite"),
            "rowid": _rowid_store(Path(tmp) / "rowid.sqlite"),
        }
        page = {name: store._db.execute("PRAGMA page_size").fetchone()[0] for name, store in stores.items()}
        for i, batch in enumerate(batches):
            for name, store in stores.items():
                t0 = time.thread_time()
                store.write(batch)
                t1 = time.thread_time()
                if batch.error is not None:
                    raise RuntimeError(f"store bench: a write failed: {batch.error}")
                if i % CHECKPOINT_EVERY == CHECKPOINT_EVERY - 1 or i == len(batches) - 1:
                    frames[name] += _checkpoint(store)
                checkpoint_s[name] += time.thread_time() - t1
                write_s[name] += t1 - t0
        for store in stores.values():
            store.close()
    us = {name: (write_s[name] + checkpoint_s[name]) / rows * 1e6 for name in names}
    wal = {name: frames[name] * (page[name] + 24) / rows for name in names}  # a frame: header + page
    return {
        "registry.store_us_per_row": {
            "value": us["clustered"],
            "unit": "us CPU/row",
            "write_us_per_row": round(write_s["clustered"] / rows * 1e6, 2),
            "checkpoint_us_per_row": round(checkpoint_s["clustered"] / rows * 1e6, 2),
            "rowid_tables_us_per_row": round(us["rowid"], 2),  # the older layout, same run
            "ratio_to_rowid_tables": round(us["clustered"] / us["rowid"], 3),
            "rows": rows,
            "writes": len(batches),
        },
        "registry.store_wal_bytes_per_row": {
            "value": wal["clustered"],
            "unit": "B/row",
            "rowid_tables_bytes_per_row": round(wal["rowid"]),
            "ratio_to_rowid_tables": round(wal["clustered"] / wal["rowid"], 3),
        },
    }


if __name__ == "__main__":
    for key, fig in store_figures().items():
        print(key, fig)
