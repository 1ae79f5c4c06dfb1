"""The SQLite store never checkpoints its WAL on the caller's thread (a checkpoint fsyncs: a stall
of the event loop); the checkpointer copies it back, after which the WAL starts over."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import cast

import pytest

from services.alerts.checkpoint import CATCH_UP_ROUNDS, Checkpointer
from services.alerts.store_sqlite import SqliteStore

AUTO_CHECKPOINT_PAGES = 1000  # SQLite's default wal_autocheckpoint


def wal_frames(path: str) -> int:
    """Frames in the WAL not yet reset (a PASSIVE checkpoint with nothing to copy reports them)."""
    db = sqlite3.connect(path)
    try:
        _busy, frames, _copied = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    finally:
        db.close()
    return int(frames)


def test_commits_never_checkpoint_and_the_checkpointer_catches_up(tmp_path: Path) -> None:
    path = str(tmp_path / "alerts.sqlite3")
    store = SqliteStore(path)
    assert store._checkpointer is not None
    store._checkpointer.stop()  # this test runs its rounds itself
    try:
        assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)
        body = b"x" * 3000  # about a page a row
        for n in range(15):
            store.save_inputs({f"bar:{n}:{i}": body for i in range(100)})
        wal = Path(path + "-wal")
        # SQLite's own checkpoint would have started the WAL over at 1 000 pages
        assert wal.stat().st_size > 1.4 * AUTO_CHECKPOINT_PAGES * 4096
        checkpointer = Checkpointer(path)
        db = sqlite3.connect(path, isolation_level=None)
        try:
            checkpointer.run_once(db)
        finally:
            db.close()
        assert checkpointer.checkpoints >= 1 and checkpointer.failures == 0
        store.save_inputs({"bar:after": body})  # the WAL was copied back whole: it starts over
        assert wal_frames(path) < 10
        # past restart_frames a RESTART round (below) makes the next commit start over too
        store.save_inputs({f"bar:again:{i}": body for i in range(300)})
        db = sqlite3.connect(path, isolation_level=None)
        try:
            assert Checkpointer(path)._checkpoint(db, "RESTART") == (0, 354, 354)
        finally:
            db.close()
        store.save_inputs({"bar:last": body})
        assert wal_frames(path) < 10
        assert len(store.load_inputs()) == 15 * 100 + 300 + 2
    finally:
        store.close()
    reopened = SqliteStore(path)
    try:
        assert len(reopened.load_inputs()) == 15 * 100 + 300 + 2
    finally:
        reopened.close()


def test_rounds_that_never_catch_up_end_with_a_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint reports its own snapshot: rounds go on until one finds the WAL as the round
    before left it; if commits keep landing between them, a RESTART round follows past
    restart_frames (it holds the writer for the last frames; the WAL then starts over)."""
    modes: list[str] = []

    def growing(db: object, mode: str) -> tuple[int, int, int]:
        modes.append(mode)
        frames = 5000 + 10 * len(modes)  # a commit between every two rounds
        return 0, frames, frames

    checkpointer = Checkpointer("unused", restart_frames=4096)
    monkeypatch.setattr(checkpointer, "_checkpoint", growing)
    checkpointer.run_once(cast(sqlite3.Connection, None))
    assert modes == ["PASSIVE"] * CATCH_UP_ROUNDS + ["RESTART"] and checkpointer.restarts == 1

    modes.clear()
    settled = iter([(0, 5000, 5000), (0, 5010, 5010), (0, 5010, 5010)])

    def settling(db: object, mode: str) -> tuple[int, int, int]:
        modes.append(mode)
        return next(settled)

    monkeypatch.setattr(checkpointer, "_checkpoint", settling)
    checkpointer.run_once(cast(sqlite3.Connection, None))
    assert modes == ["PASSIVE"] * 3  # caught up (nothing committed since): the writer starts over
