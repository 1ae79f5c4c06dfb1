"""The simulator's HTTP side: Gamma's ``GET /markets/keyset`` paged with ``after_cursor``, the
CLOB's ``GET /book?token_id=``, and ``/control/*`` to trigger faults.

Gamma as upstream: ``limit`` items per page, ``next_cursor`` absent on the last page, a plain
``cursor=`` parameter is ignored (page 1 again), ``closed`` defaults to false, and
``clobTokenIds`` is a JSON-encoded string. ``/book`` answers the asset's current book in the
CLOB's REST shape (``market, asset_id, timestamp, hash, bids, asks, min_order_size, tick_size,
neg_risk, last_trade_price``: unlike the WebSocket's, with ``min_order_size`` and ``neg_risk``);
an unknown token is a 404, as upstream. ``POST /control/rest {"fault": "error"|"garbage"|""}``
makes it answer 500, or 200 with a body that is not a book, until turned off.
"""

from __future__ import annotations

import base64
from typing import Any

from aiohttp import web

from services.simulator.polymarket import PolymarketServer


def _cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"m:{index}".encode()).decode()


def _uncursor(cursor: str) -> int:
    try:
        return int(base64.urlsafe_b64decode(cursor.encode()).decode().split(":", 1)[1])
    except (ValueError, IndexError):
        raise web.HTTPBadRequest(text="bad after_cursor") from None


class GammaServer:
    def __init__(self, ws: PolymarketServer, *, page_limit: int = 100) -> None:
        self.ws = ws
        self.page_limit = page_limit
        self.requests = 0
        self.book_requests = 0
        self.rest_fault = ""  # "error": 500, "garbage": a body that is not a book
        self.app = web.Application()
        self.app.router.add_get("/markets/keyset", self.keyset)
        self.app.router.add_get("/book", self.book)
        self.app.router.add_get("/control/stats", self.control_stats)
        self.app.router.add_post("/control/{action}", self.control)

    async def keyset(self, request: web.Request) -> web.Response:
        self.requests += 1
        q = request.query
        try:
            limit = max(1, min(self.page_limit, int(q.get("limit", self.page_limit))))
        except ValueError:
            raise web.HTTPBadRequest(text="bad limit") from None
        closed = q.get("closed", "false").lower() == "true"
        start = _uncursor(q["after_cursor"]) if "after_cursor" in q else -1
        sim = self.ws.sim
        page: list[dict[str, Any]] = []
        last = start
        for m in sim.markets:
            if m.index <= start or m.closed != closed:
                continue
            if len(page) == limit:
                break
            page.append(sim.gamma_market(m))
            last = m.index
        body: dict[str, Any] = {"markets": page}
        more = any(m.index > last and m.closed == closed for m in sim.markets)
        if page and more:
            body["next_cursor"] = _cursor(last)
        return web.json_response(body)

    async def book(self, request: web.Request) -> web.Response:
        self.book_requests += 1
        if self.rest_fault == "error":
            return web.json_response({"error": "internal error"}, status=500)
        if self.rest_fault == "garbage":
            return web.Response(text='{"market":"0x1","bids":[{"price":', content_type="application/json")
        token = request.query.get("token_id", "")
        if not token:
            return web.json_response({"error": "Invalid token id"}, status=400)
        asset = self.ws.sim.assets.get(token)
        if asset is None:
            return web.json_response({"error": "No orderbook exists for the requested token id"}, status=404)
        return web.json_response(asset.book_doc())

    async def control_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.ws.stats())

    async def control(self, request: web.Request) -> web.Response:
        action = request.match_info["action"]
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            raise web.HTTPBadRequest(text="body must be JSON") from None
        conns = body.get("connections")
        ws = self.ws
        if action == "stall":
            n = ws.stall(conns, on=bool(body.get("on", True)))
        elif action == "close":
            n = await ws.close(conns)
        elif action == "garbage":
            n = await ws.garbage(int(body.get("count", 7)), conns)
        elif action == "slow":
            ws.slow(float(body.get("factor", 0.1)))
            n = 1
        elif action == "resolve":
            open_ = ws.sim.open_markets()
            n = len(await ws.resolve(open_[: int(body.get("markets", 1))]))
        elif action == "rest":
            self.rest_fault = str(body.get("fault", ""))
            n = 1
        elif action == "new_markets":
            n = len(await ws.new_markets(int(body.get("count", 1))))
        else:
            raise web.HTTPNotFound(text=f"unknown control action {action!r}")
        return web.json_response({"action": action, "affected": n})
