"""Hostile input into a real sync process: garbage and bad/good WhitelistAdd mixes on its PULL,
garbage on its snapshot ROUTER, and bad ExEx frames (garbage, impossible values, wrong shapes,
truncated, unknown pools, huge numbers, mismatched blocks). Afterwards sync still heartbeats, every
bad input is counted on /metrics, and its Clone snapshot equals the chain."""

from __future__ import annotations

import asyncio
import random
import struct
import tempfile
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import yaml
import zmq
import zmq.asyncio

from services.simulator.exex_chain import SimChain
from services.simulator.exex_server import ExExServer
from shared.bus import Subscriber
from shared.exex import AnyExEx, PoolUpdate
from shared.messages import ENCODER, BlockUpdate, ForceSubscribe, Heartbeat, PoolSpec, PoolState
from shared.snapshot import request_snapshot
from tests.helpers import eventually, spawn
from tests.ports import free_port, tcp_endpoint
from tests.sync.test_service import assert_matches, spec, until_committed

BAD_SPECS = [  # (spec, reason): each passes msgspec's bounds, so only sync's own checks refuse it
    (PoolSpec(protocol="v2", address="0xnothex"), "bad_address"),
    (PoolSpec(protocol="v3", address="0x" + "ab" * 32), "bad_address"),
    (PoolSpec(protocol="v2", address="0x" + "cd" * 20, tick_spacing=60), "bad_tick_spacing"),
    (PoolSpec(protocol="v4", pool_id="0x" + "12" * 31, tick_spacing=60), "bad_pool_id"),
    (PoolSpec(protocol="v4", pool_id="0x" + "12" * 32), "bad_tick_spacing"),
    (PoolSpec(protocol="v4", tick_spacing=60), "bad_pool_key"),
    (PoolSpec(protocol="v3", address="0x" + "ef" * 20, fee=2_000_000), "bad_fee"),
]
SCHEMA_BAD: list[Any] = [  # pools outside msgspec's bounds or of the wrong type: refused as bad_schema
    {"protocol": "v5", "address": "0x" + "ab" * 20},
    {"protocol": "v2", "address": "0x" + "ab" * 20, "fee": -1},
    {"protocol": "v3", "address": "0x" + "a" * 80},
    {"protocol": "v2", "address": 7},
]
UNKNOWN = b"\xee" * 20  # a well-formed pool the chain does not have


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("poolwire_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def garbage_frames(rng: random.Random) -> list[list[bytes]]:
    # random bytes after a first byte that is not an array (a batch: each of its items would count)
    frames = [
        [rng.choice([b"\xc1", b"\x81", b"\xa3", b"\xdf"]) + rng.randbytes(rng.randint(0, 64))]
        for _ in range(20)
    ]
    frames += [
        [b"\xc1"],  # never valid msgpack
        [b""],
        [msgspec.msgpack.encode({"type": "WhitelistAdd", "pools": "all of them"})],
        [msgspec.msgpack.encode({"type": "WhitelistAdd", "pools": [{"protocol": "v2"}] * 1001})],
        [msgspec.msgpack.encode({"type": "NoSuchType"})],
        [msgspec.msgpack.encode("a string")],
        [b"two", b"frames"],
    ]
    return frames


async def test_hostile_input_is_counted_and_sync_keeps_exact_state() -> None:
    rng = random.Random(99)
    with tempfile.TemporaryDirectory() as tmp:
        chain = SimChain(seed=11, pools_per_protocol=2, events_per_block=8)
        server = await ExExServer(chain, f"{tmp}/exex.sock", f"{tmp}/scrape.sock").start()
        keys = list(chain.pools)
        first, later = keys[:3], keys[3:]
        pub, pull, snap, port = tcp_endpoint(), tcp_endpoint(), tcp_endpoint(), free_port()
        config = {
            "common": {"heartbeat_interval": "200ms"},
            "sync": {
                "pub": pub, "pull": pull, "snapshot": snap, "metrics_port": port,
                "exex_socket": f"{tmp}/exex.sock", "scraper": "simulator", "scrape_socket": f"{tmp}/scrape.sock",
                "pools": [spec(chain.pools[k]) for k in first], "backoff_max": "200ms",
            },
        }  # fmt: skip
        cfg = Path(tmp) / "poolwire.yaml"
        cfg.write_text(yaml.safe_dump(config))
        for _ in range(3):
            await server.block()
        sub = Subscriber(pub, ["dex.block", "sync.health"])
        zctx = zmq.asyncio.Context.instance()
        push = zctx.socket(zmq.PUSH)
        dealer = zctx.socket(zmq.DEALER)
        for sock in (push, dealer):
            sock.setsockopt(zmq.LINGER, 0)
        push.connect(pull)
        dealer.connect(snap)
        seen: list[BlockUpdate] = []
        try:
            with spawn("-m", "services.sync", "--config", str(cfg)) as proc:
                await sub.wait_for_publisher("sync", timeout=20)
                await asyncio.wait_for(server.connected.wait(), 20)

                async def next_block() -> None:
                    await server.block()
                    for _topic, msg in await sub.recv_batch(timeout=0.1):
                        if isinstance(msg, BlockUpdate):
                            seen.append(msg)

                async def blocks_until(number: int) -> None:
                    await until_committed(seen, number, next_block, proc, timeout=45)

                async def metrics_until(name: str, value: float) -> dict[str, float]:
                    figures = await asyncio.to_thread(scrape, port)

                    async def block_and_scrape() -> None:
                        await blocks_until(chain.number + 1)
                        figures.update(await asyncio.to_thread(scrape, port))

                    await eventually(
                        lambda: figures.get(name, 0) >= value,
                        wake=block_and_scrape,
                        timeout=90,
                        what=f"{name} >= {value}",
                        state=lambda: figures.get(name),
                        process=proc,
                    )
                    return figures

                await blocks_until(5)

                # PULL: garbage, a wrong type, and a WhitelistAdd mixing good and bad pools
                garbage = garbage_frames(rng)
                for frames in garbage:
                    await push.send_multipart(frames)
                await push.send(ENCODER.encode(ForceSubscribe(asset_ids=["1"])))
                mixed: list[PoolSpec] = [spec for spec, _ in BAD_SPECS]
                mixed += [PoolSpec(**spec(chain.pools[k])) for k in later]  # type: ignore[arg-type]
                mixed.append(PoolSpec(protocol="v2", address="0x" + UNKNOWN.hex()))
                # and pools the shared schema refuses (the whole message, were they decoded with it)
                pools: list[Any] = [msgspec.to_builtins(p) for p in mixed] + SCHEMA_BAD
                rng.shuffle(pools)
                await push.send(msgspec.msgpack.encode({"type": "WhitelistAdd", "pools": pools}))
                for bad in SCHEMA_BAD:  # alone in their WhitelistAdd
                    await push.send(msgspec.msgpack.encode({"type": "WhitelistAdd", "pools": [bad]}))

                # snapshot ROUTER: garbage requests, then a good one still answered
                bad_requests: list[list[bytes]] = [
                    [b"\xc1garbage"],
                    [b"a", b"b"],
                    [ENCODER.encode(Heartbeat(service="x", interval_ms=1, started_ns=0))],
                    [msgspec.msgpack.encode({"type": "SnapshotRequest", "prefix": "x" * 300})],
                    [msgspec.msgpack.encode({"type": "SnapshotRequest", "prefix": 7})],
                ]
                for frames in bad_requests:
                    await dealer.send_multipart(frames)
                await metrics_until("poolwire_sync_pools", len(keys))
                _header, items = await request_snapshot(snap, timeout=5)
                assert len(items) == len(keys)

                # ExEx: bad updates inside good blocks are skipped and counted, the block applies
                def bad_updates(block: int) -> list[PoolUpdate]:
                    v2 = next(k for k in keys if chain.pools[k].protocol == "v2")
                    v3 = next(k for k in keys if chain.pools[k].protocol == "v3")
                    base: dict[str, Any] = {"seq": 0, "block": block, "tx": 900, "log": 0}
                    return [
                        PoolUpdate(**base, pool=UNKNOWN, protocol="v2", kind="Sync", reserve0=1, reserve1=1),
                        PoolUpdate(**base, pool=v2, protocol="v2", kind="Sync", reserve0=10**400, reserve1=1),
                        PoolUpdate(
                            **base, pool=v3, protocol="v3", kind="Swap", sqrt_price_x96=10**300, tick=0
                        ),
                        PoolUpdate(**base, pool=v3, protocol="v3", kind="Mint", tick_lower=10, tick_upper=5),
                        PoolUpdate(**base, pool=v2, protocol="v2", kind="Initialize"),
                        PoolUpdate(**base, pool=v3, protocol="v2", kind="Sync", reserve0=1),
                        PoolUpdate(**base, pool=b"\x01" * 3, protocol="v4", kind="Swap", amount0=-(10**500)),
                    ]

                for _ in range(2):
                    begin, updates, end = chain.next_block()
                    extra = bad_updates(begin.number)
                    end.num_updates += len(extra)
                    sent: list[AnyExEx] = [begin, *extra, *updates, end]
                    for conn in list(server.conns):
                        for msg in sent:
                            conn.send(msg)
                    await server.drain()
                await metrics_until('poolwire_sync_events_skipped_total{reason="overflow"}', 4)

                # ExEx stream damage: each is counted, and the service resyncs from a scrape
                def raw_frame(fields: list[Any]) -> bytes:
                    payload = msgspec.msgpack.encode(fields)
                    return struct.pack("<I", len(payload)) + payload

                hash32 = b"\x07" * 32
                damage = [
                    struct.pack("<I", 6) + b"\xc1\xc1garb",
                    raw_frame(["BeginBlock", 0, chain.number + 1, hash32, hash32, False, "9" * 400]),
                    raw_frame(["BeginBlock", 0, "five", hash32]),
                    raw_frame(["EndBlock", 0, chain.number + 1, -4]),
                    struct.pack("<I", 0),  # an impossible length
                ]
                for n, frame in enumerate(damage, 1):  # framing is checked before the sequence
                    for conn in list(server.conns):
                        conn.writer.write(frame)
                    await server.drain()
                    await metrics_until('poolwire_sync_exex_events_total{event="corrupt_frames"}', n)
                    await blocks_until(chain.number + 1)  # resynced and live again, on a new connection
                # a truncated frame, then the connection drops: reconnect, counted
                for conn in list(server.conns):
                    conn.writer.write(struct.pack("<I", 100) + b"\x95\xa9Begin")
                await server.drain()
                server.drop_clients()
                await metrics_until('poolwire_sync_exex_events_total{event="disconnects"}', 1)
                # reconnected and live again before the faulty block: sent while no client is
                # connected, it reaches nobody (the disconnect can be counted before the reconnect)
                await blocks_until(chain.number + 1)
                await server.block("mismatch")
                await metrics_until('poolwire_sync_exex_events_total{event="mismatched_blocks"}', 1)

                # settled: the snapshot is the chain's state at its head
                await blocks_until(chain.number + 1)
                for _ in range(100):
                    if any(b.status == "committed" and b.number == chain.number for b in seen[-3:]):
                        break
                    seen += [m for _t, m in await sub.recv_batch(timeout=0.1) if isinstance(m, BlockUpdate)]
                header, items = await request_snapshot(snap, timeout=5)
                states = {s.pool: s for s in items if isinstance(s, PoolState)}
                assert header.count == len(keys)
                assert_matches(states, chain, keys)

                beats = [m for _t, m in await sub.recv_batch(timeout=2) if isinstance(m, Heartbeat)]
                while not beats:
                    beats = [m for _t, m in await sub.recv_batch(timeout=2) if isinstance(m, Heartbeat)]
                assert proc.poll() is None

                m = await asyncio.to_thread(scrape, port)
                assert m['poolwire_bus_decode_errors_total{socket="pull"}'] == len(garbage)
                assert m['poolwire_sync_pull_ignored_total{type="ForceSubscribe"}'] == 1
                for reason in {r for _, r in BAD_SPECS}:
                    want = sum(1 for _, r in BAD_SPECS if r == reason)
                    assert m[f'poolwire_sync_whitelist_refused_total{{reason="{reason}"}}'] == want, reason
                assert m['poolwire_sync_whitelist_refused_total{reason="bad_schema"}'] == 2 * len(SCHEMA_BAD)
                assert m["poolwire_sync_whitelist_accepted_total"] == len(later) + 1
                assert m["poolwire_sync_snapshot_bad_requests_total"] == len(bad_requests)
                assert m['poolwire_sync_events_skipped_total{reason="overflow"}'] >= 4
                assert m['poolwire_sync_events_skipped_total{reason="invalid"}'] >= 6
                assert m['poolwire_sync_events_skipped_total{reason="pool_not_found"}'] >= 4
                assert m['poolwire_sync_exex_events_total{event="corrupt_frames"}'] == len(damage)
                assert m["poolwire_sync_startup_pools_failed_total"] >= 1  # the unknown pool
                assert m["poolwire_sync_swaps_unpublished_total"] >= 2  # the swaps priced at 10^300
                assert m["poolwire_sync_block_errors_total"] == 0
                assert "poolwire_sync_lag_seconds" in m  # /metrics still renders (no 10^400 s lag)
        finally:
            push.close()
            dealer.close()
            sub.close()
            await server.close()
