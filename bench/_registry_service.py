"""The registry service over ZeroMQ, as a real process: prices in, zone events out."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from shared.bus import Publisher, Pusher, Subscriber
from shared.messages import DetectorEvent, Price, ZoneCreated, ZoneTouched
from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
N_PRICES = 200_000
N_ZONES = 1_000


async def _measure(cfg: dict[str, Any]) -> dict[str, float]:
    async with (
        Subscriber(cfg["pub"], ("zone.",)) as sub,
        Publisher(cfg["prices"][0], service="ingest", heartbeat_interval=0.5) as pub,
    ):
        await sub.wait_for_publisher("registry", timeout=30)
        pusher = Pusher(cfg["pull"], sender="bench")
        try:
            for i in range(N_ZONES):
                await pusher.send(
                    DetectorEvent(
                        detector="bench",
                        symbol="pm.x",
                        timeframe="H1",
                        kind="other",
                        top=i + 0.5,
                        bottom=float(i),
                    )
                )
            await pusher.send(
                DetectorEvent(
                    detector="bench", symbol="pm.m", timeframe="H1", kind="other", top=2.0, bottom=1.0
                )
            )
            created = 0
            while created < N_ZONES + 1:
                batch = await sub.recv_batch(timeout=30)
                if not batch:
                    raise TimeoutError("zones not created")
                created += sum(isinstance(m, ZoneCreated) for _, m in batch)
            # Warm up: make sure the service's SUB has joined our PUB.
            for _ in range(100):
                pub.publish("px.pm.m", Price(symbol="pm.m", price=0.5))
                pub.publish("px.pm.m", Price(symbol="pm.m", price=1.5))
                batch = await sub.recv_batch(timeout=0.2)
                if any(isinstance(m, ZoneTouched) for _, m in batch):
                    break
            while await sub.recv_batch(timeout=0.2):
                pass
            # A sawtooth over the zones: about one touch per two prices.
            prices = [((k % (2 * N_ZONES)) * 0.5 + 0.25) for k in range(N_PRICES)]
            t0 = time.perf_counter()
            touches = 0
            for k, p in enumerate(prices):
                pub.publish("px.pm.x", Price(symbol="pm.x", price=p))
                if k % 5000 == 4999:
                    await asyncio.sleep(0)
                    for _, m in sub._drain():
                        touches += isinstance(m, ZoneTouched)
            pub.publish("px.pm.m", Price(symbol="pm.m", price=0.5))
            pub.publish("px.pm.m", Price(symbol="pm.m", price=1.5))
            done = False
            while not done:
                batch = await sub.recv_batch(timeout=60)
                if not batch:
                    raise TimeoutError("marker not seen")
                for _, m in batch:
                    if isinstance(m, ZoneTouched):
                        if m.zone.symbol == "pm.m":
                            done = True
                        else:
                            touches += 1
            elapsed = time.perf_counter() - t0
            return {
                "prices_per_s": N_PRICES / elapsed,
                "events_per_s": touches / elapsed,
                "events": touches,
                "gaps": sub.stats.missed,
            }
        finally:
            pusher.close()


def service_figures() -> dict[str, dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = {
            "pub": f"tcp://127.0.0.1:{free_port()}",
            "pull": f"tcp://127.0.0.1:{free_port()}",
            "snapshot": f"tcp://127.0.0.1:{free_port()}",
            "prices": [f"tcp://127.0.0.1:{free_port()}"],
            "metrics_port": 0,
        }
        path = Path(tmp) / "poolwire.yaml"
        path.write_text(
            yaml.safe_dump({"common": {"data_dir": tmp, "log_level": "WARNING"}, "registry": cfg})
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.registry", "--config", str(path)],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            res = asyncio.run(_measure(cfg))
        finally:
            proc.terminate()
            try:
                proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
    return {
        "registry.service_prices_per_s": {
            "value": res["prices_per_s"],
            "unit": "prices/s",
            "note": f"one symbol, {N_ZONES} zones, detectors on, SQLite store; {res['gaps']:.0f} events lost",
        },
        "registry.service_events_per_s": {
            "value": res["events_per_s"],
            "unit": "events/s",
            "events": res["events"],
        },
    }


if __name__ == "__main__":
    print(service_figures())
