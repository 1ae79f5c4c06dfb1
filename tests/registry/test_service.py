"""The registry as a real process over real sockets."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml
import zmq

from shared.bus import Publisher, Pusher, Subscriber, context
from shared.messages import (
    DetectorEvent,
    Message,
    Price,
    Zone,
    ZoneCreated,
    ZoneExpired,
    ZoneSnapshotItem,
    ZoneTouched,
)
from shared.snapshot import request_snapshot
from tests.helpers import spawn
from tests.ports import free_port, tcp_endpoint

S = 1_000_000_000


def write_config(tmp_path: Path, **registry: Any) -> tuple[Path, dict[str, Any]]:
    section: dict[str, Any] = {
        "pub": tcp_endpoint(),
        "pull": tcp_endpoint(),
        "snapshot": tcp_endpoint(),
        "prices": [tcp_endpoint()],
        "metrics_port": free_port(),
        "restore_expire_delay": "1s",
        "pools": {
            "S1": {"ttl": "1h"},
            "H1": {"ttl": "120m", "hit_tolerance": 0.0},
            "H4": {"ttl": "6h"},
            "strength_threshold": 0.1,
            "grace_period_minutes": 5,
            "max_pools_per_tf": 10000,
            "auto_expire_interval": "30s",
        },
        "detectors": {"timeframes": ["S1"], "swing_bars": 2},
    }
    section.update(registry)
    path = tmp_path / "poolwire.yaml"
    doc = {"common": {"data_dir": str(tmp_path / "data"), "heartbeat_interval": 0.2}, "registry": section}
    path.write_text(yaml.safe_dump(doc))
    return path, section


def stop(proc: subprocess.Popen[str]) -> tuple[int, float]:
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=10)
    return rc, time.monotonic() - t0


_unseen: dict[int, list[tuple[str, Message]]] = {}


async def wait_for(
    sub: Subscriber, want: type[Message], timeout: float = 10.0, **match: Any
) -> tuple[str, Any]:
    """The first message of type ``want`` whose zone matches; others are kept for later calls."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    kept = _unseen.setdefault(id(sub), [])
    while True:
        for i, (topic, msg) in enumerate(kept):
            if isinstance(msg, want) and all(getattr(msg.zone, k) == v for k, v in match.items()):  # type: ignore[attr-defined]
                del kept[i]
                return topic, msg
        if loop.time() >= deadline:
            raise TimeoutError(f"no {want.__name__} matching {match} in {timeout} s")
        kept.extend(await sub.recv_batch(timeout=max(0.0, deadline - loop.time())))


async def touch_until_seen(
    pub: Publisher, sub: Subscriber, symbol: str, outside: float, inside: float
) -> Any:
    """Prices go out before the service's SUB may have joined: repeat the move until a touch shows."""
    for _ in range(50):
        pub.publish(f"px.{symbol}", Price(symbol=symbol, price=outside))
        pub.publish(f"px.{symbol}", Price(symbol=symbol, price=inside))
        try:
            return await wait_for(sub, ZoneTouched, timeout=0.2, symbol=symbol)
        except TimeoutError:
            continue
    raise TimeoutError("no touch")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise KeyError(f"{name} {labels}")


async def test_zones_touches_detectors_snapshot_restart(tmp_path: Path) -> None:
    path, cfg = write_config(tmp_path)
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with (
            Subscriber(cfg["pub"], ("zone.",)) as sub,
            Publisher(cfg["prices"][0], service="ingest", heartbeat_interval=0.2) as pub,
        ):
            await sub.wait_for_publisher("registry", timeout=15)
            pusher = Pusher(cfg["pull"], sender="test-detector")
            try:
                now = time.time_ns()
                await pusher.send(
                    DetectorEvent(
                        detector="test",
                        symbol="pm.a",
                        timeframe="H1",
                        kind="custom",
                        top=0.7,
                        bottom=0.6,
                        created_ns=now,
                    )
                )
                await pusher.send(
                    DetectorEvent(
                        detector="test",
                        symbol="pm.a",
                        timeframe="H4",
                        kind="custom",
                        top=0.65,
                        bottom=0.55,
                        created_ns=now,
                    )
                )
                topic, created = await wait_for(sub, ZoneCreated, timeout=10, timeframe="H1")
                assert topic == "zone.created.H1.pm.a"
                _, created4 = await wait_for(sub, ZoneCreated, timeout=10, timeframe="H4")
                assert created4.confluence == [created.zone.id]
                assert created.zone.expires_ns == now + 7200 * S
                topic, touched = await touch_until_seen(pub, sub, "pm.a", 0.5, 0.62)
                assert topic.startswith("zone.touched.") and touched.zone.touches >= 1

                # Detectors: three one-second candles with a bullish gap, stamped 1000 s ago (a
                # replay: not live, the service's clock closes none of them); a tick past the third's
                # end plus the allowed lateness (2 s) closes it.
                base = (now // S - 1000) * S
                for sec, price in [
                    (0, 1.0),
                    (0.5, 1.1),
                    (1, 1.2),
                    (1.5, 1.5),
                    (2, 1.3),
                    (2.5, 1.6),
                    (3, 1.6),
                    (5, 1.6),
                ]:
                    pub.publish("px.pm.b", Price(symbol="pm.b", price=price, event_ns=base + int(sec * S)))
                topic, fvg = await wait_for(sub, ZoneCreated, timeout=10, symbol="pm.b", kind="fvg_bullish")
                assert topic == "zone.created.S1.pm.b"
                assert (fvg.zone.top, fvg.zone.bottom, fvg.zone.created_ns) == (1.3, 1.1, base + 3 * S)

                header, items = await request_snapshot(cfg["snapshot"], "zone.", timeout=5)
                assert header.snapshot_seq >= fvg.seq
                assert {i.zone.id for i in items if isinstance(i, ZoneSnapshotItem)} == {
                    created.zone.id,
                    created4.zone.id,
                    fvg.zone.id,
                }
                # One prefix rule: a zone is under the topic it was last published on (the H4 zone
                # was touched, so it is under zone.touched., no longer zone.created.).
                _, only_h4 = await request_snapshot(cfg["snapshot"], "zone.touched.H4.", timeout=5)
                assert [i.zone.id for i in only_h4] == [created4.zone.id]  # type: ignore[attr-defined]
                _, created_h4 = await request_snapshot(cfg["snapshot"], "zone.created.H4.", timeout=5)
                assert created_h4 == []
            finally:
                pusher.close()
        rc, took = stop(proc)
        assert rc == 0 and took < 10

    # While it was down, the H4 zone's TTL ran out (edit the store as the passing time would).
    db = sqlite3.connect(tmp_path / "data" / "registry.sqlite")
    body = db.execute("SELECT body FROM zones WHERE id = ?", (created4.zone.id,)).fetchone()[0]
    zone = msgspec.msgpack.decode(body, type=Zone)
    zone.expires_ns = time.time_ns() - S
    db.execute("UPDATE zones SET body = ? WHERE id = ?", (msgspec.msgpack.encode(zone), zone.id))
    db.commit()
    db.close()

    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.",)) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            _, expired = await wait_for(sub, ZoneExpired, timeout=10, id=created4.zone.id)
            assert expired.reason == "ttl"
            _, items = await request_snapshot(cfg["snapshot"], timeout=5)
            kept = {i.zone.id: i.zone for i in items}  # type: ignore[attr-defined]
            assert set(kept) == {created.zone.id, fvg.zone.id}
            assert kept[created.zone.id].touches == touched.zone.touches
            assert kept[created.zone.id].state == "touched"
            text = await asyncio.to_thread(scrape, cfg["metrics_port"])
            assert metric(text, "poolwire_registry_zones_expired_total", timeframe="H4", reason="ttl") == 1
            assert metric(text, "poolwire_registry_zones", timeframe="H1", state="touched") == 1
            assert metric(text, "poolwire_registry_zones", timeframe="H4", state="grace") == 1
            held = {
                tf: metric(text, "poolwire_registry_zones_held", timeframe=tf) for tf in ("H1", "H4", "S1")
            }
            assert held == {"H1": 1, "H4": 1, "S1": 1}  # touched; in grace; the FVG
            assert metric(text, "poolwire_registry_size") == 3
        rc, took = stop(proc)
        assert rc == 0 and took < 10


async def test_bad_detector_events_are_counted_and_the_service_keeps_running(tmp_path: Path) -> None:
    path, cfg = write_config(tmp_path, store="")
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.",)) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            raw = context().socket(zmq.PUSH)
            raw.setsockopt(zmq.LINGER, 1000)
            raw.connect(cfg["pull"])
            pusher = Pusher(cfg["pull"], sender="test-detector")
            try:
                await raw.send(b"\xc1 not msgpack")
                await pusher.send(Price(symbol="pm.a", price=1.0))  # a valid message, the wrong type
                bad = dict(detector="t", symbol="pm.a", kind="custom", strength=1.0)
                await pusher.send(DetectorEvent(timeframe="H1", top=0.5, bottom=0.9, **bad))  # type: ignore[arg-type]
                await pusher.send(DetectorEvent(timeframe="M7", top=0.9, bottom=0.5, **bad))  # type: ignore[arg-type]
                await pusher.send(DetectorEvent(timeframe="H1", top=float("nan"), bottom=0.5, **bad))  # type: ignore[arg-type]
                await pusher.send(
                    DetectorEvent(detector="t", symbol="pm.a", timeframe="H1", kind="", top=0.9, bottom=0.5)
                )
                await pusher.send(DetectorEvent(timeframe="H1", top=0.9, bottom=0.5, **bad))  # type: ignore[arg-type]
                topic, _ = await wait_for(sub, ZoneCreated, timeout=10)
                assert topic == "zone.created.H1.pm.a"
            finally:
                pusher.close()
                raw.close()
            text = await asyncio.to_thread(scrape, cfg["metrics_port"])
            # garbage, a NaN top and an empty kind are outside the schema's bounds: decode errors
            assert metric(text, "poolwire_bus_decode_errors_total", socket="pull") == 3
            rejected = "poolwire_registry_detector_events_rejected_total"
            assert metric(text, rejected, reason="wrong_type") == 1
            assert metric(text, rejected, reason="bad_range") == 1
            assert metric(text, rejected, reason="unknown_timeframe") == 1
            assert metric(text, "poolwire_registry_zones_created_total", timeframe="H1") == 1
            assert proc.poll() is None
        rc, _ = stop(proc)
        assert rc == 0


def test_bad_config_stops_with_a_message_naming_the_key(tmp_path: Path) -> None:
    path, _ = write_config(tmp_path, pools={"H1": {"ttl": "soon"}})
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 2
        assert "pools.H1.ttl" in err


@pytest.mark.parametrize("pools", [{"H1": {"ttl": "1h"}, "sometimes": 1}])
def test_unknown_pools_key_is_rejected(tmp_path: Path, pools: dict[str, Any]) -> None:
    from services.registry.config import RegistryConfig
    from shared.config import ConfigError, load_section

    path, _ = write_config(tmp_path, pools=pools)
    with pytest.raises(ConfigError, match=r"pools\.sometimes"):
        load_section("registry", RegistryConfig, path)


def test_seed_pools_block_is_accepted_as_written(tmp_path: Path) -> None:
    from services.registry.config import RegistryConfig
    from shared.config import load_section

    seed = Path(__file__).with_name("seed_pools.yaml")
    _, cfg = load_section("registry", RegistryConfig, seed)
    pools = cfg.parsed_pools()
    rules = pools.rules()
    assert rules.timeframes["H1"].ttl_ns == 7200 * S and rules.timeframes["D1"].ttl_ns == 2 * 86400 * S
    assert rules.grace_ns == 300 * S and rules.max_per_tf == 10_000 and rules.strength_threshold == 0.1
    assert pools.auto_expire_interval == 30.0
