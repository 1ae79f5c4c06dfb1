"""Workers in-process (run_one) and the dispatcher's retry rules."""

from __future__ import annotations

import signal

import pytest

from services.alerts.dispatch import Dispatcher
from services.alerts.strategies import StrategyTable
from services.alerts.worker import _on_alarm, run_one
from shared.messages import JobResult, StrategyJob

S = 1_000_000_000


def job(function: str, tickers: list[str] | None = None, **kw: object) -> StrategyJob:
    return StrategyJob(
        job_id="j1",
        strategy="s",
        kind="python",
        function=f"tests.alerts.user_strategies:{function}",
        bucket_ns=60 * S,
        tickers=tickers or ["pm.a", "pm.b"],
        **kw,  # type: ignore[arg-type]
    )


def table(function: str) -> StrategyTable:
    return StrategyTable([("s", "python", f"tests.alerts.user_strategies:{function}")])


def run(function: str, timeout_ms: int = 0) -> JobResult:
    return run_one(job(function, timeout_ms=timeout_ms), table(function), "w", 5.0)


@pytest.fixture
def alarm() -> object:
    old = signal.signal(signal.SIGALRM, _on_alarm)
    yield
    signal.signal(signal.SIGALRM, old)


def test_run_one_reports_alerts_and_used_symbols(alarm: object) -> None:
    r = run("fire_all")
    assert r.ok and [a.symbol for a in r.alerts] == ["pm.a", "pm.b"]
    assert all(a.bucket_ns == 60 * S and a.strategy == "s" for a in r.alerts)
    r = run("discover_first")
    assert r.ok and r.used_symbols == ["pm.a"]


def test_run_one_turns_errors_and_hangs_into_failed_results(alarm: object) -> None:
    r = run("boom")
    assert not r.ok and "RuntimeError: strategy bug" in r.error
    r = run("hang", timeout_ms=100)
    assert not r.ok and "JobTimeout" in r.error
    r = run("nope")  # configured, but the module has no such function: refused, the worker lives on
    assert not r.ok and r.error.startswith("refused:unloadable:") and "AttributeError" in r.error
    weird = StrategyJob(job_id="x", strategy="s", kind="weird", bucket_ns=0, tickers=[])
    r = run_one(weird, table("fire_all"), "w", 5.0)
    assert not r.ok and r.error.startswith("refused:kind_mismatch:")


def result(ok: bool = True) -> JobResult:
    return JobResult(job_id="j1", strategy="s", worker="w", ok=ok)


def test_dispatcher_retries_once_then_fails() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job("fire_all"))
    assert [j.attempt for j in d.ready(0)] == [1]
    assert d.expire(5 * S) == []
    assert [s for s, _ in d.expire(10 * S)] == ["retry"]
    (again,) = d.ready(11 * S)
    assert again.attempt == 2
    assert [s for s, _ in d.expire(21 * S)] == ["failed"]
    assert (d.stats.retried, d.stats.failed, d.stats.timeouts) == (1, 1, 2)
    assert d.complete(result(), 22 * S)[0] == "late"  # a result after it failed is dropped


def test_dispatcher_error_result_retries_and_latency_counts_from_first_send() -> None:
    d = Dispatcher(timeout_ns=10 * S)
    d.submit(job("boom"))
    d.ready(0)
    assert d.complete(result(ok=False), 1 * S)[0] == "retry"
    d.ready(2 * S)
    status, j, latency = d.complete(result(ok=True), 3 * S)
    assert status == "done" and j is not None and latency == 3 * S
    assert d.complete(result(), 4 * S)[0] == "late"


def test_dispatcher_bounds_in_flight() -> None:
    d = Dispatcher(timeout_ns=S, max_in_flight=2)
    for i in range(5):
        d.submit(StrategyJob(job_id=f"j{i}", strategy="s", kind="k", bucket_ns=0, tickers=[]))
    assert len(d.ready(0)) == 2 and len(d.queue) == 3
    d.complete(JobResult(job_id="j0", strategy="s", worker="w", ok=True), 1)
    assert [j.job_id for j in d.ready(1)] == ["j2"]
