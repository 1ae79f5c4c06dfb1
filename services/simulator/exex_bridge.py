"""An ExEx bridge: follows a JSON-RPC node and serves its Uniswap logs over the ExEx socket protocol.

For tests (the socket path on real chain data) and for users without Reth:

    python -m services.simulator.exex_bridge --rpc http://127.0.0.1:8545 --socket /tmp/exex.sock
        [--poll 0.2]

Every connected client gets every block from the moment it connects (seq 1, 2, 3... per
connection). The bridge polls the tip, walks new blocks by number, fetches each block's logs by
block hash, and when a block's parent is not the block it sent last it sends ``is_revert`` blocks
down to the common ancestor first. Written independently of sync's follower (its own decoding of
the V2/V3/V4 events), so that one checks the other.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
from typing import Any

import aiohttp
from eth_hash.auto import keccak

from services.simulator.exex_server import ExExConnection, hold_connection
from shared.exex import AnyExEx, BeginBlock, EndBlock, PoolUpdate

log = logging.getLogger("poolwire.simulator.bridge")


def _t(sig: str) -> str:
    return "0x" + bytes(keccak(sig.encode())).hex()


# topic0 -> (protocol, kind, field layout of the data words; "t2"/"t3" = from topics)
EVENTS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    _t("Sync(uint112,uint112)"): ("v2", "Sync", ("reserve0", "reserve1")),
    _t("Swap(address,uint256,uint256,uint256,uint256,address)"): (
        "v2",
        "Swap",
        ("in0", "in1", "out0", "out1"),
    ),
    _t("Mint(address,uint256,uint256)"): ("v2", "Mint", ("amount0", "amount1")),
    _t("Burn(address,uint256,uint256,address)"): ("v2", "Burn", ("amount0", "amount1")),
    _t("Initialize(uint160,int24)"): ("v3", "Initialize", ("sqrt_price_x96", "tick")),
    _t("Swap(address,address,int256,int256,uint160,uint128,int24)"): (
        "v3",
        "Swap",
        ("amount0", "amount1", "sqrt_price_x96", "liquidity", "tick"),
    ),
    _t("Mint(address,address,int24,int24,uint128,uint256,uint256)"): (
        "v3",
        "Mint",
        ("_", "liquidity_delta", "amount0", "amount1"),
    ),
    _t("Burn(address,int24,int24,uint128,uint256,uint256)"): (
        "v3",
        "Burn",
        ("liquidity_delta", "amount0", "amount1"),
    ),
    _t("Initialize(bytes32,address,address,uint24,int24,address,uint160,int24)"): (
        "v4",
        "Initialize",
        ("fee", "tick_spacing", "_", "sqrt_price_x96", "tick"),
    ),
    _t("ModifyLiquidity(bytes32,address,int24,int24,int256,bytes32)"): (
        "v4",
        "ModifyLiquidity",
        ("tick_lower", "tick_upper", "liquidity_delta", "_"),
    ),
    _t("Swap(bytes32,address,int128,int128,uint160,uint128,int24,uint24)"): (
        "v4",
        "Swap",
        ("amount0", "amount1", "sqrt_price_x96", "liquidity", "tick", "fee"),
    ),
}
SIGNED = {"amount0", "amount1", "tick", "tick_lower", "tick_upper", "liquidity_delta", "tick_spacing"}


def _signed(word: int) -> int:
    return word - (1 << 256) if word >> 255 else word


def to_update(entry: dict[str, Any]) -> PoolUpdate | None:
    topics = entry["topics"]
    spec = EVENTS.get(topics[0]) if topics else None
    if spec is None:
        return None
    protocol, kind, layout = spec
    data = entry["data"][2:]
    words = [int(data[i : i + 64], 16) for i in range(0, len(data), 64)]
    if len(words) < len(layout):
        raise ValueError(f"{kind} log with {len(words)} data words")
    fields: dict[str, int] = {}
    for name, word in zip(layout, words, strict=False):
        if name != "_":
            fields[name] = _signed(word) if name in SIGNED else word
    if protocol == "v2" and kind == "Swap":
        fields = {"amount0": fields["in0"] - fields["out0"], "amount1": fields["in1"] - fields["out1"]}
    if protocol == "v3" and kind in ("Mint", "Burn"):
        fields["tick_lower"] = _signed(int(topics[2], 16))
        fields["tick_upper"] = _signed(int(topics[3], 16))
        if kind == "Burn":
            fields["liquidity_delta"] = -fields["liquidity_delta"]
    pool = bytes.fromhex(topics[1][2:] if protocol == "v4" else entry["address"][2:])
    return PoolUpdate(
        seq=0,
        block=int(entry["blockNumber"], 16),
        tx=int(entry["transactionIndex"], 16),
        log=int(entry["logIndex"], 16),
        pool=pool,
        protocol=protocol,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        **fields,
    )


class Bridge:
    def __init__(self, rpc_url: str, socket_path: str, poll: float = 0.2) -> None:
        self.rpc_url = rpc_url
        self.socket_path = socket_path
        self.poll = poll
        self.conns: list[ExExConnection] = []
        self.sent: dict[int, tuple[bytes, bytes]] = {}  # number -> (hash, parent) of blocks sent
        self.head = -1
        self.blocks_sent = 0
        self.reverts_sent = 0
        self._server: asyncio.AbstractServer | None = None
        self._session: aiohttp.ClientSession | None = None
        self._id = 0

    async def start(self) -> Bridge:
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
        self._server = await asyncio.start_unix_server(self._on_client, path=self.socket_path)
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def close(self) -> None:
        for conn in self.conns:
            conn.writer.close()
        self.conns.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._session is not None:
            await self._session.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await hold_connection(self.conns, reader, writer)

    async def rpc(self, method: str, *params: Any) -> Any:
        assert self._session is not None
        self._id += 1
        body = {"jsonrpc": "2.0", "id": self._id, "method": method, "params": list(params)}
        async with self._session.post(self.rpc_url, json=body) as resp:
            reply = json.loads(await resp.read())
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def _send(self, msg: AnyExEx) -> None:
        for conn in list(self.conns):
            conn.send(msg)

    async def tick(self) -> None:
        """Send every block from our head to the node's tip (reverts first if the chain moved)."""
        tip = int(await self.rpc("eth_blockNumber"), 16)
        if self.head < 0:
            self.head = tip  # start at the tip: clients get the blocks after it
            block = await self.rpc("eth_getBlockByNumber", hex(tip), False)
            self.sent[tip] = (bytes.fromhex(block["hash"][2:]), bytes.fromhex(block["parentHash"][2:]))
            return
        number = min(self.head, tip)
        while number >= 0 and number in self.sent:
            block = await self.rpc("eth_getBlockByNumber", hex(number), False)
            if block is not None and bytes.fromhex(block["hash"][2:]) == self.sent[number][0]:
                break
            number -= 1
        while self.head > number:  # unwind to the common ancestor
            bhash, parent = self.sent.pop(self.head)
            self._send(BeginBlock(seq=0, number=self.head, hash=bhash, parent_hash=parent, is_revert=True))
            self._send(EndBlock(seq=0, number=self.head, num_updates=0))
            self.reverts_sent += 1
            self.head -= 1
        for n in range(self.head + 1, tip + 1):
            block = await self.rpc("eth_getBlockByNumber", hex(n), False)
            if block is None:
                return
            bhash, parent = bytes.fromhex(block["hash"][2:]), bytes.fromhex(block["parentHash"][2:])
            if self.head in self.sent and parent != self.sent[self.head][0]:
                return  # moved meanwhile: next tick
            logs = await self.rpc("eth_getLogs", {"blockHash": block["hash"]})
            updates = [u for u in (to_update(e) for e in logs) if u is not None]
            updates.sort(key=PoolUpdate.key)
            self._send(
                BeginBlock(
                    seq=0, number=n, hash=bhash, parent_hash=parent, timestamp=int(block["timestamp"], 16)
                )
            )
            for update in updates:
                self._send(update)
            self._send(EndBlock(seq=0, number=n, num_updates=len(updates)))
            for conn in list(self.conns):
                with contextlib.suppress(ConnectionError, OSError):
                    await conn.writer.drain()
            self.sent[n] = (bhash, parent)
            self.sent.pop(n - 1024, None)
            self.head = n
            self.blocks_sent += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self.tick()
            except (aiohttp.ClientError, OSError, RuntimeError, TimeoutError, ValueError) as exc:
                log.warning("bridge: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.poll)


async def amain(args: argparse.Namespace) -> None:
    bridge = await Bridge(args.rpc, args.socket, args.poll).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"exex bridge {args.rpc} -> {args.socket}", flush=True)
    try:
        await bridge.run(stop)
    finally:
        await bridge.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.exex_bridge")
    parser.add_argument("--rpc", required=True, help="JSON-RPC URL of the node to follow")
    parser.add_argument("--socket", required=True, help="ExEx socket path to serve")
    parser.add_argument("--poll", type=float, default=0.2, help="seconds between polls of the tip")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
