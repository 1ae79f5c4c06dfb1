"""The store's tables are clustered on their keys (WITHOUT ROWID); a file an older registry wrote,
with rowid tables, is moved to that layout when the store opens, its rows kept, or left as it was
(and still used) when the move fails."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import msgspec
import pytest

from services.registry.pair_state import CandleState, PairState
from services.registry.store import ZoneStore
from services.registry.tables import ROWID_TABLES, TABLES, clustered
from shared.messages import Zone
from tests.registry.test_store_wal import zone

S = 1_000_000_000
T0 = 1_700_000_000 * S


def state(symbol: str) -> PairState:
    candle = CandleState(T0, T0 + 60 * S, 1.0, 2.0, 0.5, 1.5, 3)
    return PairState(symbol=symbol, timeframe="M1", tf_ns=60 * S, swing_bars=2, current=candle)


def layouts(path: Path) -> dict[str, bool | None]:
    with sqlite3.connect(path) as db:
        return {table: clustered(db, table) for table in TABLES}


def old_file(path: Path, zones: list[Zone], states: list[PairState]) -> None:
    """A store file as the registry wrote it before the tables were clustered."""
    enc = msgspec.msgpack.Encoder()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
        for sql in ROWID_TABLES:
            db.execute(sql)
        db.executemany("INSERT INTO zones VALUES (?, ?)", [(z.id, enc.encode(z)) for z in zones])
        db.executemany(
            "INSERT INTO detector_state VALUES (?, ?, ?)",
            [(st.symbol, st.timeframe, enc.encode(st)) for st in states],
        )
    assert layouts(path) == {"zones": False, "detector_state": False}


def test_a_new_file_gets_clustered_tables(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    store = ZoneStore(path)
    store.changed(zone(1))
    store.states_changed([state("pm.a")])
    assert store.flush() == 2
    store.close()
    assert layouts(path) == {"zones": True, "detector_state": True}
    again = ZoneStore(path)
    assert again.load() == [zone(1)]
    assert again.load_detector_state() == [state("pm.a")]
    again.close()


def test_an_older_file_is_moved_with_every_row_and_the_move_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    zones = [zone(i) for i in range(300)]
    states = [state(f"pm.{i}") for i in range(40)]
    old_file(path, zones, states)
    with caplog.at_level(logging.INFO, "poolwire.registry.store"):
        store = ZoneStore(path)
    assert layouts(path) == {"zones": True, "detector_state": True}
    moved = [r.getMessage() for r in caplog.records if "clustered layout" in r.getMessage()]
    assert moved == [
        f"store {path}: table zones moved to the clustered layout (300 rows)",
        f"store {path}: table detector_state moved to the clustered layout (40 rows)",
    ]
    assert sorted(store.load(), key=lambda z: z.id) == zones
    assert sorted(store.load_detector_state(), key=lambda st: st.symbol) == sorted(
        states, key=lambda st: st.symbol
    )
    # written to as before: an upsert replaces, a removal deletes
    changed = zone(5)
    changed.strength = 0.5
    store.changed(changed)
    store.removed(zone(6).id)
    assert store.flush() == 2
    store.close()
    with sqlite3.connect(path) as db:
        names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert names == {"zones", "detector_state"}
    again = ZoneStore(path)
    by_id = {z.id: z for z in again.load()}
    assert len(by_id) == 299 and by_id[changed.id].strength == 0.5 and zone(6).id not in by_id
    again.close()


def test_a_move_that_fails_leaves_the_file_as_it_was_and_the_store_works_on_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "registry.sqlite"
    old_file(path, [zone(1)], [state("pm.a")])
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process writing: the move cannot take the lock
    try:
        with caplog.at_level(logging.WARNING, "poolwire.registry.store"):
            store = ZoneStore(path)
    finally:
        other.execute("ROLLBACK")
        other.close()
    kept = [r.getMessage() for r in caplog.records if "older layout" in r.getMessage()]
    assert len(kept) == 2 and all("database is locked" in m for m in kept)
    assert layouts(path) == {"zones": False, "detector_state": False}
    store.changed(zone(2))
    assert store.flush() == 1
    assert sorted(z.id for z in store.load()) == [zone(1).id, zone(2).id]
    store.close()
    moved = ZoneStore(path)  # opened again with nobody in the way: moved now
    assert layouts(path) == {"zones": True, "detector_state": True}
    assert sorted(z.id for z in moved.load()) == [zone(1).id, zone(2).id]
    moved.close()
