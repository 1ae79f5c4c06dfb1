"""``poolwire`` as a user runs it: a real CLI process against real service processes."""

import asyncio
import json
import sys
from pathlib import Path

from shared.bus import Puller, Subscriber
from shared.messages import ForceSubscribe
from tests.helpers import ROOT, python_env, spawn, tcp_endpoint

CLI = [sys.executable, "-m", "shared.cli"]


async def run_cli(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        env=python_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_tap_prints_a_running_services_heartbeats_as_json() -> None:
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__HEARTBEAT": "100ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        code, out, err = await run_cli("tap", "--connect", endpoint, "--json", "--count", "2", "beacon.")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert {line["type"] for line in lines} == {"Heartbeat"}
    assert lines[0]["topic"] == "beacon.health"
    assert lines[0]["service"] == "beacon"
    assert lines[1]["seq"] > lines[0]["seq"]


async def test_tap_text_output_and_timeout() -> None:
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__EVERY": "20ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        code, out, _ = await run_cli("tap", "--connect", endpoint, "--count", "3", "px.")
    assert code == 0
    assert all(line.startswith("px.test Price ") for line in out.splitlines())
    code, out, _ = await run_cli("tap", "--connect", tcp_endpoint(), "--timeout", "0.3", "px.")
    assert (code, out) == (3, "")


async def test_push_delivers_one_message_to_a_pull_socket() -> None:
    endpoint = tcp_endpoint()
    with Puller(endpoint) as puller:
        code, _, err = await run_cli("push", endpoint, '{"type": "ForceSubscribe", "asset_ids": ["123"]}')
        got = await asyncio.wait_for(puller.recv_batch(), 10)
    assert code == 0, err
    assert len(got) == 1 and isinstance(got[0], ForceSubscribe)
    assert got[0].asset_ids == ["123"]
    assert got[0].publisher == "poolwire-cli"


async def test_push_rejects_an_invalid_message() -> None:
    code, _, err = await run_cli("push", tcp_endpoint(), '{"type": "ForceSubscribe"}')
    assert code == 2
    assert "asset_ids" in err


def test_config_check(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("common: {data_dir: /tmp/poolwire}\n")
    bad.write_text("common: {heartbeat_interval: 3 parsecs}\n")
    code, out, _ = asyncio.run(run_cli("config", "check", str(good)))
    assert (code, out.strip()) == (0, f"{good}: ok")
    code, _, err = asyncio.run(run_cli("config", "check", str(bad)))
    assert code == 2
    assert "common.heartbeat_interval" in err


def test_subscriber_is_a_three_line_consumer() -> None:
    assert Subscriber.__aiter__ is not None
