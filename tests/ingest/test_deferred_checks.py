"""Book hashes checked after a burst's messages are out, once per asset (the service's mode)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable

from services.ingest.router import Router
from services.simulator.market import MarketSim
from shared.clock import FakeClock
from shared.messages import BookChange, Message
from tests.ingest import frames
from tests.ingest.test_router import feed

Out = list[tuple[str, Message]]


class Loop:
    """call_soon, run by hand: what the event loop does once the frames at hand are routed."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], object]] = []

    def call_soon(self, cb: Callable[[], object]) -> None:
        self.callbacks.append(cb)

    def turn(self) -> None:
        callbacks, self.callbacks = self.callbacks, []
        for cb in callbacks:
            cb()


def make(**kw: object) -> tuple[Router, Out, Loop, list[str]]:
    out: Out = []
    loop = Loop()
    order: list[str] = []
    router = Router(
        lambda t, m: out.append((t, m)),
        defer_checks=loop.call_soon,
        before_checks=lambda: order.append(f"flush after {len(out)}"),
        **kw,  # type: ignore[arg-type]
    )
    return router, out, loop, order


def start(sim: MarketSim, router: Router) -> None:
    router.assign(sim.assets, "c1")
    frames.gamma_params(router, sim)
    router.handle_frame("c1", json.dumps([a.book_event() for a in sim.assets.values()]))


def test_bursts_of_the_simulators_stream_verify_after_publishing() -> None:
    sim = MarketSim(20, seed=7)
    router, out, loop, order = make()
    start(sim, router)
    rng = random.Random(3)
    t, changes = 1_700_000_000_000, 0
    for _ in range(300):  # bursts of 1..30 events (trades and the changes they cause included)
        n = rng.randint(1, 30)
        feed(sim, router, ["c1"], n, t)
        t += n
        changes = sum(isinstance(m, BookChange) for _, m in out)
        assert order[-1:] != [f"flush after {len(out)}"]  # nothing checked yet: the burst is not over
        loop.turn()
        assert order[-1] == f"flush after {len(out)}"  # everything routed was flushed, then checked
    s = router.hashes.stats
    assert s.mismatches == 0 and s.resyncs == 0
    assert 0 < s.checks < changes  # an asset changed twice in a burst is hashed once
    for asset_id, a in sim.assets.items():  # and the books are exact
        bids, asks = a.levels()
        local = router.assets[asset_id].book
        assert local.sorted_bids() == [(lv["price"], lv["size"]) for lv in bids]
        assert local.sorted_asks() == [(lv["price"], lv["size"]) for lv in asks]


def test_a_wrong_book_is_found_at_the_end_of_the_burst_and_resynced_once() -> None:
    asked: list[tuple[str, str]] = []
    sim = MarketSim(2, seed=3)
    router, _, loop, _ = make(clock=FakeClock(), on_resync=lambda c, a: asked.append((c, a)))
    start(sim, router)
    books = router.hashes.stats.checks
    for st in router.assets.values():
        st.book.apply(True, "0.001", "1")  # our local books drifted: every change mismatches
    feed(sim, router, ["c1"], 40, 1_700_000_000_000)
    assert router.hashes.stats.mismatches == 0 and asked == []
    loop.turn()
    assert router.hashes.stats.checks - books == 2 and router.hashes.stats.mismatches == 2  # once an asset
    assert sorted(a for _, a in asked) == sorted(sim.assets)


def test_a_trade_or_a_book_in_between_cancels_the_pending_check() -> None:
    sim = MarketSim(2, seed=5)
    router, _, loop, _ = make()
    start(sim, router)
    books = router.hashes.stats.checks
    yes = sim.markets[0].assets[0]
    feed(sim, router, ["c1"], 1, 1_700_000_000_000)  # a change: its check is pending
    # a trade changes last_trade_price, part of the hashed document: the change's hash no longer
    # describes the book, so its check must not run (it would be a false mismatch)
    yes.last_trade_price = "0.42"
    router.handle_frame(
        "c1",
        json.dumps(
            {"event_type": "last_trade_price", "asset_id": yes.asset_id, "market": yes.market.condition_id,
             "price": "0.42", "side": "BUY", "size": "10", "timestamp": "1700000000001"}
        ),
    )  # fmt: skip
    for a in sim.assets.values():  # and a fresh book for the other asset
        if a is not yes:
            a.rehash("1700000000002")
            router.handle_frame("c1", json.dumps([a.book_event()]))
    loop.turn()
    assert router.hashes.stats.checks - books == 1  # the new book, checked as it came; no change
    assert router.hashes.stats.mismatches == 0


def test_released_assets_are_not_checked() -> None:
    sim = MarketSim(2, seed=5)
    router, _, loop, _ = make()
    start(sim, router)
    checks = router.hashes.stats.checks
    feed(sim, router, ["c1"], 5, 1_700_000_000_000)
    router.release(list(sim.assets))
    assert router.run_checks() == 0 and router.hashes.stats.checks == checks
    loop.turn()  # the scheduled run finds nothing left
    assert router.hashes.stats.checks == checks
