"""Pending jobs: persisted with their bucket's claim, forgotten with their result, recovered after a crash.

Over both stores (SQLite and a real Redis). A crash is a store (or service core) abandoned without
closing it; its restart is a new one on the same state.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

import pytest

from services.alerts.config import AlertsConfig
from services.alerts.core import Alerts
from services.alerts.frequency import AlertState
from services.alerts.store_redis import RedisStore
from services.alerts.strategies import execute
from services.alerts.throttle import Due, StrategySpec, Throttle
from shared.config import convert
from shared.messages import AlertFired, AlertZoneEvent, JobResult, Price, StrategyJob, TickerInput, Trade

S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M  # a bucket boundary
LEASE = 10 * S  # the stores' and the config's default lease


def a_job(strategy: str, bucket_ns: int = B, n: int = 1) -> StrategyJob:
    zone = AlertZoneEvent(event="touched", zone_id="z1", timeframe="H1", kind="bsl", top=0.6, bottom=0.5)
    return StrategyJob(
        job_id=f"run-{strategy}-{bucket_ns}-{n}",
        strategy=strategy,
        kind="price_cross",
        bucket_ns=bucket_ns,
        tickers=["pm.a", "pm.b"],
        params={"level": 0.5, "direction": "up"},
        inputs={
            "pm.a": TickerInput(open=0.4, high=0.6, low=0.4, close=0.55, prev_close=0.41, zones=[zone]),
            "pm.b": TickerInput(close=0.3),
        },
        event_ns=bucket_ns,
    )


class Planner:
    """A claim's plan: records what it was offered, returns a job per strategy offered."""

    def __init__(self, bucket_ns: int = B) -> None:
        self.bucket_ns = bucket_ns
        self.offered: list[dict[str, int]] = []

    def __call__(self, prevs: dict[str, int]) -> Sequence[StrategyJob]:
        self.offered.append(dict(prevs))
        return [a_job(s, self.bucket_ns) for s in prevs]


def restart_and_adopt(store_factory: Any, now_ns: int) -> tuple[Any, list[StrategyJob]]:
    """A new instance on the same state, after the crash of the one that dispatched the jobs.

    SQLite has one instance: a restart adopts at once. On Redis the crashed instance's lease must
    run out first: nothing while it may still be alive, everything after.
    """
    store = store_factory()
    if store.name == "redis":
        assert store.adopt_jobs(now_ns) == []
        now_ns += LEASE
    return store, store.adopt_jobs(now_ns)


# ----------------------------------------------------------------------------------------------
# The store


def test_claim_persists_the_jobs_of_what_it_claims(store_factory: Any) -> None:
    store = store_factory()
    plan = Planner()
    assert store.claim(B, ["s1", "s2"], plan) == {"s1": 0, "s2": 0}
    assert plan.offered == [{"s1": 0, "s2": 0}]
    assert store.pending_jobs() == 2
    # the same bucket again: a duplicate, nothing offered, nothing stored
    assert store.claim(B, ["s1", "s2"], plan) == {}
    assert len(plan.offered) == 1 and store.pending_jobs() == 2
    # crash, restart: the jobs come back whole (inputs included), once
    store2, jobs = restart_and_adopt(store_factory, B + S)
    assert jobs == [a_job("s1"), a_job("s2")]
    assert store2.adopt_jobs(B + 2 * LEASE) == []
    # the next bucket offers the previous run as each strategy's last
    plan2 = Planner(B + M)
    assert store2.claim(B + M, ["s1", "s2"], plan2) == {"s1": B, "s2": B}
    assert plan2.offered == [{"s1": B, "s2": B}]


def test_group_claims_persist_jobs_too(store_factory: Any) -> None:
    ids = [f"s{i}" for i in range(100)]  # SQLite stores claims this large as one group row
    store = store_factory()
    plan = Planner()
    assert len(store.claim(B, ids, lambda prevs: plan({s: p for s, p in prevs.items() if s < "s2"}))) == 100
    _, jobs = restart_and_adopt(store_factory, B + S)
    assert sorted(j.strategy for j in jobs) == sorted(s for s in ids if s < "s2")


def test_finished_jobs_are_gone_with_their_states_written(store_factory: Any) -> None:
    store = store_factory()
    store.claim(B, ["s1", "s2", "s3"], Planner())
    state = AlertState(fired=1, last_fired_ns=B, last_bar_ns=B, last_bucket_ns=B, active=True)
    store.finish_job(a_job("s1").job_id, {("s1", "pm.a"): state})
    store.finish_job(a_job("s3").job_id, {})  # failed for good: forgotten without states
    assert store.pending_jobs() == 1
    store2, jobs = restart_and_adopt(store_factory, B + S)
    assert [j.strategy for j in jobs] == ["s2"]
    assert store2.get_alert_states([("s1", "pm.a")]) == {("s1", "pm.a"): state}
    store2.finish_job(jobs[0].job_id, {})
    assert store2.pending_jobs() == 0
    _, jobs = restart_and_adopt(store_factory, B + 3 * LEASE)
    assert jobs == []


def test_a_plan_that_fails_claims_nothing(store_factory: Any) -> None:
    store = store_factory()

    def broken(prevs: dict[str, int]) -> Sequence[StrategyJob]:
        raise RuntimeError("no inputs")

    with pytest.raises(RuntimeError):
        store.claim(B, ["s1"], broken)
    assert store.pending_jobs() == 0
    store2 = store_factory()  # after the crash it caused: the bucket is still to run
    plan = Planner()
    assert store2.claim(B, ["s1"], plan) == {"s1": 0}
    assert plan.offered == [{"s1": 0}]


def test_throttle_sets_each_due_job_and_claims_it_with_its_jobs(store_factory: Any) -> None:
    store = store_factory()
    t = Throttle(store, [StrategySpec.from_universe(s, M, ["pm.a"]) for s in ("moved", "also")])
    t.start()
    t.note_update("pm.a", B - S)
    made: list[list[str]] = []

    def make_jobs(due: list[Due]) -> list[StrategyJob]:
        made.append([d.strategy for d in due])
        return [a_job(d.strategy) for d in due]

    due = t.run_due(B, make_jobs)
    assert made == [["moved", "also"]]
    assert [(d.strategy, d.job) for d in due] == [("moved", a_job("moved")), ("also", a_job("also"))]
    assert t.run_due(B + S, make_jobs) == [] and len(made) == 1  # not twice in one bucket
    _, jobs = restart_and_adopt(store_factory, B + S)
    assert sorted(j.strategy for j in jobs) == ["also", "moved"]


# ----------------------------------------------------------------------------------------------
# Redis: several instances share the store; each adopts only what no live instance handles


@pytest.fixture
def redis_pair(redis_url: str) -> Any:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    made: list[RedisStore] = []

    def make() -> RedisStore:
        made.append(RedisStore(redis_url, prefix=prefix, lease_ns=LEASE))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_redis_adopts_jobs_only_from_instances_whose_lease_ended(redis_pair: Any) -> None:
    a, b = redis_pair(), redis_pair()
    assert a.adopt_jobs(B) == [] and b.adopt_jobs(B) == []
    a.claim(B, ["s1"], Planner())
    assert b.adopt_jobs(B + 5 * S) == []
    assert a.adopt_jobs(B + 8 * S) == []  # a renews: alive until B + 18 s
    assert b.adopt_jobs(B + 15 * S) == []
    assert b.adopt_jobs(B + 18 * S) == [a_job("s1")]  # a went silent: b takes over ...
    assert a.adopt_jobs(B + 19 * S) == []  # ... once (a, back, does not take it back while b lives)
    b.finish_job(a_job("s1").job_id, {})
    assert b.pending_jobs() == 0


def test_redis_clean_stop_releases_the_jobs_at_once(redis_pair: Any) -> None:
    a, b = redis_pair(), redis_pair()
    a.adopt_jobs(B)
    b.adopt_jobs(B)
    a.claim(B, ["s1", "s2"], Planner())
    a.close()
    assert b.adopt_jobs(B + S) == [a_job("s1"), a_job("s2")]


def test_redis_claim_race_stores_only_the_winners_jobs(redis_pair: Any) -> None:
    a, b = redis_pair(), redis_pair()

    def plan_then_lose(prevs: dict[str, int]) -> Sequence[StrategyJob]:
        # b claims s1 between a's read of the last runs and a's claim
        assert b.claim(B, ["s1"], lambda p: [a_job("s1", n=2)]) == {"s1": 0}
        return [a_job(s) for s in prevs]

    assert a.claim(B, ["s1", "s2"], plan_then_lose) == {"s2": 0}
    c = redis_pair()
    jobs = c.adopt_jobs(B + LEASE)
    assert sorted(j.job_id for j in jobs) == [a_job("s1", n=2).job_id, a_job("s2").job_id]


# ----------------------------------------------------------------------------------------------
# The service core: kill -9 between a bucket's claim and its result


def config(*strategies: dict[str, Any]) -> AlertsConfig:
    return convert({"strategies": list(strategies)}, AlertsConfig, "alerts")


CROSS = {"id": "cross", "kind": "price_cross", "bucket": "1m", "universe": ["pm.*"], "params": {"level": 0.5}}


def run(core: Alerts, job: StrategyJob, now_ns: int) -> tuple[str, list[AlertFired]]:
    """A worker runs the job; the core handles its result."""
    out = execute(job)
    alerts = [AlertFired(strategy=job.strategy, symbol=s.symbol, message=s.message, bucket_ns=job.bucket_ns)
              for s in out.signals]  # fmt: skip
    result = JobResult(job_id=job.job_id, strategy=job.strategy, worker="w", ok=True, alerts=alerts)
    status, published, _ = core.on_result(result, now_ns)
    return status, published


def test_kill_9_between_claim_and_result_loses_no_evaluation_and_repeats_none(store_factory: Any) -> None:
    cfg = config(CROSS)
    first = Alerts(cfg, store_factory())
    first.start()
    assert first.recover(B - M) == 0
    first.on_message(Price(symbol="pm.a", price=0.45), B - 30 * S)
    first.on_message(Price(symbol="pm.a", price=0.55), B - 20 * S)
    assert len(first.boundary(B)) == 1
    (job,) = first.dispatcher.ready(B)  # in flight: the worker runs it ... and the service is killed
    # the restart: the claimed bucket is not run again, its job is
    now = B + 2 * S
    second = Alerts(cfg, store_factory())
    second.start()
    if second.store.name == "redis":  # the dead instance's lease runs out first
        assert second.recover(now) == 0
        now += LEASE
    assert second.recover(now) == 1
    assert second.boundary(now) == [] and second.throttle.stats.skipped_duplicate == 1
    (again,) = second.dispatcher.ready(now)
    assert again == job and again.inputs["pm.a"].close == 0.55
    status, published = run(second, again, now)
    assert status == "done"
    assert [(a.strategy, a.symbol, a.bucket_ns) for a in published] == [("cross", "pm.a", B)]
    # the first worker's answer to the same job, late: dropped
    assert run(second, job, now)[0] == "late"
    assert second.dispatcher.stats.recovered == 1
    # another restart: nothing pending any more
    third = Alerts(cfg, store_factory())
    third.start()
    assert third.recover(now + 2 * LEASE) == 0 and third.store.pending_jobs() == 0


def test_a_result_handled_before_the_kill_is_not_run_again(store_factory: Any) -> None:
    cfg = config(CROSS)
    first = Alerts(cfg, store_factory())
    first.start()
    first.recover(B - M)
    first.on_message(Price(symbol="pm.a", price=0.45), B - 30 * S)
    first.on_message(Price(symbol="pm.a", price=0.55), B - 20 * S)
    first.boundary(B)
    (job,) = first.dispatcher.ready(B)
    assert [a.bucket_ns for a in run(first, job, B + S)[1]] == [B]
    second = Alerts(cfg, store_factory())
    second.start()
    assert second.recover(B + 2 * LEASE) == 0


def test_failed_jobs_are_not_recovered(store_factory: Any) -> None:
    cfg = convert({"job_timeout": "1s", "strategies": [CROSS]}, AlertsConfig, "alerts")
    first = Alerts(cfg, store_factory())
    first.start()
    first.recover(B - M)
    first.on_message(Price(symbol="pm.a", price=0.55), B - 20 * S)
    first.boundary(B)
    first.dispatcher.ready(B)
    assert [s for s, _ in first.expire(B + S)] == ["retry"]
    first.dispatcher.ready(B + S)
    assert [s for s, _ in first.expire(B + 2 * S)] == ["failed"]
    assert first.store.pending_jobs() == 0


def test_pending_jobs_of_strategies_no_longer_configured_are_dropped(store_factory: Any) -> None:
    first = Alerts(config(CROSS), store_factory())
    first.start()
    first.recover(B - M)
    first.on_message(Price(symbol="pm.a", price=0.55), B - 20 * S)
    first.boundary(B)
    other = dict(CROSS, id="other")
    second = Alerts(config(other), store_factory())
    second.start()
    if second.store.name == "redis":
        second.recover(B)
    assert second.recover(B + LEASE) == 0
    assert second.store.pending_jobs() == 0 and not second.dispatcher.queue


def test_jobs_of_one_bucket_keep_their_own_flow_window(store_factory: Any) -> None:
    flow = {"kind": "order_flow", "bucket": "1m", "universe": ["pm.*"],
            "params": {"metric": "delta", "op": ">", "value": 0}}  # fmt: skip
    core = Alerts(config(dict(flow, id="short", flow_window="10s"), dict(flow, id="long")), store_factory())
    core.start()
    core.on_message(Price(symbol="pm.a", price=0.5), B - 30 * S)
    core.on_message(Trade(asset="a", price=0.5, size=3.0, side="buy", event_ns=B - 30 * S), B - 30 * S)
    core.on_message(Trade(asset="a", price=0.5, size=2.0, side="buy", event_ns=B - 5 * S), B - 5 * S)
    jobs = {d.strategy: d.job for d in core.boundary(B)}
    windows = {}
    for s, j in jobs.items():
        assert j is not None
        f = j.inputs["pm.a"].flow
        assert f is not None
        windows[s] = (f.window_s, f.buy_volume)
    assert windows == {"short": (10.0, 2.0), "long": (60.0, 5.0)}
    assert jobs["short"].inputs["pm.a"].close == 0.5  # type: ignore[union-attr]


def test_the_jobs_of_one_bucket_share_each_tickers_input_of_one_bucket_size(store_factory: Any) -> None:
    cross = {"kind": "price_cross", "universe": ["pm.*"], "params": {"level": 0.5}}
    core = Alerts(
        config(
            dict(cross, id="a", bucket="1m"),
            dict(cross, id="b", bucket="1m"),
            dict(cross, id="c", bucket="5m"),
        ),
        store_factory(),
    )
    core.start()
    end = (B // (5 * M) + 1) * 5 * M  # a boundary of both bucket sizes
    core.on_message(Price(symbol="pm.a", price=0.4), end - 30 * S)
    core.on_message(Price(symbol="pm.a", price=0.6), end - 20 * S)
    jobs = {d.strategy: d.job for d in core.boundary(end)}
    a, b, c = jobs["a"], jobs["b"], jobs["c"]
    assert a is not None and b is not None and c is not None
    assert a.inputs["pm.a"] is b.inputs["pm.a"]  # made once, for both jobs of the 1 m bucket
    assert a.inputs is not b.inputs  # each job's own mapping (a flow window replaces its values)
    assert c.inputs["pm.a"] is not a.inputs["pm.a"]  # the 5 m bar is another
    assert (
        (a.inputs["pm.a"].open, a.inputs["pm.a"].close)
        == (0.4, 0.6)
        == (c.inputs["pm.a"].open, c.inputs["pm.a"].close)
    )


def test_a_batch_of_results_is_one_commit_on_sqlite(store_factory: Any) -> None:
    store = store_factory()
    store.claim(B, ["s1", "s2"], Planner())
    state = AlertState(fired=1, last_bucket_ns=B)
    with pytest.raises(RuntimeError), store.transaction():  # a batch of results, then a crash
        store.finish_job(a_job("s1").job_id, {("s1", "pm.a"): state})
        raise RuntimeError("killed before the commit")
    store2, jobs = restart_and_adopt(store_factory, B + S)
    if store.name == "sqlite":  # one commit per batch: nothing of it happened
        assert [j.strategy for j in jobs] == ["s1", "s2"]
        assert store2.get_alert_states([("s1", "pm.a")]) == {}
    else:  # each finish is atomic on its own
        assert [j.strategy for j in jobs] == ["s2"]
        assert store2.get_alert_states([("s1", "pm.a")]) == {("s1", "pm.a"): state}
