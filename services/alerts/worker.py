"""Alert workers: PULL strategy jobs from the ventilator, run them, PUSH results to the sink.

    python -m services.alerts.worker [--config FILE] [--jobs EP] [--results EP]   # alerts.workers of them
    python -m services.alerts.worker --name NAME [--config FILE] [...]            # this one worker

Without ``--name`` the process runs ``alerts.workers`` worker processes and keeps them running
(one that exits is started again, counted and logged) until SIGTERM/SIGINT, then stops them all
and exits 0: a Procfile line (with ``alerts.spawn_workers: false``) that one crash cannot end.
With ``--name`` (a worker's id in its results) it is one worker: what the supervisors start, and
what a container runs (deploy/compose.yaml). Endpoints default to the ``alerts`` section of the
config (the service binds both; workers connect, so any number can join).

A worker runs only the strategies of the config it reads (the ``alerts`` section, the same file as
the service's): each strategy's function is resolved by its id when the worker starts, and a job
naming another strategy, kind or function is refused with a failed result (``refused:<reason>``),
counted and logged rate-limited; nothing a job names is ever imported.

A strategy that raises is reported as a failed result. One that runs past the job's time limit is
interrupted (SIGALRM raises inside it) and reported as timed out; one stuck where Python cannot
interrupt it (in C code) is ended by a watchdog after twice the limit: the process exits, the
service retries the job elsewhere and its supervisor starts a new worker.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections import Counter
from types import FrameType

import zmq

from services.alerts.strategies import REFUSED_PREFIX, Refused, StrategyTable, execute, refusal_reason
from services.alerts.supervisor import WorkerPool, serve_pool_metrics
from shared.clock import RealClock
from shared.config import ConfigError, load_section
from shared.messages import ENCODER, AlertFired, JobResult, StrategyJob
from shared.ratelog import RateLimitedLog
from shared.security import Curve
from shared.wire import decode_payload

log = logging.getLogger("poolwire.alerts.worker")

# Jobs carry every changed ticker's bar, zone events and order flow: a bucket over a large universe
# is megabytes. The bound only stops a peer from making a worker allocate without limit, so it is
# generous: 64 MiB, or common.max_message_size if that is larger.
JOBS_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_ALERT_MESSAGE = 4096  # AlertFired.message's bound on the wire: longer would make the result unreadable
MAX_SYMBOL = 128


class JobTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise JobTimeout("strategy ran past its time limit")


def refusal(job_id: str, strategy: str, worker: str, reason: str, detail: str) -> JobResult:
    """The failed result of a job this worker will not run (job_id "" when it could not be read)."""
    return JobResult(
        job_id=job_id[:MAX_SYMBOL],
        strategy=strategy[:MAX_SYMBOL],
        worker=worker,
        ok=False,
        error=f"{REFUSED_PREFIX}{reason}: {detail}"[:500],
    )


def run_one(job: StrategyJob, table: StrategyTable, worker: str, default_timeout_s: float) -> JobResult:
    """Execute a job under its time limit; never raises (errors become a failed result).

    Only a strategy of ``table`` runs, with the function resolved from the config at start; a job
    naming anything else is refused (see :meth:`StrategyTable.resolve`) before any code runs.
    """
    try:
        fn = table.resolve(job)
    except Refused as exc:
        return refusal(job.job_id, job.strategy, worker, exc.reason, str(exc))
    limit = job.timeout_ms / 1000 if job.timeout_ms > 0 else default_timeout_s
    t0 = time.perf_counter_ns()
    faulthandler.dump_traceback_later(limit * 2 + 1, exit=True)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        outcome = execute(job, fn)
        alerts = []
        for s in outcome.signals:
            symbol = str(s.symbol)
            if not symbol or len(symbol) > MAX_SYMBOL:
                raise ValueError(f"signal symbol must be 1-{MAX_SYMBOL} chars, got {len(symbol)}")
            alerts.append(
                AlertFired(
                    strategy=job.strategy,
                    symbol=symbol,
                    message=str(s.message)[:MAX_ALERT_MESSAGE],
                    value=float(s.value),
                    bucket_ns=job.bucket_ns,
                    event_ns=job.bucket_ns,
                )
            )
        used = [str(u) for u in outcome.used_symbols]
        if any(len(u) > MAX_SYMBOL for u in used):
            raise ValueError(f"used_symbols must be at most {MAX_SYMBOL} chars each")
        signal.setitimer(signal.ITIMER_REAL, 0)
        return JobResult(
            job_id=job.job_id,
            strategy=job.strategy,
            worker=worker,
            ok=True,
            alerts=alerts,
            used_symbols=used,
            duration_ns=time.perf_counter_ns() - t0,
        )
    except BaseException as exc:  # the strategy's failure is the job's, never the worker's
        signal.setitimer(signal.ITIMER_REAL, 0)
        if isinstance(exc, KeyboardInterrupt):
            raise
        error = f"{type(exc).__name__}: {exc}"
        log.warning("job %s (%s) failed: %s", job.job_id, job.strategy, error)
        log.debug("%s", traceback.format_exc())
        return JobResult(
            job_id=job.job_id,
            strategy=job.strategy,
            worker=worker,
            ok=False,
            error=error[:500],
            duration_ns=time.perf_counter_ns() - t0,
        )
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        faulthandler.cancel_dump_traceback_later()


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM when the process that started us dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class JobHandler:
    """A worker's core: one jobs frame in, the results to send back out. Never raises.

    Every job it does not run is counted by reason (``refused``) and logged rate-limited; a frame
    that does not decode, or a message that is not a job, is answered with a refusal report
    (job_id ""), which the service counts (its sink accepts no result for it).
    """

    def __init__(self, table: StrategyTable, name: str, default_timeout_s: float) -> None:
        self.table = table
        self.name = name
        self.default_timeout_s = default_timeout_s
        self.done = 0
        self.reconnects = 0  # the jobs connection dropped and made again
        self.refused: Counter[str] = Counter()
        self.ratelog = RateLimitedLog(log)

    def handle(self, payload: bytes) -> list[JobResult]:
        msgs, n_bad = decode_payload(payload)
        out: list[JobResult] = []
        if n_bad:
            self._refuse("undecodable_job", f"{n_bad} undecodable job message(s)")
            out.append(refusal("", "", self.name, "undecodable_job", f"{n_bad} message(s)"))
        for msg in msgs:
            if not isinstance(msg, StrategyJob):
                kind = type(msg).__name__
                self._refuse("not_a_job", f"a {kind} on the jobs socket")
                out.append(refusal("", "", self.name, "not_a_job", kind))
                continue
            result = run_one(msg, self.table, self.name, self.default_timeout_s)
            reason = None if result.ok else refusal_reason(result.error)
            if reason is not None:
                self._refuse(reason, f"job {msg.job_id[:128]!r} refused: {result.error}")
            self.done += 1
            out.append(result)
        return out

    def _refuse(self, reason: str, message: str) -> None:
        self.refused[reason] += 1
        self.ratelog(reason, "worker %s: %s", self.name, message)


def serve(
    jobs: str,
    results: str,
    handler: JobHandler,
    parent: int = 0,
    curve: Curve | None = None,
    max_message_size: int = JOBS_MAX_MESSAGE_SIZE,
) -> int:
    """Work until SIGTERM/SIGINT (or, with ``parent``, until that process is gone)."""
    stopping = False
    name = handler.name
    if parent:
        _die_with_parent()

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGALRM, _on_alarm)
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 4)  # hold few jobs: a slow strategy delays few others
    pull.setsockopt(zmq.LINGER, 0)
    pull.setsockopt(zmq.MAXMSGSIZE, max_message_size)  # a larger frame drops the sender's connection unread
    if curve is not None:
        curve.client(pull)
    pull.connect(jobs)
    # A frame over the bound makes ZeroMQ drop the connection and, on this connecting side, not
    # reconnect: the worker would idle forever. So every drop is answered with a new connection.
    monitor = pull.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    if curve is not None:
        curve.client(push)
    push.connect(results)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    poller.register(monitor, zmq.POLLIN)
    log.info(
        "worker %s: jobs from %s, results to %s; strategies: %s",
        name,
        jobs,
        results,
        ", ".join(sorted(handler.table.kinds)) or "none configured (every job is refused)",
    )
    for sid, why in handler.table.unloadable.items():
        log.error("worker %s: strategy %s cannot run (its jobs are refused): %s", name, sid, why)
    try:
        while not stopping:
            if parent and os.getppid() != parent:
                log.warning("worker %s: parent %d is gone, stopping", name, parent)
                break
            handler.ratelog.flush()
            ready = dict(poller.poll(200))
            if monitor in ready:
                while monitor.poll(0):
                    monitor.recv_multipart()
                handler.reconnects += 1
                handler.ratelog(
                    "jobs connection dropped",
                    "worker %s: jobs connection dropped (a frame over %d bytes, or the service went away): reconnecting",
                    name,
                    max_message_size,
                )
                pull.disconnect(jobs)
                pull.connect(jobs)
            if pull not in ready:
                continue
            while not stopping:
                try:
                    payload = pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for result in handler.handle(payload):
                    push.send(ENCODER.encode(result))
    finally:
        refused = ", ".join(f"{r} {n}" for r, n in sorted(handler.refused.items())) or "none"
        log.info(
            "worker %s: stopping after %d job(s); refused: %s; jobs connection dropped %d time(s)",
            name,
            handler.done,
            refused,
            handler.reconnects,
        )
        pull.disable_monitor()
        monitor.close()
        pull.close()
        push.close()
        # libzmq resolves tcp://NAME:PORT with a blocking getaddrinfo on its I/O thread: while a
        # stopped peer's name hangs (container DNS), term() would wait for it past SIGTERM's grace.
        # The results' linger (2 s) gets its time, then the worker exits anyway.
        closer = threading.Thread(target=ctx.term, daemon=True)
        closer.start()
        closer.join(3.0)
    return 0


def supervise(
    count: int, jobs: str, results: str, worker_args: list[str], metrics_host: str = "", metrics_port: int = 0
) -> int:
    """Run ``count`` workers, each started again when it exits, until SIGTERM/SIGINT; then stop them.

    With ``metrics_port``, their exits are exported there (worker_failures_total{kind=process_exit}).
    """

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        pool = WorkerPool(count, ["--jobs", jobs, "--results", results, *worker_args], RealClock())
        server = serve_pool_metrics(pool, metrics_host, metrics_port)
        pool.start()
        log.info(
            "running %d alert worker(s), each started again when it exits; jobs from %s, results to %s",
            count,
            jobs,
            results,
        )
        await stopping.wait()
        await pool.stop()
        if server is not None:
            server.shutdown()
        log.info("stopped %d alert worker(s); %d restart(s) in this run", count, pool.restarts)
        return 0

    return asyncio.run(run())


def main(argv: list[str] | None = None) -> int:
    from services.alerts.config import AlertsConfig

    parser = argparse.ArgumentParser(prog="python -m services.alerts.worker")
    parser.add_argument("--config", help="YAML config file (default: $POOLWIRE_CONFIG)")
    parser.add_argument("--jobs", help="ventilator endpoint (default: alerts.jobs)")
    parser.add_argument("--results", help="sink endpoint (default: alerts.results)")
    parser.add_argument(
        "--name", default="", help="run one worker with this name (default: alerts.workers of them)"
    )
    parser.add_argument("--timeout", type=float, help="job time limit in s (default: alerts.job_timeout)")
    parser.add_argument("--parent", type=int, default=0, help="stop when this process (the service) is gone")
    args = parser.parse_args(argv)
    try:
        common, cfg = load_section("alerts", AlertsConfig, args.config)
    except ConfigError as exc:
        print(f"poolwire alerts worker: bad config: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, common.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    jobs, results = args.jobs or cfg.jobs, args.results or cfg.results
    # The service's limit is the backstop; the worker interrupts a little before it.
    timeout = args.timeout if args.timeout is not None else max(cfg.job_timeout * 0.8, 0.05)
    if not args.name and not args.parent:
        if cfg.workers == 0:
            print(
                "poolwire alerts worker: alerts.workers is 0: no workers to run (--name NAME runs one)",
                file=sys.stderr,
            )
            return 2
        config = ["--config", args.config] if args.config else []
        return supervise(
            cfg.workers,
            jobs,
            results,
            [*config, "--timeout", str(timeout)],
            cfg.metrics_host,
            cfg.worker_metrics_port,
        )
    table = StrategyTable((s.id, s.kind, s.function) for s in cfg.strategies if s.trigger == "bucket")
    handler = JobHandler(table, args.name or f"worker-{os.getpid()}", timeout)
    return serve(
        jobs,
        results,
        handler,
        args.parent,
        Curve(common.curve) if common.curve is not None else None,
        max(JOBS_MAX_MESSAGE_SIZE, common.max_message_size),
    )


if __name__ == "__main__":
    raise SystemExit(main())
