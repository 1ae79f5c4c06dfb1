"""Hostile input into a real registry process: Hypothesis-generated and hand-made DetectorEvents
(values out of range, wrong types), garbage frames, batches mixing good and bad items and frames
over ``max_message_size`` on its PULL; garbage and wrong frame counts on its snapshot ROUTER.
Afterwards the registry still heartbeats, every bad input is counted on /metrics, the good items
were applied, the Clone snapshot is the one before plus the good items, the log stayed short, and
the store holds what the snapshot shows."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec
import yaml
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.registry.validate import MIN_TIME_NS, Limits, check_event
from shared.bus import Subscriber
from shared.messages import ENCODER, DetectorEvent, Heartbeat, Price, Zone, ZoneCreated, ZoneSnapshotItem
from shared.snapshot import request_snapshot
from shared.wire import decode_payload
from tests.helpers import spawn
from tests.registry.test_service import metric, scrape, stop, wait_for, write_config

S = 1_000_000_000
NOW = time.time_ns()
DAY = 86400 * S
MAX_MESSAGE_SIZE = 64 * 1024
LIMITS = Limits(timeframes=frozenset({"S1", "H1", "H4"}))
Key = tuple[str, str, str, float, float]

# A good event (strength above the 0.1 threshold, recent, with a TTL that outlasts the test)...
VALID: dict[str, st.SearchStrategy[Any]] = dict(
    timeframe=st.sampled_from(["S1", "H1", "H4"]),
    kind=st.sampled_from(["custom", "ob", "fvg_bullish"]),
    top=st.floats(min_value=1.0, max_value=2.0),
    bottom=st.floats(min_value=0.5, max_value=0.999),
    strength=st.floats(min_value=0.1, max_value=1.0),
    created_ns=st.one_of(st.just(0), st.integers(NOW - 600 * S, NOW)),
    ttl_ns=st.one_of(st.just(0), st.integers(3600 * S, 7 * DAY)),
)
# ...with up to two fields replaced by values a hostile sender could put on the wire: first
# values the schema lets through and registry must refuse, then anything. Times stay far from the
# window's edges, so the test's clock and the service's agree on them.
text = st.one_of(st.text(max_size=140), st.text(alphabet="€", min_size=40, max_size=45))
anything = st.one_of(st.none(), st.booleans(), st.binary(max_size=8), st.lists(st.integers(), max_size=2))
prices = st.one_of(st.sampled_from([1e308, 1e41, 2.5, 0.1, 3e-300]), st.floats(), text, anything)
times = st.one_of(
    st.sampled_from([5, MIN_TIME_NS - DAY, NOW + 3 * DAY, 2**63 - 1]),
    st.sampled_from([-1, 2**64 - 1, -(2**63)]),
    text,
    st.floats(),
)
HOSTILE: dict[str, st.SearchStrategy[Any]] = dict(
    symbol=st.one_of(st.sampled_from(["€" * 43, "a\nb", "x\x00y", "s" * 128]), text, anything),
    timeframe=st.one_of(st.sampled_from(["H2", "h1", "S1 ", "M7"]), text, anything),
    kind=st.one_of(st.sampled_from(["€" * 50, "tab\there"]), text, st.just("k" * 100_000), anything),
    top=prices,
    bottom=prices,
    strength=st.one_of(st.sampled_from([0.0, 0.05, 1e300]), st.floats(), text, anything),
    created_ns=times,
    event_ns=times,
    ttl_ns=st.one_of(st.sampled_from([7 * DAY + 1, 2**63 - 1]), st.just(-1), text),
)


def generated(count: int) -> list[dict[str, Any]]:
    """Maps for the wire drawn by Hypothesis (a fixed seed), each with its own symbol."""
    out: list[dict[str, Any]] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(data=st.data())
    def draw(data: st.DataObject) -> None:
        fields = {"type": "DetectorEvent", "detector": "fuzz", "symbol": f"fz.{len(out)}"}
        fields.update(data.draw(st.fixed_dictionaries(VALID)))
        for key in data.draw(st.lists(st.sampled_from(sorted(HOSTILE)), min_size=1, max_size=2, unique=True)):
            fields[key] = data.draw(HOSTILE[key])
        out.append(fields)

    draw()
    return out


class Expected:
    """What the registry should make of each payload: the same decoder, the same checks."""

    def __init__(self) -> None:
        self.decode_errors = 0
        self.refused: Counter[str] = Counter()
        self.zones: Counter[Key] = Counter()
        self.oversized: list[bytes] = []  # sent on a connection of their own

    def payload(self, raw: Any, want: str | None = None) -> bytes | None:
        """Encode ``raw``, note its outcome (``want``: the reason it must be refused for)."""
        payload = raw if isinstance(raw, bytes) else msgspec.msgpack.encode(raw)
        if len(payload) > MAX_MESSAGE_SIZE:  # ZeroMQ drops it, and its sender's connection, unread
            self.oversized.append(payload)
            return None
        msgs, bad = decode_payload(payload)
        self.decode_errors += bad
        outcomes = [self.message(m) for m in msgs]
        if want is not None:
            assert outcomes == [want] if want != "decode" else bad == 1, (raw, outcomes)
        return payload

    def message(self, msg: Any) -> str:
        refusal = check_event(msg, NOW, LIMITS)
        if refusal is not None:
            self.refused[refusal.reason] += 1
            return refusal.reason
        if msg.strength < 0.1:
            self.refused["weak"] += 1
            return "weak"
        self.zones[key(msg)] += 1
        return "zone"


def key(z: DetectorEvent | Zone) -> Key:
    return (z.symbol, z.timeframe, z.kind, z.top, z.bottom)


def good(name: str, **changes: Any) -> dict[str, Any]:
    fields = dict(type="DetectorEvent", detector="hand", symbol=name, timeframe="H1", kind="custom")
    return {**fields, "top": 0.9, "bottom": 0.5, "created_ns": NOW, **changes}


def hand_made(exp: Expected, rng: random.Random) -> list[bytes | None]:
    frames = [exp.payload(b"\xc1" + rng.randbytes(rng.randint(0, 40)), "decode") for _ in range(500)]
    cases: list[tuple[Any, str]] = [
        (b"", "decode"),
        ("a string", "decode"),
        ({"type": "NoSuchType"}, "decode"),
        (good("h.1", created_ns=2**64 - 1), "decode"),  # crashed the service (struct.error in zone_id)
        (good("h.2", created_ns=2**63 - 1), "bad_time"),  # made a zone that never expired
        (good("h.3", created_ns=NOW + 2 * DAY), "bad_time"),
        (good("h.4", symbol="s" * 1_000_000), "decode"),  # a 1 MB symbol would be a 1 MB topic
        (good("h.5", kind="k" * 100_000), "decode"),
        (good("€" * 43), "bad_name"),  # 43 characters, 129 bytes
        (good("h.6", kind="a\nb"), "bad_name"),
        (good("h.7", top=-0.5, bottom=-0.9), "decode"),
        (good("h.8", top=1e308), "bad_price"),
        (good("h.9", top=0.5, bottom=0.9), "bad_range"),
        (good("h.10", timeframe="M7"), "unknown_timeframe"),
        (good("h.13", strength=0.05), "weak"),
        (good("h.11", ttl_ns=8 * DAY), "bad_ttl"),
        (good("h.12", event_ns=NOW + 3 * DAY), "bad_time"),
        (ENCODER.encode(Price(symbol="pm.a", price=1.0)), "wrong_type"),
        (good("h.ok.1"), "zone"),
    ]
    frames += [exp.payload(raw, want) for raw, want in cases]
    exp.payload(good("huge", kind="k" * 100) | {"pad": "x" * 100_000})
    # A batch: the good items survive their bad neighbours.
    frames.append(
        exp.payload(
            [
                good("b.ok.1"),
                good("b.1", top="high"),  # does not decode
                good("b.2", created_ns=2**63 - 1),  # decodes, refused
                good("b.ok.2", timeframe="S1"),
                good("b.3", bottom=float("nan")),
                good("b.ok.3", timeframe="H4"),
            ]
        )
    )
    return frames


async def test_hostile_input_is_counted_and_the_registry_keeps_exact_state(tmp_path: Path) -> None:
    path, cfg = write_config(tmp_path)
    doc = yaml.safe_load(path.read_text())
    doc["common"]["max_message_size"] = MAX_MESSAGE_SIZE
    path.write_text(yaml.safe_dump(doc))
    exp = Expected()
    frames = hand_made(exp, random.Random(13))
    frames += [exp.payload(fields) for fields in generated(150)]
    reasons = {"wrong_type", "bad_name", "unknown_timeframe", "bad_time", "bad_ttl", "bad_price", "bad_range"}
    assert exp.zones and reasons | {"weak"} <= set(exp.refused) and exp.decode_errors > 500  # a mix
    assert len(exp.oversized) >= 3

    zctx = zmq.asyncio.Context.instance()
    push, huge, dealer = zctx.socket(zmq.PUSH), zctx.socket(zmq.PUSH), zctx.socket(zmq.DEALER)
    for sock in (push, huge, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    with spawn("-m", "services.registry", "--config", str(path)) as proc:
        async with Subscriber(cfg["pub"], ("zone.", "registry.")) as sub:
            await sub.wait_for_publisher("registry", timeout=15)
            push.connect(cfg["pull"])
            huge.connect(cfg["pull"])
            dealer.connect(cfg["snapshot"])
            # Before: one zone, and its snapshot.
            await push.send(exp.payload(good("before.1"), "zone") or b"")
            await wait_for(sub, ZoneCreated, symbol="before.1")
            _, before = await request_snapshot(cfg["snapshot"], timeout=5)
            assert [key(i.zone) for i in before if isinstance(i, ZoneSnapshotItem)] == [
                ("before.1", "H1", "custom", 0.9, 0.5)
            ]

            # A frame over max_message_size closes its sender's connection unread.
            for big in exp.oversized:
                await huge.send(big)
            for frame in frames:
                if frame is not None:
                    await push.send(frame)
            await push.send_multipart([b"two", b"frames"])
            exp.decode_errors += 1
            bad_requests: list[list[bytes]] = [
                [b"\xc1garbage"],
                [b""],
                [b"a", b"b"],
                [ENCODER.encode(Heartbeat(service="x", interval_ms=1, started_ns=0))],
                [msgspec.msgpack.encode({"type": "SnapshotRequest", "prefix": "x" * 300})],
                [msgspec.msgpack.encode({"type": "SnapshotRequest", "prefix": 7})],
            ]
            for request in bad_requests:
                await dealer.send_multipart(request)
            await push.send(exp.payload(good("after.1"), "zone") or b"")  # last: a good event
            await wait_for(sub, ZoneCreated, timeout=15, symbol="after.1")

            # Counted: wait (on heartbeats) until the snapshot server has read the bad requests.
            async with asyncio.timeout(15):
                while True:
                    text = await asyncio.to_thread(scrape, cfg["metrics_port"])
                    if metric(text, "poolwire_registry_snapshot_bad_requests_total") >= len(bad_requests):
                        break
                    await sub.recv_batch(timeout=1.0)
            assert metric(text, "poolwire_registry_snapshot_bad_requests_total") == len(bad_requests)
            assert metric(text, "poolwire_bus_decode_errors_total", socket="pull") == exp.decode_errors
            rejected = "poolwire_registry_detector_events_rejected_total"
            for reason in sorted(reasons | {"bad_strength", "weak"}):
                assert metric(text, rejected, reason=reason) == exp.refused[reason], reason
            assert metric(text, rejected, reason="internal") == 0
            created = sum(
                metric(text, "poolwire_registry_zones_created_total", timeframe=tf)
                for tf in LIMITS.timeframes
            )
            assert created == exp.zones.total()
            assert metric(text, "poolwire_registry_store_write_failures_total") == 0

            # Still alive, and the snapshot is the one before plus the good items.
            await sub.wait_for_publisher("registry", timeout=5)
            assert proc.poll() is None
            _, after = await request_snapshot(cfg["snapshot"], timeout=5)
            zones = [i.zone for i in after if isinstance(i, ZoneSnapshotItem)]
            assert Counter(key(z) for z in zones) == exp.zones
            assert {z.id for z in zones} >= {i.zone.id for i in before if isinstance(i, ZoneSnapshotItem)}
            assert all(z.state == "active" and z.expires_ns > time.time_ns() for z in zones)
        for sock in (push, huge, dealer):
            sock.close()
        rc, _ = stop(proc)
        assert rc == 0
        _, err = proc.communicate(timeout=10)

    # The log stayed short: about 10 lines per reason a minute, not one per bad input.
    warnings = [line for line in err.splitlines() if " WARNING " in line]
    assert len(warnings) < 200, warnings[-20:]
    assert sum("undecodable" in line for line in warnings) <= 10
    db = sqlite3.connect(f"file:{tmp_path / 'data' / 'registry.sqlite'}?mode=ro", uri=True)
    stored = {row[0] for row in db.execute("SELECT id FROM zones")}
    db.close()
    assert stored == {z.id for z in zones}
