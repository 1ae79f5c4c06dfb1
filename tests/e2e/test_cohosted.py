"""``python -m services registry alerts``: two services in one real process, read in-process by each
other and over TCP by everyone else; SIGTERM stops both."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.bus import Publisher, Pusher, Subscriber
from shared.messages import AlertFired, DetectorEvent, Price, ZoneCreated
from tests.helpers import spawn
from tests.ports import free_port, tcp_endpoint

pytestmark = pytest.mark.slow


# An event-triggered strategy: an alert on each zone touch, as the message that made it arrives.
TOUCH = {"id": "touch", "kind": "zone_event", "trigger": "event", "universe": ["pm.*"], "params": {"events": ["touched"]}}  # fmt: skip


def config(tmp: Path, prices: str) -> tuple[Path, dict[str, dict[str, Any]]]:
    registry = {"pub": tcp_endpoint(), "pull": tcp_endpoint(), "snapshot": tcp_endpoint()}
    alerts = {"pub": tcp_endpoint(), "jobs": tcp_endpoint(), "results": tcp_endpoint(), "workers": 0}
    cfg: dict[str, dict[str, Any]] = {
        "common": {"data_dir": str(tmp / "data"), "heartbeat_interval": "200ms"},
        "registry": {**registry, "metrics_port": free_port(), "prices": [prices]},
        "alerts": {
            **alerts,
            "metrics_port": free_port(),
            "sub": [prices, registry["pub"]],
            "strategies": [TOUCH],
        },
    }
    path = tmp / "poolwire.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


async def test_registry_and_alerts_in_one_process(tmp_path: Path) -> None:
    prices_ep = tcp_endpoint()
    path, cfg = config(tmp_path, prices_ep)
    registry, alerts = cfg["registry"], cfg["alerts"]
    prices = Publisher(prices_ep, service="ingest", heartbeat_interval=0.2).start()
    zones = Subscriber(str(registry["pub"]), ["zone."], health_services=["registry"])
    fired = Subscriber(str(alerts["pub"]), ["alert."], health_services=["alerts"])
    with spawn("-m", "services", "registry", "alerts", "--config", str(path)) as proc:
        await zones.wait_for_publisher("registry", timeout=30)
        await fired.wait_for_publisher("alerts", timeout=30)
        await prices.wait_for_subscriber("px.", timeout=30)
        pusher = Pusher(str(registry["pull"]), sender="test")
        zone = DetectorEvent(
            detector="test", symbol="pm.a", timeframe="H1", kind="test", top=0.6, bottom=0.4,
            created_ns=time.time_ns(),
        )  # fmt: skip
        await pusher.send(zone, timeout=10)
        pusher.close()
        while not any(isinstance(m, ZoneCreated) for _, m in await zones.recv_batch(timeout=10)):
            pass
        for price in (0.9, 0.5):  # from above the zone into it: a touch
            prices.publish("px.pm.a", Price(symbol="pm.a", price=price))
            prices.flush()
        got: list[AlertFired] = []
        while not got:
            batch = await fired.recv_batch(timeout=10)
            assert batch, "no alert within 10 s"
            got += [m for _, m in batch if isinstance(m, AlertFired)]
        assert [(a.strategy, a.symbol) for a in got] == [("touch", "pm.a")]
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 15)
        _, err = proc.communicate()
    zones.close()
    fired.close()
    await prices.close()
    assert code == 0, err
    # alerts read registry's publisher through the in-process pipe, and the test's over TCP
    assert f"{registry['pub']}: read in-process" in err
    assert f"{prices_ep}: read in-process" not in err
    assert "poolwire.registry: stopped in" in err
    assert "poolwire.alerts: stopped in" in err
