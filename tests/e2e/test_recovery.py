"""Recovery: kill -9 each service in turn under load, restart it, and check what consumers see.

The demo pipeline runs as separate processes (the lines of Procfile.demo, each started by itself:
honcho would stop everything when one process dies). One consumer watches every PUB for the whole
module, so the alert checks cover every restart. Each service gets a stable publisher id (as a
container restarted on the same host has), so consumers see a restart as a numbering that starts
over (``Subscriber.stats.restarts``), after the old incarnation was presumed dead (``stats.dead``).

- registry keeps its zones (snapshots before and after are compared) and a consumer following it
  (Clone: snapshot + updates) re-syncs after the restart and holds exactly the registry's state;
- sync's pool states equal the chain simulator's after the restart, for the service and for a
  consumer following it;
- ingest subscribes every asset again (the simulator's view), and a consumer following it (Clone:
  snapshot + updates) holds every book again, the new incarnation's: the books ingest sends as it
  subscribes can reach the bus before subscribers have reconnected, and the snapshot has them;
- alerts sends no duplicate and loses no alert: every evaluation while it was up is there once.
"""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest
import pytest_asyncio

from services.alerts.bars import ROW_PREFIX, TickerRow
from shared.messages import (
    BookChange,
    BookSnapshot,
    Heartbeat,
    Message,
    TickSizeChange,
    ZoneExpired,
    ZoneTouched,
)
from shared.snapshot import request_snapshot
from tests.e2e.pipeline import (
    BUS_SERVICES,
    Collector,
    Endpoints,
    Mirror,
    Pipeline,
    S,
    Seen,
    apply_pool,
    apply_zone,
    chain_state,
    children,
    demo_pool_keys,
    load_pools,
    load_zones,
    sim_assets,
    sim_stats,
    zone_key,
)
from tests.ports import tcp_endpoint

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

FLUSH = 0.5  # deploy/demo.yaml: registry.store_flush_interval
BAR = 5 * S  # zone_touch's bucket
TICKER_ROWS = msgspec.msgpack.Decoder(TickerRow)  # alerts' stored open bars (services/alerts/bars.py)


@pytest.fixture(scope="module")
def ingest_snapshot() -> str:
    return tcp_endpoint()


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory, ingest_snapshot: str) -> Iterator[Pipeline]:
    ep = Endpoints.allocate(tmp_path_factory.mktemp("recovery"))
    pipe = Pipeline(
        ep,
        {
            "POOLWIRE_COMMON__HEARTBEAT_INTERVAL": "200ms",
            "POOLWIRE_INGEST__SNAPSHOT": ingest_snapshot,
            # more load than the demo: 1000 book events/s, a block every 0.5 s
            "POOLWIRE_SIMULATOR__EVENTS_PER_S": "1000",
        },
    )
    try:
        pipe.start()
        yield pipe
    finally:
        codes = pipe.close()
        # Every service still stops cleanly after all this.
        bad = {n: rc for n, rc in codes.items() if rc[0] != 0 or rc[1] >= 10}
        assert not bad, f"{bad}\n{pipe.logs()}"


@dataclass
class Watch:
    c: Collector
    zones: Mirror
    pools: Mirror
    started_ns: int


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def watch(pipeline: Pipeline) -> AsyncIterator[Watch]:
    ep = pipeline.endpoints
    async with (
        Collector(ep.pubs) as c,
        Mirror("registry", ep.registry_pub, ep.registry_snapshot, "zone.", load_zones, apply_zone) as zones,
        Mirror("sync", ep.sync_pub, ep.sync_snapshot, "dex.pool.", load_pools, apply_pool) as pools,
    ):
        await c.until(lambda: set(BUS_SERVICES) <= set(c.heartbeats), 30, lambda: pipeline.logs())
        yield Watch(c, zones, pools, time.time_ns())
        # No consumer lost a message silently at any time (restarts are not gaps).
        assert c.sub.stats.gaps == 0, c.sub.stats


async def restart(
    pipeline: Pipeline, w: Watch, name: str, while_dead: Callable[[], None] | None = None
) -> tuple[int, int]:
    """kill -9 ``name``, start it again; returns (kill time, first heartbeat of the new one) in ns.
    ``while_dead`` runs between the two (to read what the killed process had stored).

    Consumers must have seen the old publisher die and the new one number from 1 again.
    """
    c = w.c
    restarts, dead = c.sub.stats.restarts, c.sub.stats.dead
    runs = len(c.incarnations(name))
    killed_ns = time.time_ns()
    pipeline[name].kill9()
    await c.until(
        lambda: any(when >= killed_ns and svc == name for when, svc, _ in c.dead), 10, f"{name} seen dead"
    )
    if while_dead is not None:
        while_dead()
    pipeline[name].start()
    await c.until(lambda: len(c.incarnations(name)) > runs, 30, lambda: f"{name} back\n{pipeline.logs(name)}")
    back_ns = min(
        s.recv_ns
        for s in c.heartbeats[name]
        if isinstance(s.msg, Heartbeat) and s.msg.started_ns == c.incarnations(name)[-1]
    )
    assert c.sub.stats.restarts > restarts  # the numbering started over
    assert c.sub.stats.dead > dead
    return killed_ns, back_ns


async def test_registry_keeps_its_zones(pipeline: Pipeline, watch: Watch) -> None:
    c, mirror = watch.c, watch.zones
    ep = pipeline.endpoints
    await c.until(
        lambda: len(mirror.state) >= 10 and mirror.resyncs >= 1, 60, lambda: f"10 zones\n{pipeline.logs()}"
    )
    _, items = await request_snapshot(ep.registry_snapshot, "zone.")
    before = load_zones(items)
    # The snapshot's zones reach the store within a few flush intervals...
    db_path = ep.data_dir / "registry.sqlite"

    def stored() -> set[str]:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        try:
            return {row[0] for row in db.execute("SELECT id FROM zones")}
        finally:
            db.close()

    t0 = time.monotonic()
    while not set(before) <= stored():
        assert time.monotonic() - t0 < 10 * FLUSH, "zones not stored within 10 flush intervals"
        await c.next_heartbeat("registry")
    # ... then the registry dies with prices still flowing, and comes back.
    resyncs = mirror.resyncs
    killed_ns, back_ns = await restart(pipeline, watch, "registry")
    await mirror.until(lambda: mirror.resyncs > resyncs, 15, "the consumer re-synced")

    _, items = await request_snapshot(ep.registry_snapshot, "zone.")
    after = load_zones(items)
    # A heartbeat sent after the snapshot: every event published before it has arrived. A zone
    # that expired (ttl or filled) before or after the crash was known to the registry; a zone
    # missing from `after` with no such event is one the crash lost.
    await c.next_heartbeat("registry")
    ended = {s.msg.zone.id: s.recv_ns for s in c.zones if isinstance(s.msg, ZoneExpired)}
    lost = [z for zid, z in before.items() if zid not in after and zid not in ended]
    assert not lost, f"{len(lost)} of {len(before)} zones lost: {lost[:3]}"
    for zid, zone in before.items():
        if zid in after:
            assert zone_key(after[zid]) == zone_key(zone)
            assert after[zid].touches >= zone.touches
    # A zone that ended well before the crash (its end was stored) does not come back.
    margin = int(3 * FLUSH * S)
    back = [zid for zid, t in ended.items() if zid in after and t < killed_ns - margin]  # ended pre-crash
    assert not back, f"zones that had expired are active again: {back[:3]}"

    # The consumer that followed the registry through the crash holds exactly its state, later on.
    await c.until(lambda: any(s.recv_ns > back_ns for s in c.zones), 30, "zone events after the restart")
    snapshot, mine = await mirror.state_matching_snapshot()
    assert mine == snapshot
    print(
        f"\nregistry: {len(before)} zones before kill -9, {len(after)} after; "
        f"back {(back_ns - killed_ns) / 1e9:.2f} s after the kill"
    )


async def test_sync_pool_states_equal_the_chain(pipeline: Pipeline, watch: Watch) -> None:
    c, mirror = watch.c, watch.pools
    ep = pipeline.endpoints
    keys = demo_pool_keys()
    pools = {"0x" + k.hex() for k in keys}

    async def equal_to_chain() -> int:
        """Sync's snapshot, and the consumer's state, equal the chain at one block; returns it."""
        for _ in range(40):
            reply = await chain_state(ep, keys)
            snapshot, mine = await mirror.state_matching_snapshot()
            if set(snapshot) == pools and {s[2] for s in snapshot.values()} == {reply.block}:
                for state in reply.pools:
                    key = "0x" + state.pool.hex()
                    head: tuple[object, ...] = (key, state.protocol, reply.block)
                    if state.protocol == "v2":
                        chain = (*head, state.reserve0, state.reserve1)
                        assert snapshot[key][:5] == chain, (snapshot[key], chain)
                    else:
                        chain = (*head, state.sqrt_price_x96, state.tick, state.liquidity)
                        got = snapshot[key][:3] + snapshot[key][5:]
                        assert got == chain, (snapshot[key], chain)
                # an update carries the block the pool last changed in, a snapshot the head block
                assert {k: v[:2] + v[3:] for k, v in mine.items()} == {
                    k: v[:2] + v[3:] for k, v in snapshot.items()
                }
                return reply.block
            # the chain moved on between the two questions: ask again after the next block
            blocks = len(c.blocks)
            await c.until(lambda n=blocks: len(c.blocks) > n, 10, "a block")  # type: ignore[misc]
        raise AssertionError("sync never at the chain's head block")

    await c.until(lambda: mirror.resyncs >= 1 and set(mirror.state) == pools, 30, "sync live")
    head = await equal_to_chain()
    resyncs = mirror.resyncs
    killed_ns, back_ns = await restart(pipeline, watch, "sync")
    await mirror.until(lambda: mirror.resyncs > resyncs and set(mirror.state) == pools, 30, "pools again")
    head_after = await equal_to_chain()
    assert head_after > head
    print(
        f"\nsync: equal to the chain at block {head} and, after kill -9 and a cold start, at block "
        f"{head_after}; back {(back_ns - killed_ns) / 1e9:.2f} s after the kill"
    )


def load_books(items: list[Message]) -> dict[str, Any]:
    return {
        i.asset: (
            i.market,
            {lv.price: lv.size for lv in i.bids},
            {lv.price: lv.size for lv in i.asks},
            i.hash,
            i.tick_size,
            i.event_ns,
        )
        for i in items
        if isinstance(i, BookSnapshot)
    }


def apply_book(state: dict[str, Any], msg: Message) -> None:
    """What md.book / md.change / md.tick_size do to the books (entries are replaced, not changed)."""
    if isinstance(msg, BookSnapshot):
        state.update(load_books([msg]))
    elif isinstance(msg, BookChange) and msg.asset in state:
        market, bids, asks, book_hash, tick, _ = state[msg.asset]
        side = dict(bids if msg.side == "buy" else asks)
        if msg.size > 0.0:
            side[msg.price] = msg.size
        else:
            side.pop(msg.price, None)
        bids, asks = (side, asks) if msg.side == "buy" else (bids, side)
        state[msg.asset] = (msg.market or market, bids, asks, msg.hash or book_hash, tick, msg.event_ns)
    elif isinstance(msg, TickSizeChange) and msg.asset in state:
        market, bids, asks, book_hash, _, event_ns = state[msg.asset]
        state[msg.asset] = (market, bids, asks, book_hash, msg.new_tick_size, event_ns)


async def test_ingest_resubscribes_every_asset(
    pipeline: Pipeline, watch: Watch, ingest_snapshot: str
) -> None:
    c = watch.c
    ep = pipeline.endpoints
    assets = await sim_assets(ep)
    before = await sim_stats(ep)
    assert sum(conn["assets"] for conn in before["connections"]) == len(assets)
    old_ids = {conn["id"] for conn in before["connections"]}

    async with Mirror("ingest", ep.ingest_pub, ingest_snapshot, "md.", load_books, apply_book) as books:

        async def every_book(what: str) -> None:
            """The consumer holds a book of every asset, equal to ingest's snapshot at its seq."""
            t0 = time.monotonic()
            while books.resyncs == 0 or set(books.state) != assets:
                assert time.monotonic() - t0 < 30, f"{what}: {len(books.state)} of {len(assets)} books"
                await c.next_heartbeat("ingest")
            snapshot, mine = await books.state_matching_snapshot()
            assert set(snapshot) == assets
            assert mine == snapshot

        await every_book("the consumer's books")
        resyncs = books.resyncs
        killed_ns, back_ns = await restart(pipeline, watch, "ingest")
        # The simulator sees new connections holding every asset once, none asked twice.
        stats = before
        t0 = time.monotonic()
        while True:
            stats = await sim_stats(ep)
            conns = stats["connections"]
            ids = {conn["id"] for conn in conns}
            if not ids & old_ids and sum(conn["assets"] for conn in conns) == len(assets):
                break
            assert time.monotonic() - t0 < 30, f"simulator connections {conns}\n{pipeline.logs('ingest')}"
            await c.next_heartbeat("ingest")
        assert all(conn["rejected"] == 0 for conn in stats["connections"])
        # The consumer fetched the state again from the new incarnation (it does not wait for the
        # consumers to reconnect before it subscribes) and holds every book again...
        await books.until(lambda: books.resyncs > resyncs, 15, "the consumer re-synced")
        await every_book("every book again")
        # ... as anyone asking ingest for its books gets them: one per asset.
        header, items = await request_snapshot(ingest_snapshot, "md.book.")
        assert header.publisher == "ingest@e2e" and header.count == len(items)
        assert sorted(i.asset for i in items if isinstance(i, BookSnapshot)) == sorted(assets)
        assert len(items) == len(assets)
        recovered = len(books.base)  # the books in the snapshot the consumer re-synced from
    # Prices flow again.
    await c.until(
        lambda: sum(1 for a in assets if c.price_seen_ns.get(f"pm.{a}", 0) > back_ns) >= len(assets) // 2,
        30,
        "prices again",
    )
    live = sum(1 for s in c.books if s.recv_ns > killed_ns)
    print(
        f"\ningest: {len(assets)} assets subscribed again, back {(back_ns - killed_ns) / 1e9:.2f} s after; "
        f"the consumer's new snapshot held {recovered} books (a plain subscriber saw {live} on the bus)"
    )


async def test_alerts_no_duplicate_no_loss(pipeline: Pipeline, watch: Watch) -> None:
    c = watch.c

    # Kill away from an evaluation, paced by alerts' own heartbeats. The demo's buckets (2, 5 and
    # 15 s) are evaluated their allowed lateness (1 s) after each boundary: at 1, 3, 5, 6, 7 and 9 s
    # past a 10 s boundary. 1.6-2.6 s past one is 0.6 s after the evaluation at 1 s began and 0.4 s
    # before the next. (A kill between a result's commit and ZeroMQ's I/O thread writing its alerts
    # loses them, never repeats them: the window the alerts README states.)
    def off_boundary() -> bool:
        beats = c.heartbeats.get("alerts", [])
        return bool(beats) and 16 * S // 10 <= beats[-1].recv_ns % (10 * S) < 26 * S // 10

    store = pipeline.endpoints.data_dir / "alerts.sqlite3"

    def open_bar_read() -> bool:
        """Off the boundaries, with the open bar touched, and every touch of it on the bus already
        in alerts' store: read by alerts, so nothing of that bar is on its way at the kill."""
        if not off_boundary():
            return False
        now = time.time_ns()
        bar = now - now % BAR + BAR
        seen = Counter(touch_key(s) for s in c.zones if isinstance(s.msg, ZoneTouched) and bar_of(s) == bar)
        if not seen:  # the store is read only once there is something to find in it
            return False
        held = stored_touches(store)
        return all(held[k] >= n for k, n in seen.items())

    await c.until(lambda: len(c.alerts_of("zone_touch")) >= 2, 60, "zone_touch alerts")
    workers = children(pipeline["worker"].pid)  # the Procfile's worker line runs alerts.workers
    assert len(workers) == 2, workers
    await c.until(open_bar_read, 30, "a moment away from evaluations, the open bar's touches all read")
    held_at_kill: Counter[tuple[str, int]] = Counter()
    killed_ns, back_ns = await restart(
        pipeline, watch, "alerts", lambda: held_at_kill.update(stored_touches(store))
    )
    # The workers outlive the service: the same processes reconnect to the restarted one.
    assert sorted(children(pipeline["worker"].pid)) == sorted(workers)

    # Run on for four more bars after the restart.
    end_ns = back_ns + 4 * BAR + 2 * S
    await c.until(lambda: c.heartbeat_after("alerts", end_ns), 40, "four bars after the restart")

    # No duplicate: no evaluation published twice; "once" once per symbol across every restart.
    alerts = [s.msg for s in c.alerts]
    evaluations = Counter((a.strategy, a.symbol, a.bucket_ns) for a in alerts)  # type: ignore[attr-defined]
    assert max(evaluations.values()) == 1, evaluations.most_common(3)
    firsts = Counter(a.symbol for a in c.alerts_of("first_zone"))
    assert max(firsts.values()) == 1, firsts.most_common(3)

    # No loss: every touch published while alerts was up (before the kill, or after the new
    # incarnation subscribed) has its zone_touch alert, in the bar of its event time. Alerts buckets
    # inputs by event time and keeps the open bar's inputs in its store, so the touches of the bar
    # open at the kill are not lost either: each one alerts had read, as its store says. The kill
    # came once every touch of the open bar was read; one published in the moment between that look
    # and the kill was still on its way (PUB/SUB: what is in flight to a subscriber that dies is lost
    # to it; the alerts README, "Crash recovery"). Delivery is in order, so those can only be the
    # last ones published, after every touch alerts had read.
    got = {(a.symbol, a.bucket_ns) for a in c.alerts_of("zone_touch")}
    touches = [s for s in c.zones if isinstance(s.msg, ZoneTouched)]
    # The bar open at the kill (not evaluated yet: that is its allowed lateness, 1 s, past its end):
    # its touches in publish order (one registry incarnation), the first ones of each key read.
    open_bar = sorted(
        (s for s in touches if s.msg.publish_ns < killed_ns and bar_of(s) + S > killed_ns),
        key=lambda s: s.msg.seq,
    )
    read, in_flight = [], []
    for s in open_bar:
        key = touch_key(s)
        if held_at_kill[key] > 0:
            held_at_kill[key] -= 1
            read.append(s)
        else:
            in_flight.append(s)
    last_read = max((s.msg.seq for s in read), default=0)
    assert all(s.msg.seq > last_read for s in in_flight), ([s.msg.seq for s in in_flight], last_read)
    unread = {id(s) for s in in_flight}
    expected = 0
    missing = []
    for s in touches:
        bar = bar_of(s)
        before_kill = watch.started_ns + BAR <= bar - BAR and s.msg.publish_ns < killed_ns
        after_back = back_ns + S <= bar - BAR and bar <= end_ns - 2 * S
        if not (before_kill or after_back) or id(s) in unread:
            continue
        expected += 1
        assert isinstance(s.msg, ZoneTouched)
        if (s.msg.zone.symbol, bar) not in got:
            t = s.msg.event_ns or s.msg.publish_ns
            missing.append((s.msg.zone.symbol, bar, f"at {(t % BAR) / S:.3f} s into its bar"))
    assert expected > 0
    assert not missing, (
        f"{len(missing)} of {expected} touches without their alert: {missing[:5]}; "
        f"killed at {killed_ns}, back at {back_ns}"
    )
    print(
        f"\nalerts: {len(alerts)} alerts, {expected} touches each with its alert; "
        f"back {(back_ns - killed_ns) / 1e9:.2f} s after the kill; "
        f"{len(read)} touches of the open bar read before the kill, {len(in_flight)} on their way"
    )


def bar_of(seen: Seen) -> int:
    """The end of the zone_touch bar a message falls in, by its event time."""
    t = seen.msg.event_ns or seen.msg.publish_ns
    return t - t % BAR + BAR


def touch_key(seen: Seen) -> tuple[str, int]:
    """A ZoneTouched's (zone id, bar end), as alerts' store keeps it (:func:`stored_touches`)."""
    assert isinstance(seen.msg, ZoneTouched)
    return seen.msg.zone.id, bar_of(seen)


def stored_touches(path: Path) -> Counter[tuple[str, int]]:
    """The touches in alerts' stored open bars of the zone_touch size, by (zone id, bar end): what a
    restart takes back (services/alerts/bars.py). Read while alerts runs too (WAL: a reader waits
    for no writer)."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT key, body FROM open_inputs").fetchall()
    finally:
        db.close()
    return Counter(
        (e.zone_id, start + BAR)
        for key, body in rows
        if key.startswith(ROW_PREFIX)
        for series in TICKER_ROWS.decode(body).series
        if series.size_ns == BAR
        for start, events in series.zones.items()
        for e in events
        if e.event == "touched"
    )
