"""What a job's result does in the alerts core: frequency states written, the job finished, the
alerts to publish; a result the store failed on kept and handled again; refusals counted.

:class:`Results` is a part of :class:`~services.alerts.core.Alerts` (its base): the attributes
below are the core's, set in its ``__init__``.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from services.alerts.dispatch import Dispatcher, Status
from services.alerts.sink import AlertSink
from services.alerts.store import ThrottleStore
from services.alerts.strategies import refusal_reason
from services.alerts.throttle import Throttle
from shared.messages import AlertFired, JobResult, StrategyJob
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.alerts")

MAX_DEFERRED = 10_000  # results kept while the store fails; beyond, their jobs time out and retry


class Results:
    store: ThrottleStore
    throttle: Throttle
    dispatcher: Dispatcher
    sink: AlertSink
    ratelog: RateLimitedLog
    universe_sizes: dict[str, int]
    deferred: list[JobResult]  # results the store failed on, handled again later
    store_errors: int  # store calls that raised while handling a result
    worker_refusals: Counter[str]  # jobs workers refused, by reason

    def on_result(self, result: JobResult, now_ns: int) -> tuple[Status, list[Any], int]:
        """A job's result: the alerts to publish now (states persisted, job finished in the store).

        Only a result for a job in flight or queued, of that job's strategy, is taken (see
        :meth:`Dispatcher.check`); an alert in it of another strategy is dropped. Both are counted
        in ``dispatcher.refused`` and logged rate-limited. If the store fails while the result is
        handled, the job is in flight again and the result kept in ``deferred``, handled again by
        :meth:`retry_deferred`.
        """
        if not result.job_id and refusal_reason(result.error) is not None:
            self._worker_refusal(result)  # a worker's report of a job it could not even read
            return "refused", [], 0
        status, job, latency = self.dispatcher.complete(result, now_ns)
        if status == "refused":
            self.ratelog(
                "refused result",
                "refused a result from %s for job %r (strategy %r): %s",
                result.worker[:64],
                result.job_id[:64],
                result.strategy[:64],
                self.dispatcher.check(result),
            )
            self._worker_refusal(result)
            return status, [], latency
        if status != "done" or job is None:
            if status == "failed" and job is not None:
                log.warning("job %s (%s) failed twice: %s", result.job_id, result.strategy, result.error)
                self.store.finish_job(job.job_id, {})
            if status in ("retry", "failed"):
                self._worker_refusal(result)
            return status, [], latency
        alerts = [a for a in result.alerts if a.strategy == job.strategy]
        if len(alerts) < len(result.alerts):
            n = len(result.alerts) - len(alerts)
            self.dispatcher.refused["alert_strategy"] += n
            self.ratelog(
                "refused alert", "dropped %d alert(s) of another strategy in a result of %s", n, job.strategy
            )
        try:
            if result.used_symbols and self.throttle.discover(job.strategy, result.used_symbols):
                self.universe_sizes[job.strategy] = len(set(result.used_symbols))
            return status, self.sink.accept(job, alerts, now_ns), latency
        except Exception as exc:
            self.dispatcher.restore(job, now_ns, latency)
            if len(self.deferred) < MAX_DEFERRED:
                self.deferred.append(result)
            self.store_errors += 1
            self.ratelog(
                "store error", "result of job %s kept to handle again: store failed: %r", job.job_id, exc
            )
            return "deferred", [], latency

    def retry_deferred(self, now_ns: int) -> list[AlertFired]:
        """Handle again the results the store failed on; the alerts to publish."""
        pending, self.deferred = self.deferred, []
        out: list[AlertFired] = []
        for i, result in enumerate(pending):
            status, fired, _ = self.on_result(result, now_ns)
            out += fired
            if status == "deferred":  # still failing: the rest waits too, in order
                self.deferred += pending[i + 1 :]
                break
        return out

    def _worker_refusal(self, result: JobResult) -> None:
        reason = refusal_reason(result.error) if not result.ok else None
        if reason is not None:
            self.worker_refusals[reason] += 1
            self.ratelog(
                f"worker refusal {reason}", "worker %s refused a job: %s", result.worker[:64], result.error
            )

    def expire(self, now_ns: int) -> list[tuple[Status, StrategyJob]]:
        """Jobs past their deadline: retried once, then failed (and finished in the store)."""
        out = self.dispatcher.expire(now_ns)
        for status, job in out:
            if status == "failed":
                self.store.finish_job(job.job_id, {})
        return out
