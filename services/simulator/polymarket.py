"""A Polymarket CLOB market-channel server (aiohttp) speaking the real protocol, with fault switches.

Protocol: the client's first frame is ``{"assets_ids": [...], "type": "market"}`` (optional
``initial_dump``, ``custom_feature_enabled``); the server answers with the books of those assets
as one JSON array, then streams events. ``{"operation": "subscribe"|"unsubscribe", ...}`` changes
the set later (a subscribe sends the new books; an asset already subscribed on the connection is
rejected and counted, no book). ``PING`` is answered ``PONG``; an empty subscribe gets
``NO NEW ASSETS``. ``new_market`` and ``market_resolved`` go to every connection with custom
features on, whatever it subscribed.

Faults: ``stall`` (keep answering PING, send no data), ``close``, ``garbage`` (malformed and
legacy frames), ``resolve`` markets, ``slow`` (scale the event rate), and ``stall_above`` (a
connection with more assets than that stalls silently, as large real connections do).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from services.simulator.market import MarketSim, SimMarket

log = logging.getLogger("poolwire.simulator.ws")

GARBAGE = [
    "{not json at all",
    '{"event_type":"price_change","market":"0x1"',  # truncated
    '{"event_type":"mystery","x":1}',
    '{"event_type":"book"}',  # no asset_id
    "[1,2,3]",
    '{"asset_id":"1","changes":[{"price":"0.4","side":"SELL","size":"3300"}],"event_type":"price_change",'
    '"hash":"0","market":"0x1","timestamp":"1729084877448"}',  # legacy flat schema
    "\x00\x01binary-ish",
]


@dataclass(eq=False)
class SimConn:
    id: int
    ws: web.WebSocketResponse
    assets: set[str] = field(default_factory=set)
    custom: bool = False
    stalled: bool = False
    opened: float = field(default_factory=time.monotonic)
    sent: int = 0
    pings: int = 0
    rejected: int = 0


class PolymarketServer:
    def __init__(
        self, sim: MarketSim, *, events_per_s: float = 2000.0, tick: float = 0.01, stall_above: int = 0
    ):
        self.sim = sim
        self.events_per_s = events_per_s
        self.tick = tick
        self.stall_above = stall_above
        self.rate_factor = 1.0
        self.conns: dict[int, SimConn] = {}
        self.subscribers: dict[str, set[SimConn]] = {}
        self.events = 0  # events generated
        self.history: list[dict[str, Any]] | None = None  # when a list, every event is recorded
        self._ids = itertools.count(1)
        self._carry = 0.0
        self._task: asyncio.Task[None] | None = None
        self._last_ms = 0
        self.changed = asyncio.Event()  # set whenever connections or subscriptions change
        self.app = web.Application()
        self.app.router.add_get("/ws/market", self.handle_ws)
        self.app.router.add_get("/ws/market/", self.handle_ws)

    # -- protocol --------------------------------------------------------------------------------

    async def handle_ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        conn = SimConn(next(self._ids), ws)
        self.conns[conn.id] = conn
        self.changed.set()
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                await self._on_text(conn, msg.data)
        finally:
            self._drop(conn)
        return ws

    def _drop(self, conn: SimConn) -> None:
        self.conns.pop(conn.id, None)
        self.changed.set()
        for asset in conn.assets:
            subs = self.subscribers.get(asset)
            if subs is not None:
                subs.discard(conn)

    async def _on_text(self, conn: SimConn, text: str) -> None:
        if text == "PING":
            conn.pings += 1
            await conn.ws.send_str("PONG")
            return
        try:
            req = json.loads(text)
        except ValueError:
            return
        if not isinstance(req, dict) or not isinstance(req.get("assets_ids"), list):
            return
        assets = [str(a) for a in req["assets_ids"]]
        op = req.get("operation")
        if op is None and req.get("type", "").lower() == "market":
            conn.custom = bool(req.get("custom_feature_enabled", False))
            await self._subscribe(conn, assets, dump=req.get("initial_dump", True) is not False)
        elif op == "subscribe":
            await self._subscribe(conn, assets, dump=True)
        elif op == "unsubscribe":
            for asset in assets:
                conn.assets.discard(asset)
                self.subscribers.get(asset, set()).discard(conn)

    async def _subscribe(self, conn: SimConn, assets: list[str], dump: bool) -> None:
        new = []
        for asset in assets:
            if asset in conn.assets:
                conn.rejected += 1  # the real server rejects re-subscribing on the same connection
                continue
            conn.assets.add(asset)
            self.subscribers.setdefault(asset, set()).add(conn)
            new.append(asset)
        if not new:
            await conn.ws.send_str("NO NEW ASSETS")
            return
        self.changed.set()
        if self.stall_above and len(conn.assets) > self.stall_above:
            conn.stalled = True
        books = [self.sim.assets[a].book_event() for a in new if a in self.sim.assets]
        if dump and books and not conn.stalled:
            await self._send(conn, json.dumps(books, separators=(",", ":")))

    async def _send(self, conn: SimConn, text: str) -> None:
        if conn.ws.closed:
            return
        try:
            await conn.ws.send_str(text)
            conn.sent += 1
        except (ConnectionError, RuntimeError):
            pass

    # -- the market ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="simulator-market")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        for conn in list(self.conns.values()):
            await conn.ws.close()

    def now_ms(self) -> int:
        ms = int(time.time() * 1000)
        self._last_ms = max(self._last_ms, ms)
        return self._last_ms

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.tick)
            self._carry += self.events_per_s * self.rate_factor * self.tick
            n = int(self._carry)
            self._carry -= n
            if n:
                await self.emit_steps(n)

    async def emit_steps(self, n: int) -> None:
        """Generate ``n`` market steps now and send each event to its subscribers."""
        outbox: dict[SimConn, list[str]] = {}
        ts = self.now_ms()
        for _ in range(n):
            for ev in self.sim.step(ts):
                self.events += 1
                if self.history is not None:
                    self.history.append(ev)
                self._route(ev, outbox)
        await self._flush(outbox)

    def _route(self, ev: dict[str, Any], outbox: dict[SimConn, list[str]]) -> None:
        if ev["event_type"] == "price_change":
            entries = ev["price_changes"]
            per_conn: dict[SimConn, list[dict[str, Any]]] = {}
            for entry in entries:
                for conn in self.subscribers.get(entry["asset_id"], ()):
                    per_conn.setdefault(conn, []).append(entry)
            cache: dict[int, str] = {}
            for conn, mine in per_conn.items():
                if conn.stalled:
                    continue
                key = len(mine) if len(mine) == len(entries) else -id(mine[0])
                text = cache.get(key)
                if text is None:
                    text = json.dumps({**ev, "price_changes": mine}, separators=(",", ":"))
                    cache[key] = text
                outbox.setdefault(conn, []).append(text)
            return
        text = json.dumps(ev, separators=(",", ":"))
        for conn in self.subscribers.get(ev["asset_id"], ()):
            if not conn.stalled:
                outbox.setdefault(conn, []).append(text)

    async def _flush(self, outbox: dict[SimConn, list[str]]) -> None:
        for conn, texts in outbox.items():
            for text in texts:
                await self._send(conn, text)

    async def broadcast(self, ev: dict[str, Any]) -> int:
        """Send a custom-feature event to every connection that enabled them; returns how many."""
        text = json.dumps(ev, separators=(",", ":"))
        n = 0
        for conn in list(self.conns.values()):
            if conn.custom and not conn.stalled:
                await self._send(conn, text)
                n += 1
        return n

    # -- faults ----------------------------------------------------------------------------------

    def _pick(self, conn_ids: list[int] | None) -> list[SimConn]:
        if conn_ids is None:
            return list(self.conns.values())
        return [self.conns[i] for i in conn_ids if i in self.conns]

    def stall(self, conn_ids: list[int] | None = None, on: bool = True) -> int:
        conns = self._pick(conn_ids)
        for conn in conns:
            conn.stalled = on
        return len(conns)

    async def close(self, conn_ids: list[int] | None = None) -> int:
        conns = self._pick(conn_ids)
        for conn in conns:
            await conn.ws.close()
        return len(conns)

    async def garbage(self, count: int = len(GARBAGE), conn_ids: list[int] | None = None) -> int:
        conns = self._pick(conn_ids)
        for conn in conns:
            for i in range(count):
                await self._send(conn, GARBAGE[i % len(GARBAGE)])
        return count * len(conns)

    async def inject(self, texts: list[str], conn_ids: list[int] | None = None) -> int:
        """Send these frames verbatim (a fuzzer's, a test's) to the connections; returns how many."""
        conns = self._pick(conn_ids)
        for conn in conns:
            for text in texts:
                await self._send(conn, text)
        return len(texts) * len(conns)

    def slow(self, factor: float) -> None:
        """Scale the event rate (0.1 = ten times slower, 0 = no events)."""
        self.rate_factor = max(0.0, factor)

    async def resolve(self, markets: list[SimMarket]) -> list[SimMarket]:
        ts = str(self.now_ms())
        for m in markets:
            if m.closed:
                continue
            await self.broadcast(self.sim.resolve(m, ts))
        return markets

    async def new_markets(self, n: int) -> list[SimMarket]:
        ts = str(self.now_ms())
        made = [self.sim.add_market(ts) for _ in range(n)]
        for m in made:
            await self.broadcast(self.sim.new_market_event(m, ts))
        return made

    def connection_sizes(self) -> list[int]:
        return sorted((len(c.assets) for c in self.conns.values()), reverse=True)

    def stats(self) -> dict[str, Any]:
        return {
            "connections": [
                {
                    "id": c.id,
                    "assets": len(c.assets),
                    "stalled": c.stalled,
                    "custom": c.custom,
                    "sent": c.sent,
                    "pings": c.pings,
                    "rejected": c.rejected,
                }
                for c in self.conns.values()
            ],
            "events": self.events,
            "rate_factor": self.rate_factor,
        }
