"""Issue 13, ingest through the real process: ForceSubscribe bounded, and a fuzz of every input
(WebSocket frames, PULL, the snapshot ROUTER) that leaves the process alive, counted and right."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest
import yaml
import zmq
import zmq.asyncio
from hypothesis import HealthCheck, given, settings

from services.simulator.polymarket import GARBAGE
from shared.bus import Pusher, Subscriber
from shared.messages import ENCODER, BookSnapshot, ForceSubscribe, Heartbeat, SnapshotReply, SnapshotRequest
from shared.snapshot import request_snapshot
from tests.helpers import eventually, spawn
from tests.ingest import frames
from tests.ingest.test_hostile import bad_frames
from tests.ingest.test_integration import (
    CopyCountingServer,
    metric,
    scraped_until,
    simulator,
    stop,
    write_config,
)

pytestmark = pytest.mark.slow

SKIP_COUNTERS = [
    "poolwire_ingest_decode_errors_total",
    "poolwire_ingest_unknown_events_total",
    "poolwire_ingest_legacy_events_total",
    "poolwire_ingest_text_frames_total",
    "poolwire_ingest_unknown_assets_total",
    "poolwire_ingest_bad_values_total",
]


async def skipped(port: int) -> float:
    return sum([await metric(port, name) for name in SKIP_COUNTERS])


async def test_force_subscribe_of_2000_made_up_ids_opens_nothing_beyond_the_cap(tmp_path: Path) -> None:
    async with simulator(30, events_per_s=50) as (server, ws_url, http_url):
        known = list(server.sim.assets)
        cfg, pub, pull, metrics = write_config(
            tmp_path,
            ws_url,
            gamma_url=http_url,
            per_connection=50,
            hard_limit=50,
            min_pending=1000,  # nothing opens unless forced
            force_unknown_per_minute=100,
            silence_timeout="60s",
        )
        made_up = [str(10**40 + i) for i in range(2000)]
        with spawn("-m", "services.ingest", "--config", cfg) as proc:
            async with Subscriber(pub, ["ingest."]) as sub:
                await sub.wait_for_publisher("ingest", timeout=20)  # its metrics are served by then

            async def discovered() -> bool:
                return await metric(metrics, "poolwire_ingest_assets") == 30

            await scraped_until(discovered, 20)
            assert await discovered()
            # known ids (from Gamma discovery) last in a command whose made-up ids use up the budget
            pusher = Pusher(pull, sender="test")
            await pusher.send(ForceSubscribe(asset_ids=made_up[:1000]), timeout=5)
            await pusher.send(ForceSubscribe(asset_ids=made_up[1000:1970] + known), timeout=5)
            await pusher.send(ForceSubscribe(asset_ids=[*made_up[1970:], "not-a-token", "0x1234"]), timeout=5)

            async def refused() -> bool:
                return await metric(metrics, "poolwire_ingest_force_refused_total") == 1902

            await scraped_until(refused, 20)
            assert (
                await metric(metrics, 'poolwire_ingest_force_refused_total{reason="unknown_over_cap"}')
                == 1900
            )
            assert await metric(metrics, 'poolwire_ingest_force_refused_total{reason="malformed"}') == 2
            # 100 made-up ids and the 30 known ones, 50 a connection: three connections, not 41
            await eventually(
                lambda: server.connection_sizes() == [50, 50, 30],
                wake=server.changed,
                timeout=20,
                what="130 ids placed",
            )
            subscribed = {a for c in server.conns.values() for a in c.assets}
            assert set(known) <= subscribed and len(subscribed - set(known)) == 100
            assert await metric(metrics, "poolwire_ingest_connections_opened_total") == 3
            pusher.close()
            assert await asyncio.to_thread(stop, proc) < 10.0


def hypothesis_frames(n: int) -> list[str]:
    """``n`` bad frames drawn by Hypothesis (for assets not followed, so that the books stay put)."""
    out: list[str] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(bad_frames(unknown_asset="4" * 70))
    def draw(frame: str) -> None:
        out.append(frame)

    draw()
    return out


def hand_made_bad_frames() -> list[str]:
    """Bad values on followed assets, huge and deep frames, the simulator's garbage."""
    pc = json.loads(frames.PRICE_CHANGE)
    out = list(GARBAGE)
    for field, value in [("price", "nan"), ("size", "1e400"), ("size", "-3"), ("side", "HOLD")]:
        ev = json.loads(json.dumps(pc))
        ev["price_changes"] = [{**ev["price_changes"][0], field: value}]
        out.append(json.dumps(ev))
    ev = json.loads(json.dumps(pc))
    ev["timestamp"] = 10**30  # past int64 nanoseconds
    out.append(json.dumps(ev))
    out.append("[" * 100_000)  # nested past msgspec's recursion limit
    out.append('{"event_type":"book","asset_id":"' + "7" * 1_000_000 + '"}')  # 1 MB, not followed
    out.append("[]")
    return out


async def test_fuzz_of_every_input_leaves_ingest_alive_counted_and_its_books_right(tmp_path: Path) -> None:
    async with simulator(20, events_per_s=300, server_cls=CopyCountingServer) as (server, ws_url, _):
        assets = list(server.sim.assets)
        cfg, pub, pull, metrics = write_config(
            tmp_path, ws_url, assets=assets, min_pending=1, silence_timeout="60s"
        )
        snap = yaml_snapshot(cfg)
        # the fuzz's frames name this fixture's assets: make them the simulator's
        sim_asset, sim_no = assets[0], assets[1]
        bad = [
            f.replace(frames.ASSET, sim_asset).replace(frames.ASSET_NO, sim_no)
            for f in hand_made_bad_frames()
        ]
        bad += hypothesis_frames(150)
        async with Subscriber(pub, ["ingest."]) as sub:
            with spawn("-m", "services.ingest", "--config", cfg) as proc:
                await eventually(
                    lambda: server.connection_sizes() == [20],
                    wake=server.changed,
                    timeout=20,
                    what="one connection",
                )
                await sub.wait_for_publisher("ingest", timeout=20)
                (conn_id,) = server.conns

                async def routed_everything() -> bool:
                    return await metric(metrics, "poolwire_ingest_frames_total") == server.conns[conn_id].sent

                await eventually(
                    lambda: server.events > 300, wake=server.changed, timeout=20, what="some market"
                )
                server.slow(0)
                await scraped_until(routed_everything, 10)
                assert await routed_everything()
                skipped0 = await skipped(metrics)

                # WebSocket: the bad frames, then one array whose good events sit among bad neighbours
                await server.inject(bad)
                good: list[dict[str, object]] = []
                while not good:
                    good = server.sim.step(server.now_ms())
                mixed = [{"event_type": "book"}, 17, *good, {"event_type": "mystery"}]
                await server.inject([json.dumps(mixed)])
                await scraped_until(routed_everything, 20)
                assert await routed_everything(), "a frame was lost"
                assert await skipped(metrics) - skipped0 >= len(bad) + 3, "a bad frame was not counted"
                assert await metric(metrics, "poolwire_ingest_internal_errors_total") == 0
                assert await metric(metrics, "poolwire_ingest_reconnects_total") == 0
                assert await metric(metrics, "poolwire_ingest_bad_values_total") >= 5

                # PULL: not msgpack, two frames, over MAX_IDS, no type, a message that is no command
                ctx = zmq.asyncio.Context.instance()
                raw = ctx.socket(zmq.PUSH)
                raw.setsockopt(zmq.LINGER, 5000)  # delivered before the close
                raw.connect(pull)
                await raw.send(b"\x00garbage")
                await raw.send_multipart([b"a", b"b"])
                await raw.send(ENCODER.encode(ForceSubscribe(asset_ids=["1"] * 2000)))
                await raw.send(msgspec.msgpack.encode({"asset_ids": ["1"]}))
                await raw.send(ENCODER.encode(Heartbeat(service="x", interval_ms=1, started_ns=1)))
                raw.close()

                async def pull_counted() -> bool:
                    bad_pull = await metric(metrics, 'poolwire_bus_decode_errors_total{socket="pull"}')
                    return bad_pull == 4 and await metric(metrics, "poolwire_ingest_pull_ignored_total") == 1

                await scraped_until(pull_counted, 10)
                assert await pull_counted()

                # snapshot ROUTER: not msgpack, three frames, a message that is no request; then a
                # good request on the same socket, answered after the bad ones were read
                dealer = ctx.socket(zmq.DEALER)
                dealer.setsockopt(zmq.LINGER, 0)
                dealer.connect(snap)
                await dealer.send(b"junk")
                await dealer.send_multipart([b"a", b"b"])
                await dealer.send(ENCODER.encode(ForceSubscribe(asset_ids=["1"])))
                await dealer.send(ENCODER.encode(SnapshotRequest(prefix="px.")))
                # one reply each, in order: the bad ones say why, the good one has no error
                replies = [await asyncio.wait_for(dealer.recv_multipart(), 5) for _ in range(4)]
                dealer.close()
                heads = [msgspec.msgpack.decode(reply[0], type=SnapshotReply) for reply in replies]
                assert [len(reply) for reply in replies] == [2, 2, 2, 2]
                assert [bool(head.error) for head in heads] == [True, True, True, False]
                assert await metric(metrics, "poolwire_ingest_snapshot_bad_requests_total") == 3

                # still alive: heartbeats after all of it, and the books are the simulator's
                beats = 0
                while beats < 2:
                    beats += sum(1 for _, m in await sub.recv_batch(timeout=5) if isinstance(m, Heartbeat))
                _, items = await request_snapshot(snap, "md.book.", timeout=5)
                books = {m.asset: m for m in items if isinstance(m, BookSnapshot)}
                assert set(books) == set(assets)
                for asset in assets:
                    bids, asks = server.sim.assets[asset].levels()
                    book = books[asset]
                    assert [(lv.price, lv.size) for lv in book.bids] == [
                        (float(lv["price"]), float(lv["size"])) for lv in reversed(bids)
                    ]
                    assert [(lv.price, lv.size) for lv in book.asks] == [
                        (float(lv["price"]), float(lv["size"])) for lv in reversed(asks)
                    ]
                    assert book.hash == server.sim.assets[asset].hash, (
                        "the good event among bad ones was lost"
                    )
                assert await metric(metrics, "poolwire_ingest_hash_mismatches_total") == 0
                assert await asyncio.to_thread(stop, proc) < 10.0


def yaml_snapshot(cfg: str) -> str:
    endpoint: str = yaml.safe_load(Path(cfg).read_text())["ingest"]["snapshot"]
    return endpoint
