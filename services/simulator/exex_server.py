"""A test-side Reth ExEx: serves a simulated chain over the ExEx socket protocol (shared/exex.py).

    python -m services.simulator.exex_server --socket /tmp/exex.sock [--scrape-socket PATH]
        [--block-time 0.2] [--events-per-block 10] [--pools 2] [--seed 1] [--blocks 0]
        [--faults corrupt@5,mismatch@7,gap@9,revert@12,reorg@15]

Every connected client gets every block from the moment it connects (seq 1, 2, 3... per
connection). Faults, by block number: ``mismatch`` (EndBlock counts one update too many),
``corrupt`` (a garbage frame instead of an update), ``gap`` (a sequence number skipped),
``revert`` (the head block is reverted with is_revert, then the chain continues on a fork),
``reorg`` (the head block is replaced by a new one without any revert message).
The scrape socket answers a ScrapeRequest with the pools' state at the head block.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import struct

from services.simulator.exex_chain import SimChain
from shared.exex import (
    SCRAPE_REQUEST_DECODER,
    AnyExEx,
    FrameReader,
    ScrapeReply,
    encode_frame,
    encode_scrape,
)

log = logging.getLogger("poolwire.simulator.exex")


class ExExConnection:
    """One connected ExEx client: numbers the frames it is sent (the stream sequence)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.seq = 0

    def send(self, msg: AnyExEx, *, skip_seq: bool = False) -> None:
        self.seq += 2 if skip_seq else 1
        msg.seq = self.seq
        self.writer.write(encode_frame(msg))


async def hold_connection(
    conns: list[ExExConnection], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Keep a client in ``conns`` (it is sent frames from there) until it goes away."""
    conn = ExExConnection(writer)
    conns.append(conn)
    try:
        while await reader.read(4096):  # clients send nothing; this notices them leave
            pass
    except (ConnectionError, OSError):
        pass
    finally:
        if conn in conns:
            conns.remove(conn)
        writer.close()


class ExExServer:
    def __init__(self, chain: SimChain, socket_path: str, scrape_path: str | None = None) -> None:
        self.chain = chain
        self.socket_path = socket_path
        self.scrape_path = scrape_path
        self.conns: list[ExExConnection] = []
        self.connected = asyncio.Event()
        self._servers: list[asyncio.AbstractServer] = []
        self._handlers: dict[asyncio.Task[object], asyncio.StreamWriter] = {}
        self.scrapes = 0

    async def start(self) -> ExExServer:
        for path in (self.socket_path, self.scrape_path):
            if path and os.path.exists(path):
                os.unlink(path)
        self._servers.append(await asyncio.start_unix_server(self._on_client, path=self.socket_path))
        if self.scrape_path:
            self._servers.append(await asyncio.start_unix_server(self._on_scrape, path=self.scrape_path))
        return self

    def _track(self, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers[task] = writer
            task.add_done_callback(lambda t: self._handlers.pop(t, None))

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        self.connected.set()  # waiters run after this task yields, when the client is in conns
        await hold_connection(self.conns, reader, writer)

    async def _on_scrape(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._track(writer)
        frames = FrameReader()
        try:
            while data := await reader.read(65536):
                for payload in frames.feed(data):
                    request = SCRAPE_REQUEST_DECODER.decode(payload)
                    reply = ScrapeReply(
                        seq=request.seq,
                        block=self.chain.number,
                        hash=self.chain.head_hash,
                        pools=self.chain.scrape(request.pools),
                    )
                    self.scrapes += 1
                    writer.write(encode_scrape(reply))
                    await writer.drain()
        except Exception as exc:  # a bad request closes that connection only
            log.warning("scrape connection closed: %r", exc)
        finally:
            writer.close()

    def _each(self, msg: AnyExEx, **kw: bool) -> None:
        for conn in list(self.conns):
            conn.send(msg, **kw)

    async def block(self, fault: str = "") -> int:
        """Produce the next block (with an optional fault) and send it to every client."""
        if fault == "revert" and self.chain.number > 0:
            begin, end = self.chain.revert()
            self._each(begin)
            self._each(end)
            return await self.block()
        if fault == "reorg" and self.chain.number > 0:
            self.chain.unwind_silently()
        begin, updates, end = self.chain.next_block()
        self._each(begin)
        for i, update in enumerate(updates):
            if fault == "corrupt" and i == len(updates) // 2:
                for conn in list(self.conns):
                    conn.writer.write(struct.pack("<I", 6) + b"\xc1\xc1garb")
            self._each(update, skip_seq=(fault == "gap" and i == 0))
        if fault == "mismatch":
            end.num_updates += 1
        self._each(end)
        await self.drain()
        return begin.number

    async def drain(self) -> None:
        for conn in list(self.conns):
            with contextlib.suppress(ConnectionError, OSError):
                await conn.writer.drain()

    def drop_clients(self) -> None:
        for conn in list(self.conns):
            conn.writer.close()
        self.conns.clear()
        self.connected.clear()

    async def close(self) -> None:
        self.drop_clients()
        for server in self._servers:
            server.close()
            await server.wait_closed()
        # Let the connection handlers see their sockets close and return: a handler still pending
        # when the loop ends is cancelled, which Python 3.11's streams log as an error.
        for writer in self._handlers.values():
            writer.close()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=2.0)
        for path in (self.socket_path, self.scrape_path):
            if path and os.path.exists(path):
                os.unlink(path)


def parse_faults(spec: str) -> dict[int, str]:
    faults: dict[int, str] = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, _, number = item.partition("@")
        if kind not in ("mismatch", "corrupt", "gap", "revert", "reorg") or not number.isdigit():
            raise SystemExit(
                f"bad fault {item!r}: expected kind@block, kind one of mismatch corrupt gap revert reorg"
            )
        faults[int(number)] = kind
    return faults


async def amain(args: argparse.Namespace) -> None:
    chain = SimChain(args.seed, args.pools, args.events_per_block)
    server = await ExExServer(chain, args.socket, args.scrape_socket).start()
    faults = parse_faults(args.faults)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"exex server on {args.socket}", flush=True)
    try:
        while not stop.is_set() and (args.blocks == 0 or chain.number < args.blocks):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), args.block_time)
            if stop.is_set():
                break
            await server.block(faults.pop(chain.number + 1, ""))
        await stop.wait()
    finally:
        await server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.exex_server")
    parser.add_argument("--socket", required=True)
    parser.add_argument("--scrape-socket", default=None)
    parser.add_argument("--block-time", type=float, default=0.2)
    parser.add_argument("--events-per-block", type=int, default=10)
    parser.add_argument("--pools", type=int, default=2, help="pools per protocol")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--blocks", type=int, default=0, help="stop producing after this many (0: never)")
    parser.add_argument("--faults", default="")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
