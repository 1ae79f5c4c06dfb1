"""One Polymarket WebSocket connection: subscribe, PING every 10 s, a data-silence watchdog, and
reconnect with capped exponential backoff and jitter (``shared.backoff``), all on the injected clock.

Health is data, not PONG: a connection carrying too many assets is observed to stall silently
while PING/PONG still works, so when no event arrived for ``silence_timeout`` the connection is
dropped, reopened and resubscribed (with only its live assets). The watchdog is a task of its own
that sleeps until the silence would be due: a frame only stamps ``last_data`` (a timeout on each
receive cost ~15 % of the process at 50 k updates/s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from services.ingest.protocol import initial_subscribe_frame, operation_frame
from shared.backoff import Backoff, sleep_or_wake
from shared.clock import Clock, RealClock

log = logging.getLogger("poolwire.ingest.conn")

FrameHandler = Callable[[str, str | bytes], int]  # (connection id, frame) -> events it held
AssetsProvider = Callable[[], list[str]]


@dataclass(slots=True)
class ConnStats:
    connects: int = 0
    reconnects: int = 0
    silence_resets: int = 0
    errors: int = 0
    frames: int = 0
    data_frames: int = 0
    pings: int = 0
    pongs: int = 0


class Connection:
    def __init__(
        self,
        conn_id: str,
        url: str,
        session: aiohttp.ClientSession,
        assets_provider: AssetsProvider,
        on_frame: FrameHandler,
        *,
        ping_interval: float = 10.0,
        silence_timeout: float = 60.0,
        connect_timeout: float = 10.0,
        backoff_base: float = 0.5,
        backoff_cap: float = 30.0,
        custom_features: bool = False,
        on_connected: Callable[[Connection, list[str]], None] | None = None,
        rng: random.Random | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.id = conn_id
        self.url = url
        self.session = session
        self.assets_provider = assets_provider
        self.on_frame = on_frame
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.connect_timeout = connect_timeout
        self.custom_features = custom_features
        self.on_connected = on_connected
        self.clock: Clock = clock or RealClock()
        self.backoff = Backoff(
            backoff_base, backoff_cap, clock=self.clock, rng=(rng or random.Random()).random
        )
        self.stats = ConnStats()
        self.subscribed: set[str] = set()  # what the server holds for this socket now
        self.delivered = asyncio.Event()  # set once the first data frame arrived
        self.created_at = self.clock.monotonic()
        self.last_data = 0.0  # clock.monotonic() of the last data frame
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    @property
    def is_live(self) -> bool:
        return self._ws is not None and not self._ws.closed

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"ingest-conn:{self.id}")

    async def _run(self) -> None:
        while not self._stop.is_set():
            got_data = False
            try:
                got_data = await self._session_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # network, handshake, protocol: all mean "try again later"
                self.stats.errors += 1
                log.warning("%s: connection failed: %r", self.id, exc)
            if self._stop.is_set():
                break
            if got_data:
                self.backoff.reset()
            delay = self.backoff.next_delay()
            self.stats.reconnects += 1
            log.info("%s: reconnecting in %.2f s (failure %d)", self.id, delay, self.backoff.failures)
            await sleep_or_wake(self.clock, delay, self._stop)

    async def _session_once(self) -> bool:
        """One socket's life; returns whether it delivered data."""
        assets = self.assets_provider()
        if not assets:
            await sleep_or_wake(self.clock, self.silence_timeout, self._stop)
            return False
        ws = await asyncio.wait_for(
            self.session.ws_connect(
                self.url,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
                autoping=True,
                max_msg_size=0,
            ),
            self.connect_timeout,
        )
        self._ws = ws
        self.stats.connects += 1
        helpers: list[asyncio.Task[None]] = []
        got = False
        stats = self.stats
        monotonic = self.clock.monotonic
        on_frame = self.on_frame
        try:
            await ws.send_str(initial_subscribe_frame(assets, self.custom_features))
            self.subscribed = set(assets)
            if self.on_connected is not None:
                self.on_connected(self, assets)
            self.last_data = monotonic()
            loop = asyncio.get_running_loop()
            helpers = [loop.create_task(self._ping(ws)), loop.create_task(self._watch_silence(ws))]
            while not self._stop.is_set():
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                    stats.frames += 1
                    data = msg.data
                    if data == "PONG":
                        stats.pongs += 1
                        continue
                    if on_frame(self.id, data):
                        stats.data_frames += 1
                        self.last_data = monotonic()
                        if not got:
                            got = True
                            self.delivered.set()
                else:  # CLOSE, CLOSING, CLOSED, ERROR (the watchdog closes a silent socket)
                    if msg.type is aiohttp.WSMsgType.ERROR:
                        stats.errors += 1
                    log.info("%s: socket closed (%s)", self.id, msg.type.name)
                    return got
            return got
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            self._ws = None
            self.subscribed = set()
            await ws.close()

    async def _watch_silence(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Close the socket once no data frame came for ``silence_timeout`` (the session ends)."""
        while not ws.closed:
            remaining = self.silence_timeout - (self.clock.monotonic() - self.last_data)
            if remaining <= 0:
                self.stats.silence_resets += 1
                log.warning("%s: no data for %.1f s: reconnecting", self.id, self.silence_timeout)
                await ws.close()
                return
            await self.clock.sleep(remaining)

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await self.clock.sleep(self.ping_interval)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str("PING")
                self.stats.pings += 1

    async def subscribe(self, assets: Iterable[str]) -> int:
        """Dynamic subscribe on the live socket (never an asset it already holds)."""
        ws = self._ws
        new = [a for a in assets if a not in self.subscribed]
        if ws is None or ws.closed or not new:
            return 0  # the next (re)connect subscribes whatever the provider lists
        try:
            await ws.send_str(operation_frame("subscribe", new))
        except (ConnectionError, RuntimeError) as exc:
            log.warning("%s: subscribe failed: %r", self.id, exc)
            return 0
        self.subscribed.update(new)
        return len(new)

    async def resync(self, asset: str) -> bool:
        """Fetch a fresh book: unsubscribe, then subscribe again (the server sends the book)."""
        ws = self._ws
        if ws is None or ws.closed or asset not in self.subscribed:
            return False
        try:
            await ws.send_str(operation_frame("unsubscribe", [asset]))
            await ws.send_str(operation_frame("subscribe", [asset]))
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), timeout)
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
