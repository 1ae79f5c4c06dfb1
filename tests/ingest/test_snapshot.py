"""ingest's Clone snapshots: the books (and mids) a consumer would rebuild from the stream.

The router's state (pure), then ingest as a real process against the simulator over real sockets:
a consumer that read the whole stream against ``request_snapshot``, prefix filtering, and
``shared.client.follow`` across a kill -9 of ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from services.ingest.router import Router
from services.simulator.market import MarketSim
from shared.bus import Pusher, Subscriber
from shared.client import follow
from shared.messages import (
    BookChange,
    BookSnapshot,
    ForceSubscribe,
    Message,
    Price,
    SnapshotReply,
    TickSizeChange,
)
from shared.snapshot import request_snapshot
from tests.e2e.pipeline import Proc
from tests.helpers import eventually, python_env, spawn
from tests.ingest.test_integration import simulator, stop, write_config
from tests.ports import tcp_endpoint

T0 = 1_700_000_000_000


class Books:
    """A consumer's view, rebuilt from md.book / md.change / md.tick_size and px.pm (no snapshot)."""

    def __init__(self) -> None:
        self.books: dict[str, dict[str, Any]] = {}
        self.prices: dict[str, Price] = {}

    def apply(self, msg: Message) -> None:
        if isinstance(msg, BookSnapshot):
            self.books[msg.asset] = {
                "market": msg.market,
                "bids": {lv.price: lv.size for lv in msg.bids},
                "asks": {lv.price: lv.size for lv in msg.asks},
                "hash": msg.hash,
                "tick_size": msg.tick_size,
                "event_ns": msg.event_ns,
            }
        elif isinstance(msg, BookChange):
            book = self.books.get(msg.asset)
            if book is None:
                return  # a change before the first book: nothing to apply it to
            side = book["bids" if msg.side == "buy" else "asks"]
            if msg.size > 0.0:
                side[msg.price] = msg.size
            else:
                side.pop(msg.price, None)
            if msg.hash:
                book["hash"] = msg.hash
            if msg.market:
                book["market"] = msg.market
            book["event_ns"] = msg.event_ns
        elif isinstance(msg, TickSizeChange):
            if msg.asset in self.books:
                self.books[msg.asset]["tick_size"] = msg.new_tick_size
        elif isinstance(msg, Price) and msg.symbol.startswith("pm."):
            self.prices[msg.symbol] = msg

    def book_keys(self) -> dict[str, tuple[Any, ...]]:
        return {
            asset: (
                asset,
                b["market"],
                tuple(sorted(b["bids"].items(), reverse=True)),  # best (highest) bid first
                tuple(sorted(b["asks"].items())),  # best (lowest) ask first
                b["hash"],
                b["tick_size"],
                b["event_ns"],
            )
            for asset, b in self.books.items()
        }

    def price_keys(self) -> dict[str, tuple[Any, ...]]:
        return {s: price_key(p) for s, p in self.prices.items()}


def book_key(b: BookSnapshot) -> tuple[Any, ...]:
    levels = (tuple((lv.price, lv.size) for lv in b.bids), tuple((lv.price, lv.size) for lv in b.asks))
    return (b.asset, b.market, *levels, b.hash, b.tick_size, b.event_ns)


def price_key(p: Price) -> tuple[Any, ...]:
    return (p.symbol, p.price, p.bid, p.ask, p.source, p.event_ns)


def split(items: Iterable[Message]) -> tuple[dict[str, tuple[Any, ...]], dict[str, tuple[Any, ...]]]:
    """A snapshot's items as (books by asset, prices by symbol); an asset or symbol only once."""
    books: dict[str, tuple[Any, ...]] = {}
    prices: dict[str, tuple[Any, ...]] = {}
    for item in items:
        if isinstance(item, BookSnapshot):
            assert item.asset not in books, f"{item.asset} twice"
            books[item.asset] = book_key(item)
        else:
            assert isinstance(item, Price), item
            assert item.symbol not in prices, f"{item.symbol} twice"
            prices[item.symbol] = price_key(item)
    return books, prices


def topic_of(item: Message) -> str:
    if isinstance(item, BookSnapshot):
        return f"md.book.{item.asset}"
    assert isinstance(item, Price)
    return f"px.{item.symbol}"


# -- the router's state (pure) ---------------------------------------------------------------------


def fed_router(n_assets: int = 12, steps: int = 3000) -> tuple[Router, Books, MarketSim, list[str]]:
    """A router fed books for all but one market, then a simulator stream and a tick size change.

    The market without a book still gets its changes (applied to an empty local book) and mids.
    """
    sim = MarketSim(n_assets, seed=5)
    consumer = Books()
    router = Router(lambda _t, m: consumer.apply(m), verify_hashes=False)
    assets = list(sim.assets)
    router.assign(assets, "c1")
    without_book = [a.asset_id for a in sim.markets[-1].assets]
    books = [a.book_event() for aid, a in sim.assets.items() if aid not in without_book]
    router.handle_frame("c1", json.dumps(books))
    for i in range(steps):
        for ev in sim.step(T0 + i):
            router.handle_frame("c1", json.dumps(ev))
    tick = sim.assets[assets[0]]
    router.handle_frame(
        "c1",
        json.dumps(
            {
                "event_type": "tick_size_change",
                "asset_id": tick.asset_id,
                "market": tick.market.condition_id,
                "old_tick_size": "0.01",
                "new_tick_size": "0.001",
                "timestamp": str(T0 + steps),
            }
        ),
    )
    return router, consumer, sim, without_book


def test_snapshot_is_the_state_a_consumer_rebuilt_from_the_stream() -> None:
    router, consumer, sim, without_book = fed_router()
    books, prices = split(router.snapshot())
    with_book = set(sim.assets) - set(without_book)
    assert set(books) == with_book  # an asset whose book has not come yet has no book item...
    assert books == consumer.book_keys()
    assert prices == consumer.price_keys()
    assert set(prices) == {f"pm.{a}" for a in sim.assets}  # ... but its mid, published, is known
    first = next(iter(sim.assets))
    assert books[first][5] == 0.001  # the current tick size, not the book's
    # the levels are the local book's, which equals the simulator's
    for asset in with_book:
        bids, asks = sim.assets[asset].levels()
        assert books[asset][2] == tuple((float(lv["price"]), float(lv["size"])) for lv in reversed(bids))
        assert books[asset][3] == tuple((float(lv["price"]), float(lv["size"])) for lv in reversed(asks))
        assert books[asset][4] == sim.assets[asset].hash
    # a released asset leaves the state
    router.release([first])
    assert first not in split(router.snapshot())[0]


def test_snapshot_prefix_selects_by_the_topic_an_item_is_published_on() -> None:
    router, *_ = fed_router(n_assets=40, steps=500)
    everything = router.snapshot()
    asset = next(i.asset for i in everything if isinstance(i, BookSnapshot))
    prefixes = [
        "",
        "md.",
        "md.bo",
        "md.book.",
        f"md.book.{asset}",
        f"md.book.{asset[:2]}",
        f"md.book.{asset}0",
        "px.",
        "px.pm.",
        f"px.pm.{asset}",
        f"px.pm.{asset[:1]}",
        "md.change.",
        "px.dex.",
        "zone.",
    ]
    for prefix in prefixes:
        got = router.snapshot(prefix)
        assert got == [i for i in everything if topic_of(i).startswith(prefix)], prefix
    assert [topic_of(i) for i in router.snapshot(f"md.book.{asset}")] == [f"md.book.{asset}"]
    assert [topic_of(i) for i in router.snapshot(f"px.pm.{asset}")] == [f"px.pm.{asset}"]
    assert router.snapshot("md.change.") == [] and router.snapshot("zone.") == []


# -- ingest as a process, over real sockets ---------------------------------------------------------


class Followed:
    """What ``follow()`` yielded since its last SnapshotReply: the books, the items, the updates."""

    def __init__(self) -> None:
        self.headers: list[SnapshotReply] = []
        self.books = Books()
        self.base: list[Message] = []
        self.updates: list[Message] = []

    def add(self, topic: str, msg: Message) -> None:
        if isinstance(msg, SnapshotReply):  # the state starts over
            self.headers.append(msg)
            self.books, self.base, self.updates = Books(), [], []
        elif topic == "snapshot":
            self.base.append(msg)
            self.books.apply(msg)
        else:
            self.updates.append(msg)
            self.books.apply(msg)


async def collect(sub: Subscriber, log: list[Message], done: Callable[[], bool], timeout: float) -> None:
    async def receive() -> None:
        log.extend(msg for _, msg in await sub.recv_batch(timeout=0.5))

    await eventually(
        done, wake=receive, timeout=timeout, what="the messages collected", state=lambda: len(log)
    )


@pytest.mark.slow
async def test_snapshot_over_sockets_equals_the_books_rebuilt_from_the_stream(tmp_path: Path) -> None:
    async with simulator(60, events_per_s=300) as (server, ws_url, _):
        assets = set(server.sim.assets)
        snap = tcp_endpoint()
        # no static list, no discovery: nothing is subscribed until the consumer is connected
        cfg, pub, pull, _ = write_config(tmp_path, ws_url, snapshot=snap)
        log: list[Message] = []
        async with Subscriber(pub, ["md.", "px.pm.", "ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                await sub.wait_for_publisher("ingest", timeout=20)
                header, items = await request_snapshot(snap, timeout=5)
                assert header.count == 0 and items == []  # nothing subscribed yet
                pusher = Pusher(pull, sender="test")
                await pusher.send(ForceSubscribe(asset_ids=sorted(assets)), timeout=5)
                pusher.close()
                await eventually(
                    lambda: server.connection_sizes() == [60],
                    wake=server.changed,
                    timeout=20,
                    what="subscribed",
                )

                def have_books() -> bool:
                    return {m.asset for m in log if isinstance(m, BookSnapshot)} == assets

                await collect(sub, log, have_books, 20)
                await collect(sub, log, lambda: len(log) > 1500, 20)  # the books moved on meanwhile
                # the snapshot is taken while the market moves
                header, items = await request_snapshot(snap, timeout=5)
                assert header.publisher == log[0].publisher and header.count == len(items)
                await collect(sub, log, lambda: log[-1].seq > header.snapshot_seq, 10)
                assert sub.stats.gaps == 0  # the consumer saw every message: its view is the truth

                consumer = Books()
                for msg in log:
                    if msg.seq <= header.snapshot_seq:
                        consumer.apply(msg)
                books, prices = split(items)
                assert set(books) == assets  # one book per subscribed asset
                assert books == consumer.book_keys()
                assert set(prices) == {f"pm.{a}" for a in assets}
                assert prices == consumer.price_keys()
                assert any(isinstance(m, BookChange) and m.seq <= header.snapshot_seq for m in log)

                # the request's prefix selects by topic
                header, only_books = await request_snapshot(snap, "md.book.", timeout=5)
                assert {b.asset for b in only_books if isinstance(b, BookSnapshot)} == assets
                assert len(only_books) == len(assets) == header.count
                asset = min(assets)
                _, one = await request_snapshot(snap, f"md.book.{asset}", timeout=5)
                assert len(one) == 1 and isinstance(one[0], BookSnapshot) and one[0].asset == asset
                _, only_prices = await request_snapshot(snap, "px.pm.", timeout=5)
                assert all(isinstance(p, Price) for p in only_prices) and len(only_prices) == len(assets)
                _, one = await request_snapshot(snap, f"px.pm.{asset}", timeout=5)
                assert len(one) == 1 and isinstance(one[0], Price) and one[0].symbol == f"pm.{asset}"
                _, md_only = await request_snapshot(snap, "md.", timeout=5)
                assert len(md_only) == len(assets) and all(isinstance(b, BookSnapshot) for b in md_only)
                assert (await request_snapshot(snap, "md.change.", timeout=5))[1] == []
                assert await asyncio.to_thread(stop, proc) < 10.0
                assert proc.returncode == 0


@pytest.mark.slow
async def test_follow_gets_the_books_from_the_snapshot_and_again_after_kill_9(tmp_path: Path) -> None:
    async with simulator(40, events_per_s=200) as (server, ws_url, _):
        assets = set(server.sim.assets)
        snap = tcp_endpoint()
        cfg, pub, _pull, _ = write_config(
            tmp_path, ws_url, snapshot=snap, assets=sorted(assets), min_pending=1
        )
        env = python_env({"POOLWIRE_PUBLISHER_ID": "ingest@test"})  # stable, as a restarted container's
        ingest = Proc("ingest", f"exec {sys.executable} -m services.ingest --config {cfg}", env, tmp_path)
        followed = Followed()
        arrived = asyncio.Event()

        async def consume() -> None:
            async for topic, msg in follow(pub, snap, "md."):
                followed.add(topic, msg)
                arrived.set()

        async def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
            await eventually(cond, wake=arrived, timeout=timeout, what=lambda: f"{what}\n{ingest.tail()}")

        task: asyncio.Task[None] | None = None
        try:
            loop = asyncio.get_running_loop()
            async with Subscriber(pub, ["ingest."]) as plain:
                ingest.start()
                await plain.wait_for_publisher("ingest", timeout=20)
                await eventually(
                    lambda: server.connection_sizes() == [40],
                    wake=server.changed,
                    timeout=20,
                    what="subscribed",
                )
                # every book is out before the consumer joins (asked again at each heartbeat)
                deadline = loop.time() + 20
                while len((await request_snapshot(snap, "md.book.", timeout=5))[1]) < len(assets):
                    assert loop.time() < deadline, f"books not routed\n{ingest.tail()}"
                    await plain.recv_batch(timeout=1)

                # a late joiner: the books come from the snapshot
                task = loop.create_task(consume())
                await wait(lambda: len(followed.base) == len(assets), 20, "the first snapshot")
                (first,) = followed.headers
                assert first.publisher == "ingest@test" and first.count == len(assets)
                assert {m.asset for m in followed.base if isinstance(m, BookSnapshot)} == assets
                await wait(lambda: len(followed.updates) > 50, 20, "updates after the snapshot")

                await ingest.kill9_and_restart(heard_by=plain)

            # follow() fetched the state again from the new incarnation and holds every book again
            await wait(
                lambda: len(followed.headers) == 2 and set(followed.books.books) == assets,
                20,
                "every book again",
            )
            assert followed.headers[1].publisher == "ingest@test"
            # ... and what it holds is the new incarnation's state: a fresh snapshot's, at its seq
            header, items = await request_snapshot(snap, "md.", timeout=5)
            await wait(
                lambda: bool(followed.updates) and followed.updates[-1].seq > header.snapshot_seq,
                10,
                "an update after the snapshot",
            )
            assert len(followed.headers) == 2
            books = Books()
            for msg in [*followed.base, *(m for m in followed.updates if m.seq <= header.snapshot_seq)]:
                books.apply(msg)
            assert split(items)[0] == books.book_keys()
            rc, took = ingest.stop()
            assert rc == 0 and took < 10.0
            print(
                f"\nfollow: {first.count} books from the first snapshot; after kill -9, "
                f"{followed.headers[1].count} from the new incarnation's and "
                f"{sum(isinstance(m, BookSnapshot) for m in followed.updates)} as updates"
            )
        finally:
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            with contextlib.suppress(Exception):
                if ingest.alive():
                    ingest.stop()
            ingest.cleanup()
