"""Starts a service: config, logging to stderr, uvloop, Prometheus port, clean stop on signals.

A service is ``async def main(ctx: ServiceContext) -> None`` that runs until ``ctx.stopping`` is
set, then stops reading, flushes, checkpoints and closes its sockets before returning. The runner
gives it ``SHUTDOWN_GRACE_S`` (10 s) minus a margin, then cancels it.

Exit codes: 0 clean stop, 1 the service failed or did not stop in time, 2 bad config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import uvloop
from prometheus_client import CollectorRegistry

from shared import security
from shared.clock import Clock, RealClock
from shared.config import CONFIG_ENV, CommonConfig, ConfigError, load_section
from shared.constants import SHUTDOWN_GRACE_S
from shared.metrics import StatsCollector, new_registry, serve
from shared.sockets import context

C = TypeVar("C")

STOP_MARGIN_S = 1.0


@dataclass
class ServiceContext(Generic[C]):
    name: str
    common: CommonConfig
    config: C
    clock: Clock
    metrics: CollectorRegistry
    bus_stats: StatsCollector
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("poolwire"))


ServiceMain = Callable[[ServiceContext[C]], Coroutine[Any, Any, None]]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )


async def supervise(ctx: ServiceContext[C], main: ServiceMain[C], grace: float) -> int:
    """Run ``main`` until it returns or a signal asks it to stop; returns the exit code."""
    loop = asyncio.get_running_loop()
    signals_seen: list[str] = []

    def on_signal(sig: signal.Signals) -> None:
        if not ctx.stopping.is_set():
            ctx.log.info("%s: stopping", sig.name)
        signals_seen.append(sig.name)
        ctx.stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    task = loop.create_task(main(ctx), name=f"service:{ctx.name}")
    stop_wait = loop.create_task(ctx.stopping.wait())
    done, _ = await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
    if task not in done:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(task), grace)
        except TimeoutError:
            ctx.log.error("did not stop within %.1f s: cancelling", grace)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return 1
        except Exception:
            pass
        ctx.log.info("stopped in %.2f s", time.monotonic() - t0)
    stop_wait.cancel()
    if task.cancelled():
        return 1
    exc = task.exception()
    if exc is not None:
        ctx.log.error("failed: %r", exc, exc_info=exc)
        return 1
    if not signals_seen:
        ctx.log.info("finished")
    return 0


def run(
    name: str,
    section_type: type[C],
    main: ServiceMain[C],
    argv: Sequence[str] | None = None,
    *,
    clock: Clock | None = None,
) -> int:
    """Parse ``--config``, validate it, set up logging and metrics, run ``main`` on uvloop."""
    parser = argparse.ArgumentParser(prog=f"python -m services.{name}")
    parser.add_argument("--config", help="YAML config file (default: $POOLWIRE_CONFIG)")
    args = parser.parse_args(argv)
    try:
        common, config = load_section(name, section_type, args.config)
    except ConfigError as exc:
        setup_logging()
        logging.getLogger(f"poolwire.{name}").error("bad config: %s", exc)
        print(f"poolwire {name}: bad config: {exc}", file=sys.stderr)
        return 2
    if args.config:  # processes the service starts (alerts' workers) read the same file
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    setup_logging(common.log_level)
    log = logging.getLogger(f"poolwire.{name}")
    registry = new_registry()
    bus_stats = StatsCollector()
    registry.register(bus_stats)
    port = int(getattr(config, "metrics_port", 0))
    host = str(getattr(config, "metrics_host", "127.0.0.1"))
    try:
        serve(registry, port, host)
    except OSError as exc:
        log.error("cannot serve metrics on %s:%d: %s", host, port, exc)
        return 1
    if port:
        log.info("metrics on http://%s:%d/metrics", host, port)

    async def _amain() -> int:
        try:
            security.enable(common.curve, context())
        except (OSError, ValueError) as exc:
            log.error("bad config: common.curve: %s", exc)
            return 2
        ctx: ServiceContext[C] = ServiceContext(
            name=name,
            common=common,
            config=config,
            clock=clock or RealClock(),
            metrics=registry,
            bus_stats=bus_stats,
            log=log,
        )
        try:
            return await supervise(ctx, main, SHUTDOWN_GRACE_S - STOP_MARGIN_S)
        finally:
            security.enable(None, context())

    return uvloop.run(_amain())
