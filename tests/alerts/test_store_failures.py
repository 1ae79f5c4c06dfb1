"""The stores when writes fail: SQLite full or locked by another process (real SQLite errors),
Redis calls that raise. The service keeps running and nothing is lost once writes succeed again."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from services.alerts.core import Alerts
from services.alerts.frequency import AlertState
from services.alerts.store_redis import RedisStore
from services.alerts.store_sqlite import SqliteStore
from shared.messages import AlertFired, JobResult, Price
from tests.alerts.test_jobs import CROSS, Planner, a_job, config

S = 1_000_000_000
M = 60 * S
B = 1_700_000_000 * S // M * M
STATE = AlertState(fired=1, last_bucket_ns=B)


def full(st: SqliteStore) -> Callable[[], None]:
    """The database may not grow by a page: every write that needs one fails (SQLITE_FULL)."""
    db = st._db
    (pages,) = db.execute("PRAGMA page_count").fetchone()
    db.execute(f"PRAGMA max_page_count = {pages}")

    def room() -> None:
        db.execute("PRAGMA max_page_count = 1073741823")

    return room


def locked(st: SqliteStore) -> Callable[[], None]:
    """Another process's connection holds the write lock (SQLITE_BUSY)."""
    other = sqlite3.connect(st.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")

    def release() -> None:
        other.execute("COMMIT")
        other.close()

    return release


def writes(st: SqliteStore) -> None:
    """A bit of everything the service writes."""
    st.record_updates({f"pm.{i:040d}": B + i for i in range(3000)})  # more than the pages there are
    st.set_universe("s1", [f"pm.{i}" for i in range(100)])
    st.add_to_universe("s2", ["pm.x", "pm.y"])
    st.claim(B, ["s1", "s2", "s3"], Planner())
    with st.transaction():
        st.finish_job(a_job("s1").job_id, {("s1", "pm.a"): STATE})
    st.put_alert_states({("s2", "pm.b"): STATE})
    st.cleanup(B + 10)


def snapshot(path: Path) -> dict[str, Any]:
    st = SqliteStore(str(path))
    try:
        return {
            "tickers": sorted((t, st.last_update(t)) for t in st.tickers()),
            "universes": {s: st.get_universe(s) for s in ("s1", "s2")},
            "states": st.get_alert_states([("s1", "pm.a"), ("s2", "pm.b")]),
            "pending": sorted(j.job_id for j in st.adopt_jobs(B)),
            "claimed_again": st.claim(B, ["s1", "s2", "s3"]),
        }
    finally:
        st.close()


@pytest.mark.parametrize("fault", [full, locked])
def test_sqlite_keeps_failed_writes_and_loses_nothing(tmp_path: Path, fault: Any) -> None:
    ref = SqliteStore(str(tmp_path / "ref.sqlite3"))
    writes(ref)
    ref.close()
    expected = snapshot(tmp_path / "ref.sqlite3")
    assert expected["pending"] and expected["states"] and expected["claimed_again"] == {}

    st = SqliteStore(str(tmp_path / "a.sqlite3"))
    st.record_updates({"pm.warm": 1})
    end = fault(st)
    writes(st)  # none of it raises
    assert st.write_failures > 0 and st.pending_writes() > 0
    assert st.get_alert_states([("s1", "pm.a")]) == {("s1", "pm.a"): STATE}  # memory is the truth meanwhile
    assert not st.retry_writes()
    end()
    assert st.retry_writes() and st.pending_writes() == 0
    st.close()
    got = snapshot(tmp_path / "a.sqlite3")
    got["tickers"] = [t for t in got["tickers"] if t[0] != "pm.warm"]
    assert got == expected


class FlakyRedis:
    """A real Redis client whose calls raise ConnectionError while ``down``."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr) or name == "register_script":
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if self.down:
                raise redis.ConnectionError("Redis is down (test)")
            return attr(*args, **kw)

        return call

    def register_script(self, script: str) -> Any:
        inner = self.client.register_script(script)

        def run(*args: Any, **kw: Any) -> Any:
            if self.down:
                raise redis.ConnectionError("Redis is down (test)")
            return inner(*args, **kw)

        return run

    def pipeline(self, *args: Any, **kw: Any) -> Any:
        if self.down:
            raise redis.ConnectionError("Redis is down (test)")
        return self.client.pipeline(*args, **kw)


def test_redis_outage_is_survived_and_retried(redis_url: str) -> None:
    flaky = FlakyRedis(redis.Redis.from_url(redis_url, decode_responses=True))
    store = RedisStore(redis_url, prefix=f"t{uuid.uuid4().hex[:8]}:", client=flaky)
    core = Alerts(config(CROSS), store)
    core.start()
    core.recover(B - M)
    core.on_message(Price(symbol="pm.a", price=0.4), B - 30 * S)
    core.on_message(Price(symbol="pm.a", price=0.6), B - 10 * S)
    flaky.down = True
    with pytest.raises(redis.ConnectionError):
        core.boundary(B)  # the shell counts it (loop_errors) and calls again
    assert not core.dispatcher.queue
    flaky.down = False
    (due,) = core.boundary(B + 1)  # the same bucket, evaluated again, with the updates kept
    assert due.bucket_ns == B and due.tickers == {"pm.a"}
    (j,) = core.dispatcher.ready(B + 1)
    alert = AlertFired(strategy="cross", symbol="pm.a", message="up", bucket_ns=B)
    flaky.down = True
    res = JobResult(job_id=j.job_id, strategy="cross", worker="w", ok=True, alerts=[alert])
    assert core.on_result(res, B + S)[0] == "deferred"
    assert core.retry_deferred(B + 2 * S) == [] and len(core.deferred) == 1  # still down: kept
    flaky.down = False
    out = core.retry_deferred(B + 3 * S)
    assert [a.message for a in out] == ["up"] and core.deferred == []
    assert store.pending_jobs() == 0 and core.dispatcher.stats.done == 1
    store.close()


def test_results_of_a_failed_store_are_not_lost_to_a_late_retry(tmp_path: Path) -> None:
    # SQLite never raises on writes: a result is handled at once, its states kept for the retry
    st = SqliteStore(str(tmp_path / "a.sqlite3"))
    core = Alerts(config(CROSS), st)
    core.start()
    core.on_message(Price(symbol="pm.a", price=0.4), B - 30 * S)
    core.on_message(Price(symbol="pm.a", price=0.6), B - 10 * S)
    release = locked(st)
    core.boundary(B)
    (j,) = core.dispatcher.ready(B)
    alert = AlertFired(strategy="cross", symbol="pm.a", message="up", bucket_ns=B)
    res = JobResult(job_id=j.job_id, strategy="cross", worker="w", ok=True, alerts=[alert])
    status, out, _ = core.on_result(res, B + S)
    assert status == "done" and len(out) == 1 and st.pending_writes() > 0
    release()
    assert st.retry_writes()
    st.close()
    again = SqliteStore(str(tmp_path / "a.sqlite3"))
    assert again.adopt_jobs(B) == [] and again.get_alert_states([("cross", "pm.a")])
    again.close()
