"""The registry's store under real SQLite write failures: the database full (``max_page_count``
lowered on the store's connection) and locked (another connection holding ``BEGIN EXCLUSIVE``).
Nothing pending is lost, and once writes succeed the file holds exactly what a store that never
failed holds."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from services.registry.pair_state import CandleState, PairState
from services.registry.store import ZoneStore
from shared.bus import Pusher, Subscriber
from shared.messages import DetectorEvent, Zone, ZoneCreated, ZoneSnapshotItem
from shared.snapshot import request_snapshot
from tests.helpers import spawn
from tests.registry.test_service import metric, scrape, stop, wait_for, write_config

S = 1_000_000_000
T0 = 1_700_000_000 * S


class Ticks:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def zone(i: int, touches: int = 0, pad: int = 0) -> Zone:
    return Zone(
        id=f"H1_{i:06d}" + "x" * pad,
        symbol=f"pm.{i % 7}",
        timeframe="H1",
        kind="custom",
        top=1.0 + i,
        bottom=0.5 + i,
        strength=1.0,
        created_ns=T0 + i * S,
        expires_ns=T0 + (i + 3600) * S,
        touches=touches,
    )


def state(symbol: str, close: float) -> PairState:
    return PairState(
        symbol=symbol,
        timeframe="S1",
        tf_ns=S,
        swing_bars=2,
        last_closed_start=T0,
        current=CandleState(T0 + S, T0 + 2 * S, 1.0, close, 1.0, close),
        closed=[CandleState(T0, T0 + S, 1.0, 1.0, 1.0, 1.0)],
    )


# The history both stores go through: before, during and after the failure.
def before(st: ZoneStore) -> None:
    st.changed_many(zone(i) for i in range(20))
    st.states_changed([state("pm.a", 1.0), state("pm.b", 1.0)])


def during(st: ZoneStore) -> None:
    st.changed_many(zone(i, pad=3000) for i in range(100, 160))  # new pages: a full database refuses them
    st.changed(zone(3, touches=1))
    st.removed(zone(4).id)
    st.states_changed([state("pm.a", 2.0), state("pm.c", 1.0)])
    st.states_removed([("pm.b", "S1")])


def more(st: ZoneStore) -> None:  # while still failing: newer changes of the same keys
    st.changed(zone(3, touches=2))
    st.removed(zone(100, pad=3000).id)
    st.changed(zone(4, touches=5))  # removed above, then back
    st.states_changed([state("pm.a", 3.0)])


def contents(path: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str, bytes]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        zones = db.execute("SELECT id, body FROM zones ORDER BY id").fetchall()
        states = db.execute("SELECT symbol, timeframe, body FROM detector_state ORDER BY 1, 2").fetchall()
    finally:
        db.close()
    return zones, states


def reference(tmp_path: Path) -> tuple[list[tuple[str, bytes]], list[tuple[str, str, bytes]]]:
    ref = ZoneStore(tmp_path / "ref.sqlite")
    for step in (before, during, more):
        step(ref)
        ref.flush()
    ref.close()
    return contents(tmp_path / "ref.sqlite")


def full(st: ZoneStore) -> Callable[[], None]:
    db = st._db
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")

    def grow() -> None:
        db.execute("PRAGMA max_page_count = 1073741823")

    return grow


def locked(st: ZoneStore) -> Callable[[], None]:
    other = sqlite3.connect(str(st.path), isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        other.execute("COMMIT")
        other.close()

    return release


@pytest.mark.parametrize("fail", [full, locked], ids=["full", "locked"])
def test_a_failed_write_keeps_every_change_and_recovers_to_the_exact_state(
    tmp_path: Path, fail: Callable[[ZoneStore], Callable[[], None]], caplog: pytest.LogCaptureFixture
) -> None:
    want = reference(tmp_path)
    ticks = Ticks()
    st = ZoneStore(tmp_path / "registry.sqlite", retry_interval=1.0, clock=ticks)
    before(st)
    assert st.flush() == 22
    recover = fail(st)
    during(st)
    pending = st.pending
    with caplog.at_level(logging.ERROR, "poolwire.registry.store"):
        assert st.flush() == 0
    assert (st.failures, st.failing, st.pending) == (1, True, pending)
    assert "change(s) kept" in caplog.text
    more(st)
    assert st.flush() == 0  # within the retry interval: not tried again
    assert st.failures == 1
    ticks.now = 1.5
    assert st.flush() == 0  # tried: still failing
    assert st.failures == 2
    assert contents(st.path)[0] == [(zone(i).id, msgspec.msgpack.encode(zone(i))) for i in range(20)]
    recover()
    ticks.now = 3.0
    assert st.flush() == st.writes - 22 > 0
    assert (st.pending, st.failing) == (0, False)
    assert st.close() == 0
    assert contents(st.path) == want


def test_a_final_flush_that_fails_says_how_many_changes_were_not_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    st = ZoneStore(tmp_path / "registry.sqlite")
    before(st)
    st.flush()
    release = locked(st)
    try:
        during(st)
        with caplog.at_level(logging.ERROR, "poolwire.registry.store"):
            assert st.close() == 65
    finally:
        release()
    assert "65 change(s) not written at shutdown" in caplog.text
    assert len(contents(tmp_path / "registry.sqlite")[0]) == 20


async def test_the_service_keeps_publishing_while_its_store_is_locked_and_writes_everything_after(
    tmp_path: Path,
) -> None:
    path, cfg = write_config(tmp_path, store_flush_interval="100ms")
    db_path = tmp_path / "data" / "registry.sqlite"
    port = cfg["metrics_port"]

    async def figures_until(name: str, ok: Callable[[float], bool], sub: Subscriber) -> str:
        """/metrics once ``name`` satisfies ``ok``: checked after each of the registry's heartbeats."""
        async with asyncio.timeout(15):
            while True:
                text = await asyncio.to_thread(scrape, port)
                if ok(metric(text, name)):
                    return text
                await sub.recv_batch(timeout=1.0)

    def event(symbol: str) -> DetectorEvent:
        return DetectorEvent(detector="t", symbol=symbol, timeframe="H1", kind="custom", top=0.9, bottom=0.5)

    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.", "registry.")) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            pusher = Pusher(cfg["pull"], sender="test")
            lock = sqlite3.connect(str(db_path), isolation_level=None)
            try:
                await pusher.send(event("pm.before"))
                await wait_for(sub, ZoneCreated, symbol="pm.before")
                lock.execute("BEGIN EXCLUSIVE")  # another process holds the database
                for i in range(5):
                    await pusher.send(event(f"pm.locked.{i}"))
                for i in range(5):  # still published while nothing can be written
                    await wait_for(sub, ZoneCreated, symbol=f"pm.locked.{i}")
                text = await figures_until(
                    "poolwire_registry_store_write_failures_total", lambda v: v >= 1, sub
                )
                assert metric(text, "poolwire_registry_store_failing") == 1
                assert metric(text, "poolwire_registry_store_pending") >= 5
                assert stored_ids(db_path) == {z.id for z in await active(cfg)} - locked_ids(
                    await active(cfg)
                )
                lock.execute("COMMIT")  # writable again: everything pending is written
                await figures_until("poolwire_registry_store_pending", lambda v: v == 0, sub)
                assert stored_ids(db_path) == {z.id for z in await active(cfg)}

                # At shutdown with the database locked: the final flush says what it could not write.
                lock.execute("BEGIN EXCLUSIVE")
                await pusher.send(event("pm.last"))
                await wait_for(sub, ZoneCreated, symbol="pm.last")
                rc, _ = stop(proc)
                assert rc == 0
                _, err = proc.communicate(timeout=10)
                assert "change(s) not written at shutdown" in err
            finally:
                pusher.close()
                if lock.in_transaction:
                    lock.execute("COMMIT")
                lock.close()


async def active(cfg: dict[str, Any]) -> list[Zone]:
    _, items = await request_snapshot(cfg["snapshot"], timeout=5)
    return [i.zone for i in items if isinstance(i, ZoneSnapshotItem)]


def locked_ids(zones: list[Zone]) -> set[str]:
    return {z.id for z in zones if z.symbol.startswith("pm.locked.")}


def stored_ids(path: Path) -> set[str]:
    return {zid for zid, _ in contents(path)[0]}
