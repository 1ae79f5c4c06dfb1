"""CurveZMQ with authorized clients: a local peer with its own, unauthorized key pair can neither
take alerts' jobs nor deliver a forged result (alerts publishes nothing of it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import yaml
import zmq
import zmq.asyncio
import zmq.auth

from shared import security
from shared.bus import Publisher, Subscriber, context
from shared.messages import ENCODER, AlertFired, JobResult, Price, StrategyJob
from shared.security import CurveConfig, create_keys
from shared.wire import decode_payload
from tests.alerts.test_service import FN, write_config
from tests.helpers import spawn
from tests.ports import tcp_endpoint

pytestmark = pytest.mark.slow


@pytest.fixture
async def keys(tmp_path: Path) -> AsyncIterator[dict[str, str]]:
    create_keys(str(tmp_path / "keys"))
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    (authorized / "client.key").write_text((tmp_path / "keys" / "client.key").read_text())
    curve = {
        "server_secret": str(tmp_path / "keys" / "server.key_secret"),
        "server_public": str(tmp_path / "keys" / "server.key"),
        "client_secret": str(tmp_path / "keys" / "client.key_secret"),
        "authorized_clients": str(authorized),
    }
    security.enable(CurveConfig(**curve), context())  # this test's own sockets: the authorized side
    yield curve
    security.enable(None, context())


def rogue_socket(kind: int, endpoint: str, keys_dir: Path) -> zmq.asyncio.Socket:
    """A valid CURVE client with its own key pair, which the server never authorized."""
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    public, secret = zmq.auth.load_certificate(zmq.auth.create_certificates(keys_dir, "rogue")[1])
    sock.curve_secretkey, sock.curve_publickey = secret, public
    sock.curve_serverkey = zmq.auth.load_certificate(keys_dir / "server.key")[0]
    sock.connect(endpoint)
    return sock


def authorized_socket(kind: int, endpoint: str) -> zmq.asyncio.Socket:
    sock = context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    security.connect(sock, endpoint)
    return sock


async def test_an_unauthorized_peer_takes_no_job_and_forges_no_alert(
    tmp_path: Path, keys: dict[str, str]
) -> None:
    source = tcp_endpoint()
    strategies = [
        {"id": "echo", "kind": "python", "function": f"{FN}:fire_all", "bucket": "1s", "universe": ["pm.a"]}
    ]
    path, cfg = write_config(tmp_path, source, strategies, workers=0, job_timeout="60s")
    doc = yaml.safe_load(path.read_text())
    doc["common"]["curve"] = keys
    path.write_text(yaml.safe_dump(doc))
    keys_dir = Path(keys["server_public"]).parent
    async with Publisher(source, service="ingest", heartbeat_interval=0.2) as pub:
        with spawn("-m", "services.alerts", "--config", str(path)) as proc:
            rogue_jobs = rogue_socket(zmq.PULL, cfg["jobs"], keys_dir)
            rogue_results = rogue_socket(zmq.PUSH, cfg["results"], keys_dir)
            jobs = authorized_socket(zmq.PULL, cfg["jobs"])
            results = authorized_socket(zmq.PUSH, cfg["results"])
            try:
                async with Subscriber(cfg["pub"], ["alert."]) as sub:
                    await sub.wait_for_publisher("alerts", timeout=20)
                    taken: list[StrategyJob] = []
                    loop = asyncio.get_running_loop()
                    deadline = loop.time() + 30
                    price = 0.5
                    while len(taken) < 3:  # jobs go round-robin to every connected peer
                        assert loop.time() < deadline, f"only {len(taken)} job(s) out"
                        price += 0.001
                        pub.publish("px.pm.a", Price(symbol="pm.a", price=price))
                        if await jobs.poll(100):
                            msgs, _ = decode_payload(await jobs.recv())
                            taken += [m for m in msgs if isinstance(m, StrategyJob)]
                    assert not await rogue_jobs.poll(300)  # the rogue got none of them

                    def result(job: StrategyJob, message: str) -> bytes:
                        alert = AlertFired(
                            strategy="echo", symbol="pm.a", message=message, bucket_ns=job.bucket_ns
                        )
                        return ENCODER.encode(
                            JobResult(job_id=job.job_id, strategy="echo", worker="w", ok=True, alerts=[alert])
                        )

                    for job in taken:  # even knowing every job id, the rogue's answers go nowhere
                        # while its handshake is refused it may hold no pipe to send on: it cannot even
                        # queue (Again), or what it queued dies with the refused connection
                        with contextlib.suppress(zmq.Again):
                            await rogue_results.send(result(job, "forged"), zmq.NOBLOCK)
                    await results.send(result(taken[-1], "real"))
                    got: list[str] = []
                    while "real" not in got:
                        assert loop.time() < deadline, got
                        got += [
                            m.message for _, m in await sub.recv_batch(timeout=1) if isinstance(m, AlertFired)
                        ]
                    assert "forged" not in got
            finally:
                for s in (rogue_jobs, rogue_results, jobs, results):
                    s.close()
            proc.terminate()
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 0, err
