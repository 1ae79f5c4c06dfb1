"""One Polymarket WebSocket connection: subscribe, PING every 10 s, a data-silence watchdog, and
reconnect with capped exponential backoff and jitter.

Health is data, not PONG: a connection carrying too many assets is observed to stall silently
while PING/PONG still works, so when no event arrived for ``silence_timeout`` the connection is
dropped, reopened and resubscribed (with only its live assets).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import aiohttp

from services.ingest.protocol import initial_subscribe_frame, operation_frame

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


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Capped exponential backoff with equal jitter: half fixed, half random (no storms)."""
    ceiling = min(cap, base * (2.0 ** min(attempt, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


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
    ) -> None:
        self.id = conn_id
        self.url = url
        self.session = session
        self.assets_provider = assets_provider
        self.on_frame = on_frame
        self.ping_interval = ping_interval
        self.silence_timeout = silence_timeout
        self.connect_timeout = connect_timeout
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.custom_features = custom_features
        self.on_connected = on_connected
        self.rng = rng or random.Random()
        self.stats = ConnStats()
        self.subscribed: set[str] = set()  # what the server holds for this socket now
        self.delivered = asyncio.Event()  # set once the first data frame arrived
        self.created_at = time.monotonic()
        self.last_data = 0.0
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
        attempt = 0
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
            attempt = 0 if got_data else attempt + 1
            delay = backoff_delay(attempt, self.backoff_base, self.backoff_cap, self.rng)
            self.stats.reconnects += 1
            log.info("%s: reconnecting in %.2f s (attempt %d)", self.id, delay, attempt)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _session_once(self) -> bool:
        """One socket's life; returns whether it delivered data."""
        assets = self.assets_provider()
        if not assets:
            await asyncio.wait_for(self._stop.wait(), self.silence_timeout)
            return False
        ws = await self.session.ws_connect(
            self.url,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=2.0),
            autoping=True,
            max_msg_size=0,
        )
        self._ws = ws
        self.stats.connects += 1
        ping: asyncio.Task[None] | None = None
        got = False
        try:
            await ws.send_str(initial_subscribe_frame(assets, self.custom_features))
            self.subscribed = set(assets)
            if self.on_connected is not None:
                self.on_connected(self, assets)
            ping = asyncio.get_running_loop().create_task(self._ping(ws))
            last_data = time.monotonic()
            while not self._stop.is_set():
                remaining = self.silence_timeout - (time.monotonic() - last_data)
                if remaining <= 0:
                    self.stats.silence_resets += 1
                    log.warning("%s: no data for %.1f s: reconnecting", self.id, self.silence_timeout)
                    return got
                try:
                    msg = await ws.receive(timeout=remaining)
                except TimeoutError:
                    continue
                if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                    self.stats.frames += 1
                    data = msg.data
                    if data == "PONG":
                        self.stats.pongs += 1
                        continue
                    if self.on_frame(self.id, data):
                        self.stats.data_frames += 1
                        last_data = self.last_data = time.monotonic()
                        if not got:
                            got = True
                            self.delivered.set()
                else:  # CLOSE, CLOSING, CLOSED, ERROR
                    if msg.type is aiohttp.WSMsgType.ERROR:
                        self.stats.errors += 1
                    log.info("%s: socket closed (%s)", self.id, msg.type.name)
                    return got
            return got
        finally:
            if ping is not None:
                ping.cancel()
                await asyncio.gather(ping, return_exceptions=True)
            self._ws = None
            self.subscribed = set()
            await ws.close()

    async def _ping(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        while not ws.closed:
            await asyncio.sleep(self.ping_interval)
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
