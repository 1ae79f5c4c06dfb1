"""The ventilator's bookkeeping: queue, jobs in flight, deadlines, one retry, then failure.

Pure: the service gives :meth:`Dispatcher.send_ready` its send function and feeds back results
and time. A job leaves the queue only when its send succeeded, so a full socket (no worker
connected yet, all busy) leaves every unsent job queued, in order. A job that times out (crashed
or hung worker) or fails is retried once with ``attempt`` 2; if that also fails it is counted as
failed. ``job.attempt`` is the attempt last sent until the retry goes out, so a log line about a
timeout names the attempt that timed out.

Results are checked against what is in flight or queued: a result for a queued job answers it (a
recovered job the killed run's worker finished, a timed-out attempt answering before its retry
left): it is taken from the queue and handled. One for a job that recently left flight (the first
attempt answering after its retry went out, a job answered twice) is *late*; one for a job
never sent here, or naming another strategy than its job's, is *refused* (``refused`` counts by
reason) and changes nothing. "Recently" is at most ``RECENT_TIMEOUTS`` job timeouts and at most
``RECENT_IDS`` jobs: a result later than that is refused as ``unknown_job`` (it changes nothing
either way). Without the time bound the ids piled up at the rate jobs finish (~100 B each: about
0.4 MB an hour at one job a second, for the 28 hours 100 000 of them took to fill).
"""

from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from shared.messages import JobResult, StrategyJob

Status = Literal["done", "retry", "failed", "late", "refused", "deferred"]
# ids of jobs that left flight, remembered to tell a late result from a stranger: at most this
# many, for at most this many job timeouts
RECENT_IDS = 100_000
RECENT_TIMEOUTS = 10


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
        # (job, first sent ns, the attempt it goes out as)
        self.queue: deque[tuple[StrategyJob, int | None, int]] = deque()
        self.in_flight: dict[str, InFlight] = {}
        self.refused: Counter[str] = Counter()  # results refused, by reason
        self.recent_ns = timeout_ns * RECENT_TIMEOUTS
        self.recent: OrderedDict[str, int] = OrderedDict()  # job id -> when it left flight, oldest first

    def submit(self, job: StrategyJob, *, recovered: bool = False) -> None:
        self.stats.submitted += 1
        if recovered:
            self.stats.recovered += 1
        self.queue.append((job, None, job.attempt))

    def send_ready(self, now_ns: int, send: Callable[[StrategyJob], bool]) -> int:
        """Send queued jobs while there is room in flight and ``send`` succeeds; returns how many
        went out (in flight from here on). The job ``send`` refused, and all after it, stay queued."""
        n = 0
        queue = self.queue
        while queue and len(self.in_flight) < self.max_in_flight:
            job, first, attempt = queue[0]
            job.attempt = attempt
            if not send(job):
                break
            queue.popleft()
            self.in_flight[job.job_id] = InFlight(
                job, now_ns, now_ns + self.timeout_ns, now_ns if first is None else first
            )
            n += 1
        self.stats.sent += n
        return n

    def ready(self, now_ns: int) -> list[StrategyJob]:
        """Every job there is room for, taken as sent."""
        out: list[StrategyJob] = []

        def take(job: StrategyJob) -> bool:
            out.append(job)
            return True

        self.send_ready(now_ns, take)
        return out

    def _leave(self, job_id: str, now_ns: int) -> InFlight | None:
        entry = self.in_flight.pop(job_id, None)
        if entry is not None:
            recent = self.recent
            recent[job_id] = now_ns
            recent.move_to_end(job_id)
            self._forget(now_ns)
        return entry

    def _forget(self, now_ns: int) -> None:
        """Drop the ids that left flight more than ``recent_ns`` ago, or beyond ``RECENT_IDS``."""
        recent = self.recent
        cutoff = now_ns - self.recent_ns
        while recent and (len(recent) > RECENT_IDS or next(iter(recent.values())) < cutoff):
            recent.popitem(last=False)

    def _retry_or_fail(self, entry: InFlight) -> Status:
        job = entry.job
        if job.attempt >= self.max_attempts:
            self.stats.failed += 1
            return "failed"
        self.stats.retried += 1
        self.queue.appendleft((job, entry.first_sent_ns, job.attempt + 1))
        return "retry"

    def check(self, result: JobResult) -> str | None:
        """Why this result is refused (None: it answers a job in flight or queued, or is late)."""
        entry = self.in_flight.get(result.job_id)
        if entry is not None:
            job: StrategyJob | None = entry.job
        else:
            i = self._queued(result.job_id)
            job = None if i is None else self.queue[i][0]
        if job is None:
            return None if result.job_id in self.recent else "unknown_job"
        if result.strategy != job.strategy:
            return "strategy_mismatch"
        return None

    def _queued(self, job_id: str) -> int | None:
        """Where ``job_id`` waits in the queue (None: it does not)."""
        for i, (job, _, _) in enumerate(self.queue):
            if job.job_id == job_id:
                return i
        return None

    def _take_queued(self, job_id: str, now_ns: int) -> InFlight | None:
        """A queued job answered before it went out: a recovered job that the killed run's worker
        finished, or a timed-out attempt answering before its retry left. It is answered: taken
        from the queue, not sent again."""
        i = self._queued(job_id)
        if i is None:
            return None
        job, first, _ = self.queue[i]
        del self.queue[i]
        self.recent[job_id] = now_ns
        self.recent.move_to_end(job_id)
        return InFlight(job, now_ns, now_ns + self.timeout_ns, now_ns if first is None else first)

    def complete(self, result: JobResult, now_ns: int) -> tuple[Status, StrategyJob | None, int]:
        """A result arrived: (status, its job, latency ns from the first send)."""
        reason = self.check(result)
        if reason is not None:
            self.refused[reason] += 1
            return "refused", None, 0
        entry = self._leave(result.job_id, now_ns)
        if entry is None and self.queue:
            entry = self._take_queued(result.job_id, now_ns)
        if entry is None:
            self.stats.late += 1
            return "late", None, 0
        latency = now_ns - entry.first_sent_ns
        if result.ok:
            self.stats.done += 1
            return "done", entry.job, latency
        self.stats.errors += 1
        return self._retry_or_fail(entry), entry.job, latency

    def restore(self, job: StrategyJob, now_ns: int, latency_ns: int) -> None:
        """A done result that could not be handled (store down): the job is in flight again, so the
        same result, handled again later, completes it."""
        self.stats.done -= 1
        self.in_flight[job.job_id] = InFlight(job, now_ns, now_ns + self.timeout_ns, now_ns - latency_ns)
        self.recent.pop(job.job_id, None)

    def expire(self, now_ns: int) -> list[tuple[Status, StrategyJob]]:
        """Jobs past their deadline: retried once, then failed. ``job.attempt`` is the one that timed out."""
        out: list[tuple[Status, StrategyJob]] = []
        self._forget(now_ns)
        expired = [e for e in self.in_flight.values() if e.deadline_ns <= now_ns]
        for entry in expired:
            self._leave(entry.job.job_id, now_ns)
            self.stats.timeouts += 1
            out.append((self._retry_or_fail(entry), entry.job))
        return out

    def next_deadline(self) -> int | None:
        return min((e.deadline_ns for e in self.in_flight.values()), default=None)
