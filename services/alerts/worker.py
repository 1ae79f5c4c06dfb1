"""Alert workers: PULL strategy jobs from the ventilator, run them, PUSH results to the sink.

    python -m services.alerts.worker [--config FILE] [--jobs EP] [--results EP]   # alerts.workers of them
    python -m services.alerts.worker --name NAME [--config FILE] [...]            # this one worker

Without ``--name`` the process runs ``alerts.workers`` worker processes and keeps them running
(one that exits is started again, counted and logged) until SIGTERM/SIGINT, then stops them all
and exits 0: a Procfile line (with ``alerts.spawn_workers: false``) that one crash cannot end.
With ``--name`` (a worker's id in its results) it is one worker: what the supervisors start, and
what a container runs (deploy/compose.yaml). Endpoints default to the ``alerts`` section of the
config (the service binds both; workers connect, so any number can join).

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
import time
import traceback
from types import FrameType

import zmq

from services.alerts.strategies import execute
from services.alerts.supervisor import WorkerPool
from shared.clock import RealClock
from shared.config import ConfigError, load_section
from shared.messages import ENCODER, AlertFired, JobResult, StrategyJob, decode_payload
from shared.security import Curve

log = logging.getLogger("poolwire.alerts.worker")


class JobTimeout(Exception):
    pass


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise JobTimeout("strategy ran past its time limit")


def run_one(job: StrategyJob, worker: str, default_timeout_s: float) -> JobResult:
    """Execute a job under its time limit; never raises (errors become a failed result)."""
    limit = job.timeout_ms / 1000 if job.timeout_ms > 0 else default_timeout_s
    t0 = time.perf_counter_ns()
    faulthandler.dump_traceback_later(limit * 2 + 1, exit=True)
    signal.setitimer(signal.ITIMER_REAL, limit)
    try:
        outcome = execute(job)
        alerts = [
            AlertFired(
                strategy=job.strategy,
                symbol=s.symbol,
                message=s.message,
                value=float(s.value),
                bucket_ns=job.bucket_ns,
                event_ns=job.bucket_ns,
            )
            for s in outcome.signals
        ]
        signal.setitimer(signal.ITIMER_REAL, 0)
        return JobResult(
            job_id=job.job_id,
            strategy=job.strategy,
            worker=worker,
            ok=True,
            alerts=alerts,
            used_symbols=[str(s) for s in outcome.used_symbols],
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


def serve(
    jobs: str, results: str, name: str, default_timeout_s: float, parent: int = 0, curve: Curve | None = None
) -> int:
    """Work until SIGTERM/SIGINT (or, with ``parent``, until that process is gone)."""
    stopping = False
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
    if curve is not None:
        curve.client(pull)
    pull.connect(jobs)
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 2000)
    if curve is not None:
        curve.client(push)
    push.connect(results)
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    done = bad = 0
    log.info("worker %s: jobs from %s, results to %s", name, jobs, results)
    try:
        while not stopping:
            if parent and os.getppid() != parent:
                log.warning("worker %s: parent %d is gone, stopping", name, parent)
                break
            if not poller.poll(200):
                continue
            while not stopping:
                try:
                    payload = pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                msgs, n_bad = decode_payload(payload)
                bad += n_bad
                if n_bad:
                    log.warning("skipped %d undecodable job message(s)", n_bad)
                for msg in msgs:
                    if not isinstance(msg, StrategyJob):
                        bad += 1
                        log.warning("skipped a %s on the jobs socket", type(msg).__name__)
                        continue
                    result = run_one(msg, name, default_timeout_s)
                    push.send(ENCODER.encode(result))
                    done += 1
    finally:
        log.info("worker %s: stopping after %d job(s), %d bad message(s)", name, done, bad)
        pull.close()
        push.close()
        ctx.term()
    return 0


def supervise(count: int, jobs: str, results: str, worker_args: list[str]) -> int:
    """Run ``count`` workers, each started again when it exits, until SIGTERM/SIGINT; then stop them."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        stopping = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        pool = WorkerPool(count, ["--jobs", jobs, "--results", results, *worker_args], RealClock())
        pool.start()
        log.info(
            "running %d alert worker(s), each started again when it exits; jobs from %s, results to %s",
            count,
            jobs,
            results,
        )
        await stopping.wait()
        await pool.stop()
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
        return supervise(cfg.workers, jobs, results, [*config, "--timeout", str(timeout)])
    return serve(
        jobs,
        results,
        args.name or f"worker-{os.getpid()}",
        timeout,
        args.parent,
        Curve(common.curve) if common.curve is not None else None,
    )


if __name__ == "__main__":
    raise SystemExit(main())
