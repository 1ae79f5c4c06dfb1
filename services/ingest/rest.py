"""Resync by REST: a fresh book from the CLOB's ``GET /book?token_id=``, the WebSocket as fallback.

A hash mismatch under an asset's pinned rule asks for a resync (hashcheck.py, at most one per
asset per ``resync_interval``). ``Resyncer`` fetches the asset's book over REST and applies it as
the asset's state (``Router.apply_book``): no unsubscribe/resubscribe, so the connection and its
other assets are left alone. When REST is disabled (``rest_url: ""``) or the fetch fails, it
resubscribes the asset on its WebSocket instead (the server then sends the book).

``RestClient`` never raises: each failure is counted by reason (``http``, ``timeout``,
``connection``, ``bad_body``) and starts an exponential backoff with equal jitter, during which
requests are not sent (``backoff``); requests are spaced to ``rate`` a second, and one that would
wait longer than ``max_wait`` for its turn is not sent either (``busy``). Either way the caller
falls back to resubscribing.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
import msgspec

from services.ingest.protocol import BookEvent, Level, Num
from services.ingest.router import Router
from shared.backoff import Backoff
from shared.clock import Clock, RealClock

FailReason = Literal["http", "timeout", "connection", "bad_body", "backoff", "busy"]
FAIL_REASONS: tuple[FailReason, ...] = ("http", "timeout", "connection", "bad_body", "backoff", "busy")


class RestBook(msgspec.Struct, forbid_unknown_fields=False):
    """The CLOB's ``GET /book`` body. Strings verbatim: they are hashed as sent."""

    market: str
    asset_id: str
    timestamp: Num
    hash: str
    bids: list[Level]
    asks: list[Level]
    min_order_size: str | None = None
    tick_size: str | None = None
    neg_risk: bool | None = None
    last_trade_price: str | None = None

    def as_event(self) -> BookEvent:
        """The book as the router applies a WebSocket one."""
        return BookEvent(
            asset_id=self.asset_id,
            market=self.market,
            bids=self.bids,
            asks=self.asks,
            timestamp=self.timestamp,
            hash=self.hash,
            tick_size=self.tick_size,
            last_trade_price=self.last_trade_price,
            min_order_size=self.min_order_size,
            neg_risk=self.neg_risk,
        )


_BOOK = msgspec.json.Decoder(RestBook)


def parse_book(body: bytes, asset: str) -> RestBook | None:
    """The body of ``/book?token_id=asset``; None when it is not that asset's book."""
    try:
        book = _BOOK.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return book if book.asset_id == asset else None


@dataclass(slots=True)
class RestStats:
    requests: int = 0  # sent
    books: int = 0  # good books received
    failures: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAIL_REASONS, 0))


class RestClient:
    """``GET {base_url}/book?token_id=``, rate-limited, with backoff after a failure."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        base_url: str,
        *,
        rate: float = 10.0,
        timeout: float = 5.0,
        max_wait: float = 5.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.session = session
        self.url = base_url.rstrip("/") + "/book"
        self.interval = 1.0 / rate
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.max_wait = max_wait
        self.clock: Clock = clock or RealClock()
        self.backoff = Backoff(
            backoff_base, backoff_cap, clock=self.clock, rng=(rng or random.Random()).random
        )
        self.stats = RestStats()
        self._next_at = -1e18  # when the next request may go
        self._blocked_until = -1e18  # backing off until then

    def _fail(self, reason: FailReason) -> None:
        self.stats.failures[reason] += 1
        if reason in ("backoff", "busy"):
            return
        self._blocked_until = self.clock.monotonic() + self.backoff.next_delay()

    async def book(self, asset: str) -> RestBook | None:
        """The asset's book now; None (counted by reason) when it could not be had."""
        now = self.clock.monotonic()
        if now < self._blocked_until:
            self._fail("backoff")
            return None
        wait = self._next_at - now
        if wait > self.max_wait:
            self._fail("busy")
            return None
        self._next_at = max(now, self._next_at) + self.interval
        if wait > 0:
            await self.clock.sleep(wait)
        self.stats.requests += 1
        try:
            async with self.session.get(self.url, params={"token_id": asset}, timeout=self.timeout) as resp:
                if resp.status != 200:
                    self._fail("http")
                    return None
                body = await resp.read()
        except TimeoutError:
            self._fail("timeout")
            return None
        except (aiohttp.ClientError, OSError):
            self._fail("connection")
            return None
        book = parse_book(body, asset)
        if book is None:
            self._fail("bad_body")
            return None
        self.backoff.reset()
        self.stats.books += 1
        return book


Resubscribe = Callable[[str, str], Awaitable[bool]]  # (connection id, asset) -> sent


class Resyncer:
    """What ``HashChecker`` calls on a mismatch: REST first, the WebSocket as fallback."""

    def __init__(self, router: Router, rest: RestClient | None, resubscribe: Resubscribe) -> None:
        self.router = router
        self.rest = rest
        self.resubscribe = resubscribe
        self.paths = {"rest": 0, "resubscribe": 0}  # resyncs done, by path
        self.failed = 0  # neither path could be taken (the connection was down)
        self.tasks: set[asyncio.Task[str]] = set()

    def request(self, conn_id: str, asset: str) -> None:
        task = asyncio.get_running_loop().create_task(self.resync(conn_id, asset))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def resync(self, conn_id: str, asset: str) -> str:
        """Resync one asset; returns the path taken ("rest", "resubscribe" or "")."""
        if self.rest is not None:
            book = await self.rest.book(asset)
            if book is not None and self.router.apply_book(book.as_event()):
                self.paths["rest"] += 1
                return "rest"
        st = self.router.assets.get(asset)
        if st is None:
            return ""  # no longer followed
        if await self.resubscribe(st.owner or conn_id, asset):
            self.paths["resubscribe"] += 1
            return "resubscribe"
        self.failed += 1
        return ""

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
