"""The ventilator and sink against faults: a socket that takes only some jobs, forged and stray
results, attempt numbers in the logs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from services.alerts.core import Alerts
from services.alerts.dispatch import Dispatcher
from services.alerts.store_sqlite import SqliteStore
from shared.messages import AlertFired, JobResult, Price, StrategyJob
from tests.alerts.test_jobs import CROSS, config

S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M


def job(i: int, strategy: str = "s") -> StrategyJob:
    return StrategyJob(job_id=f"j{i}", strategy=strategy, kind="price_cross", bucket_ns=0, tickers=[])


def result(job_id: str, strategy: str = "s", ok: bool = True, **kw: object) -> JobResult:
    return JobResult(job_id=job_id, strategy=strategy, worker="w", ok=ok, **kw)  # type: ignore[arg-type]


def test_a_failed_send_keeps_every_unsent_job_queued_in_order() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    for i in range(5):
        d.submit(job(i))
    sent: list[str] = []

    def two_then_full(j: StrategyJob) -> bool:  # the socket takes two jobs, then has no room
        if len(sent) == 2:
            return False
        sent.append(j.job_id)
        return True

    assert d.send_ready(0, two_then_full) == 2
    assert sorted(d.in_flight) == ["j0", "j1"]
    assert [j.job_id for j, _, _ in d.queue] == ["j2", "j3", "j4"]
    assert d.stats.sent == 2
    # room again: the rest go out in order, and none of them waits out a timeout first
    assert [j.job_id for j in d.ready(1)] == ["j2", "j3", "j4"]
    assert d.expire(10 * S - 1) == [] and len(d.in_flight) == 5


def test_a_timeout_names_the_attempt_that_timed_out() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job(0))
    d.ready(0)
    ((status, timed_out),) = d.expire(10 * S)
    assert (status, timed_out.attempt) == ("retry", 1)  # what the log line prints
    (again,) = d.ready(11 * S)
    assert again.attempt == 2  # the retry goes out as attempt 2
    ((status, timed_out),) = d.expire(21 * S)
    assert (status, timed_out.attempt) == ("failed", 2)


def test_only_a_result_for_a_job_in_flight_of_its_strategy_is_taken() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job(0))
    d.ready(0)
    assert d.complete(result("nope"), 1)[0] == "refused"
    assert d.complete(result("j0", strategy="other"), 1)[0] == "refused"
    assert "j0" in d.in_flight  # a forged answer leaves the real one its job
    assert d.refused == {"unknown_job": 1, "strategy_mismatch": 1}
    assert d.complete(result("j0"), 2)[0] == "done"
    assert d.complete(result("j0"), 3)[0] == "late"  # answered twice: late, not a stranger
    assert d.stats.late == 1 and d.refused["unknown_job"] == 1


def test_a_recovered_job_answered_before_it_went_out_is_done_and_not_sent() -> None:
    # the restart queued the killed run's job; that run's worker answers it before a worker joins
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job(0), recovered=True)
    d.submit(job(1), recovered=True)
    assert d.complete(result("j0", strategy="other"), 1)[0] == "refused"  # a forged answer still is
    assert [j.job_id for j, _, _ in d.queue] == ["j0", "j1"]
    status, answered, _ = d.complete(result("j0"), 2)
    assert (status, answered.job_id if answered else None) == ("done", "j0")
    assert [j.job_id for j in d.ready(3)] == ["j1"]  # j0 is not evaluated again
    assert d.complete(result("j0"), 4)[0] == "late"  # the re-run's answer, had it gone out
    assert (d.stats.done, d.stats.late, d.refused) == (1, 1, {"strategy_mismatch": 1})


def test_a_timed_out_attempt_answering_before_its_retry_left_answers_the_job() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job(0))
    d.ready(0)
    d.expire(10 * S)  # the retry waits in the queue (no room, or no worker yet)
    assert d.complete(result("j0"), 11 * S)[0] == "done"
    assert not d.queue and not d.in_flight and d.ready(12 * S) == []


@pytest.fixture
def core(tmp_path: Path) -> Alerts:
    core = Alerts(config(CROSS), SqliteStore(str(tmp_path / "a.sqlite3")))
    core.start()
    return core


def due_job(core: Alerts) -> StrategyJob:
    core.on_message(Price(symbol="pm.a", price=0.4), B - 30 * S)
    core.on_message(Price(symbol="pm.a", price=0.6), B - 10 * S)
    core.boundary(B)
    (j,) = core.dispatcher.ready(B)
    return j


def test_the_core_publishes_no_forged_alert(core: Alerts, caplog: pytest.LogCaptureFixture) -> None:
    j = due_job(core)
    forged = AlertFired(strategy="cross", symbol="pm.a", message="forged", bucket_ns=B)
    other = AlertFired(strategy="elsewhere", symbol="pm.a", message="another strategy's topic", bucket_ns=B)
    with caplog.at_level(logging.WARNING):
        for _ in range(30):  # a flood of strangers: counted each, logged rate-limited
            assert core.on_result(result("made-up", "cross", alerts=[forged]), B + S)[0] == "refused"
    assert core.dispatcher.refused["unknown_job"] == 30
    assert sum("refused a result" in r.getMessage() for r in caplog.records) == 10
    assert core.on_result(result(j.job_id, "elsewhere", alerts=[forged]), B + S)[0] == "refused"
    real = AlertFired(strategy="cross", symbol="pm.a", message="real", bucket_ns=B)
    status, out, _ = core.on_result(result(j.job_id, "cross", alerts=[real, other]), B + S)
    assert status == "done" and [a.message for a in out] == ["real"]
    assert (
        core.dispatcher.refused["alert_strategy"] == 1 and core.dispatcher.refused["strategy_mismatch"] == 1
    )


def test_worker_refusals_are_counted_by_reason(core: Alerts) -> None:
    j = due_job(core)
    error = "refused:function_mismatch: strategy cross runs a built-in, the job names 'os:system'"
    assert core.on_result(result(j.job_id, "cross", ok=False, error=error), B + S)[0] == "retry"
    assert core.on_result(result("", "", ok=False, error="refused:undecodable_job: 1"), B + S)[0] == "refused"
    assert core.worker_refusals == {"function_mismatch": 1, "undecodable_job": 1}
