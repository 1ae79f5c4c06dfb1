"""``poolwire`` as a user runs it: a real CLI process against real service processes."""

import asyncio
import json
import sys
from pathlib import Path

from shared.bus import Puller, Subscriber
from shared.messages import ForceSubscribe, Price
from shared.snapshot import SnapshotServer
from tests.helpers import ROOT, python_env, spawn
from tests.ports import tcp_endpoint

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


async def test_tap_prints_a_running_services_heartbeats_as_json_lines() -> None:
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__HEARTBEAT": "100ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        code, out, err = await run_cli("tap", "--connect", endpoint, "--count", "2", "beacon.")
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 2
    assert {line["type"] for line in lines} == {"Heartbeat"}
    assert lines[0]["topic"] == "beacon.health"
    assert lines[0]["service"] == "beacon"
    assert lines[1]["seq"] > lines[0]["seq"]


async def test_tap_pretty_output_and_timeout_saying_what_it_waits_on() -> None:
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__EVERY": "20ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        code, out, _ = await run_cli("tap", "--connect", endpoint, "--pretty", "--count", "3", "px.")
    assert code == 0
    lines = out.splitlines()
    assert len(lines) == 3 and all(line.startswith("px.test Price ") for line in lines)
    nobody = tcp_endpoint()
    code, out, err = await run_cli("tap", "--connect", nobody, "--timeout", "0.3", "px.", "zone.")
    assert (code, out) == (3, "")
    assert err == f"poolwire tap: waiting for px., zone. on {nobody}\n"


async def _closed_pipe(*args: str) -> tuple[int, str]:
    """Run the CLI with its stdout a pipe that the reader closes after the first line (`| head -1`)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        cwd=ROOT,
        env=python_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 20)
    assert first.startswith(b"{")
    proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
    err = await asyncio.wait_for(proc.stderr.read(), 20)
    return await asyncio.wait_for(proc.wait(), 20), err.decode()


async def test_tap_and_snapshot_exit_quietly_on_a_closed_pipe() -> None:
    endpoint = tcp_endpoint()
    env = {"POOLWIRE_BEACON__PUB": endpoint, "POOLWIRE_BEACON__EVERY": "5ms"}
    with spawn("-m", "tests.shared.beacon", env=env):
        code, err = await _closed_pipe("tap", "--connect", endpoint, "px.")
    assert code == 0
    assert err.startswith("poolwire tap: waiting for px.") and "Error" not in err and "Traceback" not in err
    snap_ep = tcp_endpoint()
    state = [Price(symbol=f"pm.{i}", price=0.5) for i in range(5000)]  # more than a pipe's buffer holds
    server = SnapshotServer(snap_ep, lambda req: (7, state), publisher_id="registry@host").start()
    try:
        code, err = await _closed_pipe("snapshot", snap_ep)
    finally:
        await server.close()
    assert (code, err) == (0, "")


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
