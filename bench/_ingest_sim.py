"""The outside world for ``bench/ingest.py``, in processes of their own.

    python -m bench._ingest_sim WS_PORT HTTP_PORT ASSETS SEED        # paced: the 20 000-asset run
    python -m bench._ingest_sim replay WS_PORT ASSETS STEPS SEED     # end to end: the exchange
    python -m bench._ingest_sim count ENDPOINT UPDATES               # end to end: a consumer

Paced: the server is ``bench/_pipeline_sim.py``'s (the simulator's own code, paced on the clock,
counting the updates it routes to subscribers: price_change entries and trades). ``POST /bench/rate
{"updates_per_s": R}`` sets the load; ``GET /bench/state`` returns updates sent, subscribed assets
and the connections' sizes. Niced (+10): the exchange runs elsewhere, it yields the CPU to ingest.

Replay: ``MarketSim`` makes ``STEPS`` market steps ahead of time (price_change frames with the
server's hashes, trades; one WebSocket message per step, as the simulator sends them), each already
framed as a WebSocket text frame. A minimal WebSocket server (RFC 6455 handshake, masked client
frames read, PING answered PONG) answers the first subscribe with the books (one JSON array), then
waits for ``go`` on stdin and writes every frame as fast as the socket takes them (TCP flow control
is the only pacing). It prints ``ready``, then ``sent FRAMES UPDATES SECONDS``. Pre-framing keeps the
sender's CPU out of the way: the figure is ingest's and the consumer's.

Count: a SUB on ingest's PUB (raw ZeroMQ, all topics) that decodes every message with the bus's own
decoder and checks that each publisher's ``seq`` runs without a hole (a hole is a gap: messages the
PUB or SUB high-water mark dropped). It prints ``live`` at its first message (a heartbeat: it is
connected), then, when it has ``UPDATES`` updates (BookChange and Trade messages) or 5 s pass
without a message, one JSON line: counts, gaps and the seconds from the first update to the last.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import uvloop
import yaml
import zmq
from aiohttp import web

from bench._pipeline_sim import UPDATES_PER_STEP, BenchServer, serve_until_stopped
from services.simulator.gamma import GammaServer
from services.simulator.market import MarketSim
from shared.messages import BookChange, BookSnapshot, Trade
from shared.wire import decode_payload
from tests.ports import free_port, tcp_endpoint

ROOT = Path(__file__).resolve().parent.parent
BOOKS = 'poolwire_ingest_messages_total{type="book"}'
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WRITE_CHUNK = 256 * 1024
IDLE_END_S = 5.0


async def main(ws_port: int, http_port: int, n_assets: int, seed: int) -> None:
    server = BenchServer(MarketSim(n_assets, seed=seed), events_per_s=0.0, tick=0.005)
    gamma = GammaServer(server, page_limit=1000)

    async def set_rate(request: web.Request) -> web.Response:
        body = await request.json()
        server.events_per_s = float(body.get("updates_per_s", 0.0)) / UPDATES_PER_STEP
        return web.json_response({"ok": True})

    async def state(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "updates": server.updates,
                "subscribed": sum(1 for conns in server.subscribers.values() if conns),
                "connections": server.connection_sizes(),
            }
        )

    gamma.app.router.add_post("/bench/rate", set_rate)
    gamma.app.router.add_get("/bench/state", state)
    await serve_until_stopped(server, gamma, ws_port, http_port)


# -- replay: pre-framed real-protocol frames, sent flat out ------------------------------------


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    """A server-to-client WebSocket frame (FIN, unmasked)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One client frame (masked, as RFC 6455 requires of clients): (opcode, payload)."""
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
    data = await reader.readexactly(n)
    key = (mask * (n // 4 + 1))[:n]
    return b0 & 0x0F, (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


class Replay:
    def __init__(self, n_assets: int, steps: int, seed: int) -> None:
        sim = MarketSim(n_assets, seed=seed)
        # the books before the steps; with min_order_size and neg_risk, as REST books carry them
        # (the WebSocket's lack them, ingest then takes them from Gamma: the hash is the same)
        self.books = ws_frame(
            json.dumps([a.book_event(with_params=True) for a in sim.assets.values()]).encode()
        )
        frames: list[bytes] = []
        self.updates = 0
        base_ms = int(time.time() * 1000)
        for i in range(steps):
            for ev in sim.step(base_ms + i // 50):
                self.updates += len(ev["price_changes"]) if ev["event_type"] == "price_change" else 1
                frames.append(ws_frame(json.dumps(ev, separators=(",", ":")).encode()))
        self.frames = len(frames)
        self.chunks = [b"".join(frames[i : i + 400]) for i in range(0, len(frames), 400)]
        self.go = asyncio.Event()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        key = next(
            line.split(b":", 1)[1].strip()
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest())
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        sender: asyncio.Task[None] | None = None
        try:
            while True:
                opcode, data = await read_frame(reader)
                if opcode == 8:  # close
                    writer.write(ws_frame(data[:2], 8))
                    break
                if opcode == 9:  # a protocol ping
                    writer.write(ws_frame(data, 10))
                elif opcode == 1 and data == b"PING":
                    writer.write(ws_frame(b"PONG"))
                elif opcode == 1 and sender is None and b'"assets_ids"' in data:
                    writer.write(self.books)
                    sender = asyncio.get_running_loop().create_task(self.send(writer))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            if sender is not None:
                await sender
            writer.close()

    async def send(self, writer: asyncio.StreamWriter) -> None:
        await self.go.wait()
        t0 = time.perf_counter()
        try:
            for chunk in self.chunks:
                writer.write(chunk)
                await writer.drain()
        except ConnectionError as exc:  # ingest went away: the bench reports it, never waits
            print(f"broken {exc!r}", flush=True)
            return
        print(f"sent {self.frames} {self.updates} {time.perf_counter() - t0:.4f}", flush=True)


async def replay(ws_port: int, n_assets: int, steps: int, seed: int) -> None:
    rep = Replay(n_assets, steps, seed)
    server = await asyncio.start_server(rep.serve, "127.0.0.1", ws_port, limit=1 << 24)
    print(f"ready {rep.frames} {rep.updates}", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    rep.go.set()
    await asyncio.to_thread(sys.stdin.readline)  # the bench closes stdin when done
    server.close()


# -- count: a consumer that decodes everything and counts holes in seq ---------------------------


def count(endpoint: str, want_updates: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 100_000)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint)
    last_seq: dict[str, int] = {}
    gaps = missed = messages = updates = books = undecodable = 0
    first_ns = last_ns = 0
    live = False
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    recv = sock.recv
    while updates < want_updates:
        if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN and not poller.poll(int(IDLE_END_S * 1000)):
            if live:
                break
            continue
        recv()  # the topic
        msgs, bad = decode_payload(recv())
        undecodable += bad
        if not live:
            live = True
            print("live", flush=True)
        for msg in msgs:
            messages += 1
            prev = last_seq.get(msg.publisher)
            if prev is not None and msg.seq != prev + 1:
                gaps += 1
                missed += max(0, msg.seq - prev - 1)
            last_seq[msg.publisher] = msg.seq
            if isinstance(msg, BookChange | Trade):
                updates += 1
                last_ns = time.perf_counter_ns()
                if not first_ns:
                    first_ns = last_ns
            elif isinstance(msg, BookSnapshot):
                books += 1
    result = {
        "updates": updates,
        "messages": messages,
        "books": books,
        "gaps": gaps,
        "missed": missed,
        "undecodable": undecodable,
        "seconds": (last_ns - first_ns) / 1e9,
    }
    print(json.dumps(result), flush=True)
    sock.close(0)
    ctx.term()


# -- the bench's side: the processes it runs ----------------------------------------------------


def cpu_s(pid: int, thread: int | None = None) -> float:
    """A process's (or one of its threads') CPU time so far (utime + stime), seconds."""
    path = f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def ingest_metrics(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out = {}
    for line in text.splitlines():
        if line.startswith("poolwire_ingest_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def read_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), timeout)).decode().strip()


class Processes:
    """The processes of one run (stdin and stdout piped, stderr to a file), an ingest config."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.ws_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        self.http = f"http://127.0.0.1:{self.http_port}"
        self.pull = tcp_endpoint()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("POOLWIRE_")}
        env["PYTHONPATH"] = str(ROOT)
        with (self.tmp / f"{name}.err").open("wb") as err:
            proc = subprocess.Popen(
                [sys.executable, "-m", *args],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.procs[name] = proc
        return proc

    def errors(self, name: str) -> str:
        return (self.tmp / f"{name}.err").read_text(errors="replace")[-2000:]

    def config(self, heartbeat_s: float = 1.0, **ingest: Any) -> Path:
        """An ingest config against this run's simulator, with ``ingest`` overriding its keys."""
        cfg = {
            "common": {
                "data_dir": str(self.tmp / "data"),
                "log_level": "WARNING",
                "heartbeat_interval": heartbeat_s,
            },
            "ingest": {
                "pub": tcp_endpoint(),
                "pull": self.pull,
                "snapshot": tcp_endpoint(),
                "metrics_port": self.metrics_port,
                "ws_url": f"ws://127.0.0.1:{self.ws_port}/ws/market",
                **ingest,
            },
        }
        path = self.tmp / "poolwire.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    async def wait_metrics(
        self,
        http: aiohttp.ClientSession,
        ingest: subprocess.Popen[bytes],
        ready: Callable[[dict[str, float]], bool],
        timeout: float,
    ) -> dict[str, float]:
        """Poll ingest's metrics until ``ready`` says so; raise if it exits or ``timeout`` passes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        m: dict[str, float] = {}
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                m = await ingest_metrics(http, self.metrics_port)
                if ready(m):
                    return m
            if ingest.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"ingest is not there: {m} {self.errors('ingest')}")
            await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "replay":
        ws, assets, steps, seed = (int(x) for x in sys.argv[2:6])
        uvloop.run(replay(ws, assets, steps, seed))
    elif mode == "count":
        count(sys.argv[2], int(sys.argv[3]))
    else:
        ws, http, assets, seed = (int(x) for x in sys.argv[1:5])
        os.nice(10)
        uvloop.run(main(ws, http, assets, seed))
