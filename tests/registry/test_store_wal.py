"""The store's WAL stays bounded under steady writes: a checkpoint copies only the frames of its
own snapshot, so with commits between every two of them the WAL never started over (1.1 GB in 3
minutes at 2 000 symbols). Past WAL_LIMIT_BYTES the next write on the store's thread copies the
rest first, and the WAL starts over, cut back to that size."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

import services.registry.store as store_module
from services.registry.outbox import Outbox
from services.registry.store import ZoneStore
from shared.messages import Zone, ZoneCreated

S = 1_000_000_000
T0 = 1_700_000_000 * S
PAGE = 4096
FRAME = PAGE + 24  # a WAL frame: its header and the page


def zone(i: int) -> Zone:
    return Zone(
        id=f"H1_{i:06d}",
        symbol=f"pm.{i % 97}",
        timeframe="H1",
        kind="custom",
        top=2.0 + i,
        bottom=1.0 + i,
        strength=1.0,
        created_ns=T0,
        expires_ns=T0 + 3600 * S,
    )


def wal_bytes(store: ZoneStore) -> int:
    return Path(f"{store.path}-wal").stat().st_size


def stored(path: Path) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM zones").fetchone()[0])


@pytest.fixture
def small_wal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "WAL_LIMIT_BYTES", 32 * PAGE)


def grow(store: ZoneStore, first: int, writes: int) -> None:
    """Many small commits, no checkpoint: the WAL only grows."""
    for w in range(writes):
        for i in range(first + 10 * w, first + 10 * w + 10):
            store.changed(zone(i))
        store.flush()


@pytest.mark.parametrize("catch_up", [False, True])
def test_a_write_past_the_wal_limit_copies_the_rest_and_the_wal_starts_over(
    tmp_path: Path, small_wal: None, catch_up: bool
) -> None:
    store = ZoneStore(tmp_path / "z.sqlite")
    grow(store, 0, 200)
    grown = wal_bytes(store)
    assert grown > 8 * 32 * PAGE
    assert store.catch_up_due
    store.changed(zone(999_999))
    batch = store.take()
    assert batch is not None
    store.write(batch, catch_up=catch_up)
    store.settle(batch)
    assert batch.error is None and stored(store.path) == 2001
    if catch_up:
        assert wal_bytes(store) <= 32 * PAGE and store.wal_catch_ups == 1 and not store.catch_up_due
    else:
        assert wal_bytes(store) >= grown and store.wal_catch_ups == 0
    store.close()
    assert stored(store.path) == 2001


def test_after_a_checkpoint_that_copied_every_frame_the_next_commit_starts_the_wal_over(
    tmp_path: Path, small_wal: None
) -> None:
    store = ZoneStore(tmp_path / "z.sqlite")
    grow(store, 0, 100)
    grown = wal_bytes(store)
    store.checkpoint()  # no commit meanwhile: every frame copied
    assert wal_bytes(store) == grown and store.wal_catch_ups == 0
    grow(store, 5000, 1)
    assert wal_bytes(store) <= 32 * PAGE  # started over at that commit, cut to the limit
    store.close()


async def test_under_steady_small_writes_the_outbox_keeps_the_wal_bounded(
    tmp_path: Path, small_wal: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Small writes commit on the loop; once the WAL is past its limit, the next write goes to
    the store's thread and copies the rest first (checkpoints beside the writes never found the
    WAL unchanged)."""
    monkeypatch.setattr(store_module, "CHECKPOINT_BYTES", 2000)
    store = ZoneStore(tmp_path / "z.sqlite")
    outbox = Outbox(store, lambda events, _: None)
    peak = 0
    for i in range(3000):
        store.changed(zone(i))
        outbox.send([ZoneCreated(zone=zone(i))])
        if outbox.in_flight:
            outbox.settle_now()
        peak = max(peak, wal_bytes(store))
    outbox.close()
    assert stored(store.path) == 3000
    # 3 000 commits of a page or more each: without starting over the WAL would be ~12 MB
    assert peak <= 32 * PAGE + 16 * FRAME and store.wal_catch_ups > 10  # a write or two past it
    store.close()


def test_removals_in_chunks_of_every_size_delete_exactly_those_rows(tmp_path: Path) -> None:
    from services.registry.pair_state import PairState

    store = ZoneStore(tmp_path / "z.sqlite")
    store.changed_many(zone(i) for i in range(300))
    store.states_changed(
        PairState(symbol=f"pm.{i}", timeframe="M1", tf_ns=60 * S, swing_bars=2) for i in range(300)
    )
    store.flush()
    gone = range(7, 300)  # 293 = 256 + 32 + 4 + 1: a statement of each size
    for i in gone:
        store.removed(f"H1_{i:06d}")
    store.states_removed([(f"pm.{i}", "M1") for i in gone])
    store.flush()
    store.close()
    again = ZoneStore(tmp_path / "z.sqlite")
    assert sorted(z.id for z in again.load()) == [f"H1_{i:06d}" for i in range(7)]
    assert sorted(s.symbol for s in again.load_detector_state()) == sorted(f"pm.{i}" for i in range(7))
    again.close()
