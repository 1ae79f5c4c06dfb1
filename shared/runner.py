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

from shared import inproc, security
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


@dataclass(frozen=True)
class Service(Generic[C]):
    """A service the runner can start: its config section's name and type, and its main."""

    name: str
    section_type: type[C]
    main: ServiceMain[C]


async def supervise(ctx: ServiceContext[C], main: ServiceMain[C], grace: float) -> int:
    """Run ``main`` until it returns or a signal asks it to stop; returns the exit code."""
    return await supervise_all([(ctx, main)], grace)


async def supervise_all(
    services: Sequence[tuple[ServiceContext[Any], ServiceMain[Any]]], grace: float
) -> int:
    """Run each ``main`` until a signal asks them to stop or one of them ends; returns the exit code.

    Services in one process share its fate: one that ends (finished or failed) stops the others,
    so the process exits and whatever runs it (honcho, a container) sees it.
    """
    loop = asyncio.get_running_loop()
    signals_seen: list[str] = []
    stop = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            for ctx, _ in services:
                ctx.log.info("%s: stopping", sig.name)
        signals_seen.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    tasks = {loop.create_task(main(ctx), name=f"service:{ctx.name}"): ctx for ctx, main in services}
    stop_wait = loop.create_task(stop.wait())
    waits: set[asyncio.Task[Any]] = {*tasks, stop_wait}
    done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    ended = [ctx.name for t, ctx in tasks.items() if t in done]
    running = [t for t in tasks if t not in done]
    if ended and running:
        for t in running:
            tasks[t].log.warning("stopping: %s ended, and it shares this process", ", ".join(ended))
    t0 = time.monotonic()
    for ctx in tasks.values():
        ctx.stopping.set()
    if running:
        finished, late = await asyncio.wait(running, timeout=grace)
        for t in late:
            tasks[t].log.error("did not stop within %.1f s: cancelling", grace)
            t.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for t in finished:
            tasks[t].log.info("stopped in %.2f s", time.monotonic() - t0)
    stop_wait.cancel()
    code = 0
    for t, ctx in tasks.items():
        if t.cancelled():
            code = 1
            continue
        exc = t.exception()
        if exc is not None:
            ctx.log.error("failed: %r", exc, exc_info=exc)
            code = 1
        elif not signals_seen and ctx.name in ended:
            ctx.log.info("finished")
    return code


def run(
    name: str,
    section_type: type[C],
    main: ServiceMain[C],
    argv: Sequence[str] | None = None,
    *,
    clock: Clock | None = None,
) -> int:
    """Parse ``--config``, validate it, set up logging and metrics, run ``main`` on uvloop."""
    return run_services(
        [Service(name, section_type, main)], argv, clock=clock, prog=f"python -m services.{name}"
    )


@dataclass
class _Prepared:
    service: Service[Any]
    config: Any
    metrics: CollectorRegistry
    bus_stats: StatsCollector
    log: logging.Logger


def run_services(
    services: Sequence[Service[Any]],
    argv: Sequence[str] | None = None,
    *,
    clock: Clock | None = None,
    prog: str = "python -m services",
) -> int:
    """:func:`run` for one or more services in this process, on one event loop.

    Each reads its own config section and serves its own metrics port; the publishers of several
    are also bound in-process (shared.inproc), so that they read each other without the kernel.
    """
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--config", help="YAML config file (default: $POOLWIRE_CONFIG)")
    args = parser.parse_args(argv)
    loaded: list[tuple[Service[Any], Any]] = []
    common = CommonConfig()
    for service in services:
        try:  # one file: every section reads the same common section
            common, config = load_section(service.name, service.section_type, args.config)
        except ConfigError as exc:
            setup_logging()
            logging.getLogger(f"poolwire.{service.name}").error("bad config: %s", exc)
            print(f"poolwire {service.name}: bad config: {exc}", file=sys.stderr)
            return 2
        loaded.append((service, config))
    if args.config:  # processes the service starts (alerts' workers) read the same file
        os.environ[CONFIG_ENV] = os.path.abspath(args.config)
    setup_logging(common.log_level)
    prepared: list[_Prepared] = []
    for service, config in loaded:
        log = logging.getLogger(f"poolwire.{service.name}")
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
        prepared.append(_Prepared(service, config, registry, bus_stats, log))
    if len(services) > 1:
        pubs = [str(p.config.pub) for p in prepared if hasattr(p.config, "pub")]
        inproc.share(pubs)
        logging.getLogger("poolwire").info(
            "%s in one process; publishers also in-process: %s",
            ", ".join(s.name for s in services),
            ", ".join(pubs),
        )

    async def _amain() -> int:
        try:
            security.enable(common.curve, context())
        except (OSError, ValueError) as exc:
            prepared[0].log.error("bad config: common.curve: %s", exc)
            return 2
        contexts = [
            (
                ServiceContext(
                    name=p.service.name,
                    common=common,
                    config=p.config,
                    clock=clock or RealClock(),
                    metrics=p.metrics,
                    bus_stats=p.bus_stats,
                    log=p.log,
                ),
                p.service.main,
            )
            for p in prepared
        ]
        try:
            return await supervise_all(contexts, SHUTDOWN_GRACE_S - STOP_MARGIN_S)
        finally:
            security.enable(None, context())

    return uvloop.run(_amain())
