"""A real service process under the runner: signals, exit codes, config errors, metrics."""

import asyncio
import logging
import os
import signal
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shared.bus import Subscriber
from shared.clock import RealClock
from shared.config import CommonConfig
from shared.metrics import StatsCollector
from shared.runner import ServiceContext, supervise_all
from tests.helpers import spawn
from tests.ports import free_port, tcp_endpoint


def beacon_env(endpoint: str, **settings: object) -> dict[str, str]:
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__HEARTBEAT": "100ms"}
    env.update({f"POOLWIRE_BEACON__{k.upper()}": str(v) for k, v in settings.items()})
    return env


async def wait_until_up(endpoint: str) -> None:
    with Subscriber(endpoint, ["beacon."], health_services=["beacon"]) as sub:
        await sub.wait_for_publisher("beacon", timeout=20)


async def stop_with(sig: signal.Signals, **settings: object) -> tuple[int, float, str]:
    endpoint = tcp_endpoint()
    with spawn("-m", "tests.shared.beacon", env=beacon_env(endpoint, **settings)) as proc:
        await wait_until_up(endpoint)
        t0 = time.monotonic()
        proc.send_signal(sig)
        code = await asyncio.to_thread(proc.wait, 15)
        elapsed = time.monotonic() - t0
        _, err = proc.communicate()
    return code, elapsed, err


async def test_sigterm_stops_within_ten_seconds_with_exit_0() -> None:
    code, elapsed, err = await stop_with(signal.SIGTERM, every="10ms", stop_delay="300ms")
    assert code == 0, err
    assert 0.3 <= elapsed < 10
    assert "SIGTERM: stopping" in err
    assert "stopped in" in err


async def test_sigint_stops_cleanly_too() -> None:
    code, _, err = await stop_with(signal.SIGINT)
    assert code == 0, err


async def test_service_that_cannot_stop_is_cancelled_before_ten_seconds() -> None:
    code, elapsed, err = await stop_with(signal.SIGTERM, stop_delay="60s")
    assert code == 1
    assert elapsed < 10
    assert "did not stop within" in err


def test_bad_config_value_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("common:\n  heartbeat_interval: soon\n")
    with spawn("-m", "tests.shared.beacon", "--config", str(config)) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "common.heartbeat_interval" in err
    assert "duration like 30s" in err


def test_bad_env_override_exits_2_naming_the_key() -> None:
    with spawn("-m", "tests.shared.beacon", env={"POOLWIRE_BEACON__METRICS_PORT": "lots"}) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "beacon.metrics_port: Expected `int`, got `str`" in err


def test_unreadable_env_override_exits_2_naming_the_key_without_a_traceback() -> None:
    with spawn("-m", "tests.shared.beacon", env={"POOLWIRE_BEACON__METRICS_PORT": "["}) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "beacon.metrics_port (from $POOLWIRE_BEACON__METRICS_PORT): not a valid YAML value" in err
    assert "Traceback" not in err


async def test_metrics_are_served_on_the_service_port() -> None:
    endpoint, port = tcp_endpoint(), free_port()
    with spawn("-m", "tests.shared.beacon", env=beacon_env(endpoint, metrics_port=port, every="5ms")):
        await wait_until_up(endpoint)
        url = f"http://127.0.0.1:{port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=10).read().decode())
    assert 'poolwire_bus_messages_sent_total{socket="pub"}' in body
    assert 'poolwire_bus_heartbeats_sent_total{socket="pub"}' in body
    assert "process_resident_memory_bytes" in body


def service_context(name: str) -> ServiceContext[None]:
    return ServiceContext(
        name=name,
        common=CommonConfig(),
        config=None,
        clock=RealClock(),
        metrics=CollectorRegistry(),
        bus_stats=StatsCollector(),
        log=logging.getLogger(f"poolwire.{name}"),
    )


async def test_services_in_one_process_share_its_fate(caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []

    async def failing(ctx: ServiceContext[None]) -> None:
        await asyncio.sleep(0)
        raise RuntimeError("boom")

    async def steady(ctx: ServiceContext[None]) -> None:
        await ctx.stopping.wait()
        stopped.append(ctx.name)

    with caplog.at_level(logging.INFO, logger="poolwire"):
        code = await supervise_all([(service_context("a"), failing), (service_context("b"), steady)], grace=5)
    assert code == 1
    assert stopped == ["b"]
    said = [(r.name, r.getMessage()) for r in caplog.records]
    assert ("poolwire.b", "stopping: a ended, and it shares this process") in said
    assert ("poolwire.a", "failed: RuntimeError('boom')") in said


async def test_a_co_hosted_service_that_cannot_stop_is_cancelled_and_the_others_stop_clean() -> None:
    async def finishing(ctx: ServiceContext[None]) -> None:
        await asyncio.sleep(0)

    async def stuck(ctx: ServiceContext[None]) -> None:
        await asyncio.Event().wait()

    code = await supervise_all([(service_context("a"), finishing), (service_context("b"), stuck)], grace=0.2)
    assert code == 1  # b was cancelled


async def test_co_hosted_services_all_stop_on_sigterm_with_exit_0() -> None:
    stopped: list[str] = []

    async def steady(ctx: ServiceContext[None]) -> None:
        await ctx.stopping.wait()
        stopped.append(ctx.name)

    async def send_sigterm() -> None:
        await asyncio.sleep(0)
        os.kill(os.getpid(), signal.SIGTERM)

    asyncio.get_running_loop().create_task(send_sigterm())
    code = await supervise_all([(service_context("a"), steady), (service_context("b"), steady)], grace=5)
    assert code == 0
    assert sorted(stopped) == ["a", "b"]
