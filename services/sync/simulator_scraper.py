"""The ExEx simulator's scrape socket as a :class:`Scraper`: pool state from the simulated chain
(``python -m services.simulator.exex_server --scrape-socket PATH``), for tests and the demo.

Never a default: config names it (``sync.scraper: simulator`` and ``sync.scrape_socket``). The
request and reply are shared/exex.py's ``ScrapeRequest`` / ``ScrapeReply`` on the ExEx framing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from services.sync.pool import Pool
from services.sync.scraper import NOT_ON_CHAIN, ScrapeProgress, ScrapeResult, pool_key
from shared.exex import SCRAPE_REPLY_DECODER, FrameReader, ScrapedPoolState, ScrapeRequest, encode_scrape
from shared.messages import PoolSpec


def pool_from_state(state: ScrapedPoolState, block: int, spec: PoolSpec | None = None) -> Pool:
    pool = Pool(
        state.pool,
        state.protocol,
        snapshot_block=block,
        fee=state.fee or (spec.fee if spec else 0),
        tick_spacing=state.tick_spacing or (spec.tick_spacing if spec else 0),
        token0=state.token0 or (spec.currency0 if spec else ""),
        token1=state.token1 or (spec.currency1 if spec else ""),
    )
    pool.reserve0 = int(state.reserve0)
    pool.reserve1 = int(state.reserve1)
    pool.sqrt_price_x96 = int(state.sqrt_price_x96)
    pool.tick = state.tick
    pool.liquidity = int(state.liquidity)
    if pool.tick_spacing:
        pool.set_ticks((t, int(g), int(n)) for t, g, n in state.ticks)
    return pool


class SimulatorScraper:
    """Scrapes the simulator's chain through its scrape socket (``exex_server --scrape-socket``).
    The socket serves the simulator's head only: ``at`` is ignored (``can_pin`` is False)."""

    can_pin = False

    def __init__(self, path: str, retries: int = 2, timeout: float = 10.0) -> None:
        self.path = path
        self.retries = retries
        self.timeout = timeout
        self.progress = ScrapeProgress()

    async def _request(self, keys: list[bytes]) -> tuple[int, bytes, list[ScrapedPoolState]]:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), self.timeout)
        try:
            writer.write(encode_scrape(ScrapeRequest(seq=1, pools=keys)))
            await writer.drain()
            frames = FrameReader(max_frame=1 << 30)
            while True:
                data = await asyncio.wait_for(reader.read(1 << 20), self.timeout)
                if not data:
                    raise ConnectionError("scrape socket closed before the reply")
                for payload in frames.feed(data):
                    reply = SCRAPE_REPLY_DECODER.decode(payload)
                    return reply.block, reply.hash, reply.pools
        finally:
            writer.close()

    async def scrape(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        result = ScrapeResult(block=0, hash=b"")
        by_key = {pool_key(spec): spec for spec in specs}
        todo = list(by_key)
        progress = self.progress
        progress.done, progress.total = 0, len(todo)
        for attempt in range(self.retries + 1):
            missing: list[bytes] = []
            for i in range(0, len(todo), batch_size):
                batch = todo[i : i + batch_size]
                try:
                    block, bhash, states = await self._request(batch)
                except (OSError, ConnectionError, TimeoutError, ValueError) as exc:
                    missing.extend(batch)
                    reason = f"scrape request failed: {exc!r}"
                    if attempt == self.retries:
                        result.failed.extend((by_key[k], reason) for k in batch)
                    continue
                result.round_trips += 1
                if block >= result.block:
                    result.block, result.hash = block, bhash
                for state in states:
                    spec = by_key[state.pool]
                    if not state.found or state.protocol != spec.protocol:
                        missing.append(state.pool)
                        if attempt == self.retries:
                            result.failed.append((spec, f"{NOT_ON_CHAIN}: not found at the scrape block"))
                        continue
                    result.pools.append(pool_from_state(state, block, spec))
                    progress.done += 1
                progress.block = block
            todo = missing
            if not todo:
                break
        return result
