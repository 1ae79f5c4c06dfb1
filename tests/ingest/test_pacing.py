"""TurnPacer: under load the loop sleeps out the rest of a period after its work; a quiet feed never waits."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.ingest.config import IngestConfig
from services.ingest.metrics import IngestCollector
from services.ingest.pacing import TurnPacer
from services.ingest.planner import Limits
from services.ingest.pool import ConnectionPool
from services.ingest.router import Router
from services.ingest.subscriptions import Subscriptions
from shared.config import ConfigError, convert
from tests.ingest.test_deferred_checks import Loop

PERIOD = 0.0005


class FakeLoop(Loop):
    """An event loop's turns (``Loop``) with a clock and sleeps that move it."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 100.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    def pacer(self, settle_turns: int = 2) -> TurnPacer:
        return TurnPacer(PERIOD, self.call_soon, self.clock, self.sleep, settle_turns=settle_turns)


def test_a_frame_after_a_quiet_spell_is_routed_and_the_loop_goes_back_to_sleep_without_a_nap() -> None:
    loop = FakeLoop()
    pacer = loop.pacer()
    for _ in range(3):
        pacer.woke(loop.now)
        loop.now += 0.00005
        for _ in range(3):  # the settle turns, then the decision
            loop.turn()
        assert not loop.callbacks
        loop.now += 0.002  # the next frame comes after a quiet spell longer than a period
    assert loop.sleeps == [] and pacer.naps == 0


def test_frames_within_a_period_of_the_last_turn_make_the_loop_sleep_out_the_period() -> None:
    loop = FakeLoop()
    pacer = loop.pacer()
    pacer.woke(loop.now)  # a quiet spell before: no nap
    loop.now += 0.00005
    for _ in range(3):
        loop.turn()
    assert loop.sleeps == []
    loop.now += 0.0001  # the next frame 0.1 ms after the loop went idle: under load
    began = loop.now
    pacer.woke(began)
    loop.now += 0.00005  # its routing
    for _ in range(3):
        loop.turn()
    assert loop.sleeps == [pytest.approx(PERIOD - 0.00005)]  # until a period after it began
    assert loop.now == pytest.approx(began + PERIOD)
    assert pacer.naps == 1 and pacer.napped_s == pytest.approx(PERIOD - 0.00005)
    # what arrived meanwhile is routed at once after the nap: under load still, so another nap
    pacer.woke(loop.now)
    for _ in range(3):
        loop.turn()
    assert pacer.naps == 2 and loop.sleeps[-1] == pytest.approx(PERIOD)


def test_the_nap_waits_for_the_settle_turns_and_frames_routed_meanwhile_join_the_same_one() -> None:
    loop = FakeLoop()
    pacer = loop.pacer(settle_turns=3)
    pacer.woke(loop.now)
    for _ in range(4):
        loop.turn()
    loop.now += 0.0001
    pacer.woke(loop.now)
    for _ in range(3):  # in-process readers take what the frame published in these turns
        loop.turn()
        pacer.woke(loop.now)  # more frames, in the same stretch: no second decision
        assert loop.sleeps == []
    loop.turn()
    assert len(loop.sleeps) == 1 and not loop.callbacks


def test_a_stretch_longer_than_the_period_sleeps_no_more() -> None:
    loop = FakeLoop()
    pacer = loop.pacer()
    pacer.woke(loop.now)
    for _ in range(3):
        loop.turn()
    loop.now += 0.0001
    pacer.woke(loop.now)
    loop.now += 2 * PERIOD  # a long burst: the period is over before its work is
    for _ in range(3):
        loop.turn()
    assert loop.sleeps == [] and pacer.naps == 0


def test_a_pace_of_zero_leaves_the_loop_alone() -> None:
    loop = FakeLoop()
    pacer = TurnPacer(0.0, loop.call_soon, loop.clock, loop.sleep)
    for _ in range(5):
        pacer.woke(loop.now)
        loop.now += 0.00001
    assert loop.callbacks == [] and loop.sleeps == []


def test_the_pace_is_read_from_config_and_bounded() -> None:
    def ingest(**fields: object) -> IngestConfig:
        return convert(fields, IngestConfig, "ingest")

    assert ingest().loop_pace == pytest.approx(0.0005)
    assert ingest(loop_pace="2ms").loop_pace == pytest.approx(0.002)
    assert ingest(loop_pace=0).loop_pace == 0.0
    with pytest.raises(ConfigError, match=r"loop_pace \(60 ms\) is over 50 ms"):
        ingest(loop_pace="60ms")


def test_naps_are_exported() -> None:
    router = Router(lambda t, m: None, verify_hashes=False)
    subscriptions = Subscriptions()
    pool = ConnectionPool(subscriptions, router, Limits(), lambda cid: None)  # type: ignore[arg-type,return-value]
    collector = IngestCollector(pool, router, subscriptions)
    loop = FakeLoop()
    collector.pacer = pacer = loop.pacer()
    registry = CollectorRegistry()
    registry.register(collector)
    for _ in range(3):  # back to back: the first after a quiet spell, then two naps
        pacer.woke(loop.now)
        for _ in range(3):
            loop.turn()
    text = generate_latest(registry).decode()
    assert "poolwire_ingest_loop_naps_total 2.0" in text
    assert f"poolwire_ingest_loop_nap_seconds_total {2 * PERIOD}" in text
