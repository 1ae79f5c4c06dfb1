"""The ventilator's bookkeeping: queue, jobs in flight, deadlines, one retry, then failure.

Pure: the service pushes what :meth:`Dispatcher.ready` returns and feeds back results and time.
A job that times out (crashed or hung worker) or fails is retried once with ``attempt`` 2; if that
also fails it is counted as failed. A result for a job no longer in flight (the first attempt
answering after its retry went out, or a job answered twice) is dropped and counted as late.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

from shared.messages import JobResult, StrategyJob

Status = Literal["done", "retry", "failed", "late"]


@dataclass(slots=True)
class DispatchStats:
    submitted: int = 0
    sent: int = 0
    done: int = 0
    retried: int = 0
    failed: int = 0
    timeouts: int = 0
    errors: int = 0  # results with ok=False
    late: int = 0
    recovered: int = 0  # of submitted: pending jobs of a previous run (or a dead instance) again


@dataclass(slots=True)
class InFlight:
    job: StrategyJob
    sent_ns: int
    deadline_ns: int
    first_sent_ns: int


class Dispatcher:
    def __init__(self, timeout_ns: int, *, max_attempts: int = 2, max_in_flight: int = 1000) -> None:
        self.timeout_ns = timeout_ns
        self.max_attempts = max_attempts
        self.max_in_flight = max_in_flight
        self.stats = DispatchStats()
        self.queue: deque[tuple[StrategyJob, int | None]] = deque()  # (job, first sent ns)
        self.in_flight: dict[str, InFlight] = {}

    def submit(self, job: StrategyJob, *, recovered: bool = False) -> None:
        self.stats.submitted += 1
        if recovered:
            self.stats.recovered += 1
        self.queue.append((job, None))

    def ready(self, now_ns: int) -> list[StrategyJob]:
        """Jobs to push now (they are in flight from here on)."""
        out = []
        while self.queue and len(self.in_flight) < self.max_in_flight:
            job, first = self.queue.popleft()
            self.in_flight[job.job_id] = InFlight(
                job, now_ns, now_ns + self.timeout_ns, now_ns if first is None else first
            )
            out.append(job)
        self.stats.sent += len(out)
        return out

    def unsend(self, job: StrategyJob) -> None:
        """The push did not go out (no room): back to the front of the queue."""
        entry = self.in_flight.pop(job.job_id, None)
        self.stats.sent -= 1
        self.queue.appendleft((job, entry.first_sent_ns if entry else None))

    def _retry_or_fail(self, entry: InFlight) -> Status:
        job = entry.job
        if job.attempt >= self.max_attempts:
            self.stats.failed += 1
            return "failed"
        job.attempt += 1
        self.stats.retried += 1
        self.queue.appendleft((job, entry.first_sent_ns))
        return "retry"

    def complete(self, result: JobResult, now_ns: int) -> tuple[Status, StrategyJob | None, int]:
        """A result arrived: (status, its job, latency ns from the first send)."""
        entry = self.in_flight.pop(result.job_id, None)
        if entry is None:
            self.stats.late += 1
            return "late", None, 0
        latency = now_ns - entry.first_sent_ns
        if result.ok:
            self.stats.done += 1
            return "done", entry.job, latency
        self.stats.errors += 1
        return self._retry_or_fail(entry), entry.job, latency

    def expire(self, now_ns: int) -> list[tuple[Status, StrategyJob]]:
        """Jobs past their deadline: retried once, then failed."""
        out: list[tuple[Status, StrategyJob]] = []
        expired = [e for e in self.in_flight.values() if e.deadline_ns <= now_ns]
        for entry in expired:
            del self.in_flight[entry.job.job_id]
            self.stats.timeouts += 1
            out.append((self._retry_or_fail(entry), entry.job))
        return out

    def next_deadline(self) -> int | None:
        return min((e.deadline_ns for e in self.in_flight.values()), default=None)
