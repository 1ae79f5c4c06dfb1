"""What happens to a job's result: frequency control against persisted state. Pure (plus the store).

A job's result is handled in one store transaction: the alert states it changed are written and
the pending job is forgotten together. A crash before that commit re-runs the job after the
restart (nothing of it was persisted); after it, the job is gone and its alerts were decided once.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.alerts.frequency import AlertState, Policy, decide, resolve
from services.alerts.store import ThrottleStore
from shared.messages import AlertFired, StrategyJob


@dataclass(slots=True)
class SinkStats:
    published: int = 0
    suppressed: int = 0
    resolved: int = 0


class AlertSink:
    def __init__(self, store: ThrottleStore, policies: dict[str, Policy]) -> None:
        self.store = store
        self.policies = policies
        self.stats = SinkStats()

    def accept(self, job: StrategyJob, alerts: list[AlertFired], now_ns: int) -> list[AlertFired]:
        """The alerts to publish; their new states are persisted, and the job finished in the store
        (no longer pending), in one transaction before this returns."""
        return self.accept_evaluation(job.strategy, job.bucket_ns, job.tickers, alerts, now_ns, job.job_id)

    def accept_evaluation(
        self,
        strategy: str,
        bucket_ns: int,
        tickers: list[str],
        alerts: list[AlertFired],
        now_ns: int,
        job_id: str = "",
    ) -> list[AlertFired]:
        """One evaluation (``bucket_ns`` identifies it) of ``strategy`` over ``tickers``.

        With ``every`` and a repeat interval, the evaluated tickers that did not fire are resolved.
        Event-triggered strategies pass no tickers: each crossing or zone event is an occurrence,
        so a repeat interval is a plain rate limit per symbol. With ``job_id`` (a bucketed job),
        that pending job is finished in the same transaction as the states.
        """
        policy = self.policies.get(strategy, Policy())
        fired = {a.symbol for a in alerts}
        track_resolved = policy.frequency == "every" and policy.repeat_interval_ns > 0
        keys = [(strategy, s) for s in fired]
        if track_resolved:
            keys += [(strategy, t) for t in tickers if t not in fired]
        states: dict[tuple[str, str], AlertState] = self.store.get_alert_states(keys) if keys else {}
        changed: dict[tuple[str, str], AlertState] = {}
        out: list[AlertFired] = []
        for alert in alerts:
            key = (strategy, alert.symbol)
            ok, new = decide(policy, states.get(key), bucket_ns, now_ns)
            if new is not states.get(key):
                states[key] = changed[key] = new
            if ok:
                alert.bucket_ns = bucket_ns
                out.append(alert)
            else:
                self.stats.suppressed += 1
        if track_resolved:
            for t in tickers:
                if t in fired:
                    continue
                new_state = resolve(states.get((strategy, t)))
                if new_state is not None:
                    changed[(strategy, t)] = new_state
                    self.stats.resolved += 1
        if job_id:
            self.store.finish_job(job_id, changed)
        else:
            self.store.put_alert_states(changed)
        self.stats.published += len(out)
        return out
