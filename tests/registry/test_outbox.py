"""Zone events go out only after the store committed their changes, in order: small writes on the
loop, larger ones on the store's thread, one at a time (group commit); a failed write keeps its
changes and the events still go out."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

import services.registry.store as store_module
from services.registry.outbox import Outbox
from services.registry.store import Batch, ZoneStore
from shared.messages import Message, Zone, ZoneCreated
from tests.helpers import eventually

S = 1_000_000_000
T0 = 1_700_000_000 * S


def zone(i: int, touches: int = 0) -> Zone:
    return Zone(
        id=f"H1_{i:06d}",
        symbol="pm.a",
        timeframe="H1",
        kind="custom",
        top=2.0 + i,
        bottom=1.0 + i,
        strength=1.0,
        created_ns=T0,
        expires_ns=T0 + 3600 * S,
        touches=touches,
    )


def ids(events: list[Message]) -> list[str]:
    return [e.zone.id for e in events if isinstance(e, ZoneCreated)]


def stored(path: Path) -> dict[str, bytes]:
    with sqlite3.connect(path) as db:
        return dict(db.execute("SELECT id, body FROM zones"))


class GatedStore(ZoneStore):
    """Writes wait for the test's go-ahead; records what was committed when each event went out."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.threads: set[str] = set()

    def write(self, batch: Batch, *, catch_up: bool = False) -> None:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        assert self.gate.wait(10)
        super().write(batch, catch_up=catch_up)


async def test_events_go_out_after_their_commit_in_order(tmp_path: Path) -> None:
    """On the store's thread: events behind a write in flight go as one write once it is done."""
    store = GatedStore(tmp_path / "z.sqlite")
    seen: list[tuple[str, set[str]]] = []

    def publish(events: list[Message], oldest_ns: int) -> None:
        for e in events:
            seen.append((e.zone.id, set(stored(store.path))))  # type: ignore[attr-defined]

    outbox = Outbox(store, publish, inline_bytes=0)
    runner = asyncio.create_task(outbox.run())
    try:
        for i in range(3):
            store.changed(zone(i))
            outbox.send([ZoneCreated(zone=zone(i))])
        outbox.send([ZoneCreated(zone=zone(99))])  # nothing new to write: still behind the others
        assert await asyncio.to_thread(store.entered.wait, 10)  # the first write is held
        for _ in range(20):  # the outbox task runs: it has nothing to publish yet
            await asyncio.sleep(0)
        assert seen == []
        assert outbox.in_flight == 1 and outbox.waiting == 3
        assert store.pending == 2  # zones 1 and 2: the next write, one for both
        store.gate.set()
        await eventually(lambda: len(seen) == 4, wake=None, timeout=10, what="4 publishes")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        outbox.close()
    assert [zid for zid, _ in seen] == ["H1_000000", "H1_000001", "H1_000002", "H1_000099"]
    for n, (zid, committed) in enumerate(seen[:3]):
        assert zid in committed  # each event out only once its zone was in the file
        assert len(committed) >= n + 1
    assert store.threads == {"registry-store_0"}
    assert store.writes == 3 and store.pending == 0
    store.close()


async def test_a_small_write_is_committed_on_the_loop_before_its_events_go_out(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "z.sqlite")
    store.gate.set()
    seen: list[tuple[str, set[str]]] = []
    outbox = Outbox(store, lambda events, _: seen.extend((i, set(stored(store.path))) for i in ids(events)))
    store.changed(zone(1))
    outbox.send([ZoneCreated(zone=zone(1))])
    assert seen == [("H1_000001", {"H1_000001"})]  # published in send, after the commit
    assert outbox.in_flight == 0 and store.threads == {threading.current_thread().name}
    outbox.close()
    store.close()


async def test_a_burst_behind_a_write_goes_as_one_write(tmp_path: Path) -> None:
    """Group commit: the first change starts a write; the 200 sends behind it make one more."""
    store = GatedStore(tmp_path / "z.sqlite")
    out: list[str] = []
    outbox = Outbox(store, lambda events, _: out.extend(ids(events)), inline_bytes=0)
    runner = asyncio.create_task(outbox.run())
    writes: list[int] = []
    write = store.write

    def counted(batch: Batch, *, catch_up: bool = False) -> None:
        writes.append(batch.rows)
        write(batch, catch_up=catch_up)

    store.write = counted  # type: ignore[method-assign]
    try:
        for i in range(201):
            store.changed(zone(i))
            outbox.send([ZoneCreated(zone=zone(i))])
        store.gate.set()
        await eventually(lambda: len(out) == 201, wake=None, timeout=10, what="201 events out")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        outbox.close()
    assert writes == [1, 200]
    assert out == [f"H1_{i:06d}" for i in range(201)]
    assert len(stored(store.path)) == 201
    store.close()


async def test_the_input_is_held_while_too_many_events_wait(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "z.sqlite")
    out: list[str] = []
    outbox = Outbox(store, lambda events, _: out.extend(ids(events)), inline_bytes=0, max_waiting=5)
    runner = asyncio.create_task(outbox.run())
    try:
        for i in range(6):
            store.changed(zone(i))
            outbox.send([ZoneCreated(zone=zone(i))])
        await outbox.wait_room()  # one written, 5 wait: not yet too many
        store.changed(zone(7))
        outbox.send([ZoneCreated(zone=zone(7))])
        held = asyncio.create_task(outbox.wait_room())
        for _ in range(20):
            await asyncio.sleep(0)
        assert not held.done()
        store.gate.set()
        async with asyncio.timeout(10):
            await held
        await eventually(lambda: len(out) == 7, wake=None, timeout=10, what="7 events out")
    finally:
        runner.cancel()
        await asyncio.gather(runner, return_exceptions=True)
        outbox.close()
    store.close()


async def test_checkpoints_run_beside_the_writes_once_enough_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Automatic checkpoints are off (one ran inside a commit, with an fsync); the outbox asks for
    one on the checkpoint thread after CHECKPOINT_BYTES of writes."""
    monkeypatch.setattr(store_module, "CHECKPOINT_BYTES", 50_000)
    store = ZoneStore(tmp_path / "z.sqlite")
    outbox = Outbox(store, lambda events, _: None)
    empty = store.path.stat().st_size
    for i in range(100):  # ~15 kB: below the checkpoint size, so everything stays in the WAL
        store.changed(zone(i))
        outbox.send([ZoneCreated(zone=zone(i))])
    assert store.path.stat().st_size == empty
    for i in range(100, 400):
        store.changed(zone(i))
        outbox.send([ZoneCreated(zone=zone(i))])
    outbox.close()  # waits for the checkpoint
    assert store.path.stat().st_size > empty + 50_000
    assert len(stored(store.path)) == 400
    store.close()


async def test_settle_now_publishes_what_waits_before_returning(tmp_path: Path) -> None:
    store = GatedStore(tmp_path / "z.sqlite")
    store.gate.set()
    out: list[str] = []
    outbox = Outbox(store, lambda events, _: out.extend(e.zone.id for e in events))  # type: ignore[attr-defined]
    store.changed(zone(1))
    outbox.send([ZoneCreated(zone=zone(1))])
    outbox.settle_now()
    assert out == ["H1_000001"] and outbox.in_flight == 0
    assert set(stored(store.path)) == {"H1_000001"}
    outbox.close()
    store.close()


async def test_a_failed_write_gives_back_what_newer_changes_did_not_replace(tmp_path: Path) -> None:
    store = ZoneStore(tmp_path / "z.sqlite", retry_interval=0.0)
    out: list[str] = []
    outbox = Outbox(store, lambda events, _: out.extend(e.zone.id for e in events))  # type: ignore[attr-defined]
    blocker = sqlite3.connect(store.path, timeout=0)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    store.changed(zone(1, touches=0))
    store.changed(zone(2, touches=0))
    outbox.send([ZoneCreated(zone=zone(1)), ZoneCreated(zone=zone(2))])
    store.changed(zone(2, touches=5))  # newer than the batch in flight
    outbox.settle_now()
    assert out == ["H1_000001", "H1_000002"]  # published all the same
    assert store.failures == 1 and store.failing
    assert store.pending == 2
    blocker.rollback()
    blocker.close()
    assert store.flush() == 2
    assert not store.failing
    reopened = ZoneStore(store.path)
    assert {z.id: z.touches for z in reopened.load()} == {"H1_000001": 0, "H1_000002": 5}
    reopened.close()
    outbox.close()
    store.close()


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> object:
    before = set(threading.enumerate())
    yield None
    assert not [t for t in threading.enumerate() if t not in before and t.name.startswith("registry-store")]
