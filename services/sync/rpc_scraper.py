"""The JSON-RPC scraper: pool state pinned to one block, in batched eth_calls.

One ``scrape()`` pins the node's latest block (number + hash), or the block it is given (``at``:
pools added while live are read at the block our state is at; ``PinUnavailable`` if the node no
longer has it), and reads every pool at that block. Calls name the block by number and the block's hash is checked again at the end (a scrape that a
reorg crossed is done again); with ``pin_by_hash`` (config ``sync.pin_by_hash``) they name it by
hash (EIP-1898 ``{"blockHash": ...}``), so a reorg cannot mix two chains into one snapshot even
in between (exact on any node, but ~10x slower on anvil):

- V2: ``getReserves()``.
- V3: ``slot0()``, ``liquidity()``, ``tickSpacing()``, ``fee()``, ``token0()``, ``token1()``; then
  the tick bitmap words (word = (tick // spacing) >> 8), every word of the usable range or, with
  ``word_radius``, the words around the price plus the two extreme words (full-range positions);
  then ``ticks(i)`` for every initialized tick.
- V4: through StateView: ``getSlot0``, ``getLiquidity``, ``getTickBitmap``, ``getTickLiquidity``
  (tick spacing and fee from the pool's spec, the PoolKey).

Pools go in batches of ``batch_size`` (the seed's 500 V2 / 50 V3-V4), ``concurrency`` batches at a
time; each batch is three rounds at most (state, bitmap words, ticks), each round one JSON-RPC
batch request (split by the client at its ``max_batch``). A pool whose calls fail is retried in a
later attempt, then skipped and reported in ``failed``; progress (``progress``: done/total, moved
after every batch, exported as gauges) is logged with done/total, rate and ETA.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from services.sync.pool_calls import PoolCalls, PoolJob, read_words, signed
from services.sync.rpc import Header, RpcClient, RpcError, RpcUnavailable
from services.sync.scraper import PinUnavailable, ScrapeProgress, ScrapeResult, pool_key
from shared.clock import Clock
from shared.messages import PoolSpec

log = logging.getLogger("poolwire.sync.scrape")


@dataclass(slots=True)
class ScrapeStats:
    pools_done: int = 0
    pools_failed: int = 0
    pools_retried: int = 0
    calls: int = 0
    call_retries: int = 0
    round_trips: int = 0
    ticks: int = 0


class RpcScraper(PoolCalls):
    can_pin = True  # scrape(at=(number, hash)): pools added while live, at the block our state is at

    def __init__(
        self,
        rpc: RpcClient,
        *,
        state_view: str = "",
        concurrency: int = 4,
        retries: int = 2,
        word_radius: int = 0,
        progress_interval: float = 5.0,
        pin_by_hash: bool = False,
        on_progress: Callable[[ScrapeProgress], None] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.rpc = rpc
        self.clock: Clock = clock or rpc.clock
        self.state_view = state_view
        self.concurrency = max(1, concurrency)
        self.retries = retries
        self.word_radius = word_radius
        self.progress_interval = progress_interval
        self.pin_by_hash = pin_by_hash
        self.repins = 0
        self.stats = ScrapeStats()
        self.progress = ScrapeProgress()
        self.on_progress = on_progress  # called after every batch
        self.pinned: Header | None = None

    async def pin(self, at: tuple[int, bytes] | None = None) -> Header:
        """The latest block, or ``at`` (number, hash) if it is still canonical (else PinUnavailable)."""
        tag = "latest" if at is None else hex(at[0])
        raw = await self.rpc.call("eth_getBlockByNumber", [tag, False], retry_errors=True)
        if at is None:
            return Header.parse(raw)
        header = Header.parse(raw) if raw is not None else None
        if header is None or header.hash != at[1]:
            raise PinUnavailable(f"block {at[0]} 0x{at[1].hex()[:10]} is not canonical on the node")
        return header

    async def scrape(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None = None
    ) -> ScrapeResult:
        """Every pool at one block: the latest, or ``at`` (number, hash: the block our state is at,
        for pools added while live). Calls name the block by number (by hash with ``pin_by_hash``:
        EIP-1898, exact but ~10x slower on anvil); the block's hash is checked again at the end,
        and a scrape that a reorg crossed is done again at the new tip (``at``: PinUnavailable)."""
        for attempt in range(self.retries + 2):
            result = await self._scrape_pinned(specs, batch_size, at)
            if self.pin_by_hash or not result.pools:
                return result
            raw = await self.rpc.call("eth_getBlockByNumber", [hex(result.block), False], retry_errors=True)
            result.round_trips += 1
            if raw is not None and Header.parse(raw).hash == result.hash:
                return result
            if at is not None:
                raise PinUnavailable(f"block {at[0]} was reorged away during the scrape")
            self.repins += 1
            log.warning(
                "block %d was reorged during the scrape (attempt %d): scraping again",
                result.block,
                attempt + 1,
            )
        return result

    async def _scrape_pinned(
        self, specs: Sequence[PoolSpec], batch_size: int, at: tuple[int, bytes] | None
    ) -> ScrapeResult:
        header = await self.pin(at)
        self.pinned = header
        result = ScrapeResult(block=header.number, hash=header.hash, timestamp=header.timestamp)
        requests0 = self.rpc.stats.requests
        tag: Any = {"blockHash": "0x" + header.hash.hex()} if self.pin_by_hash else hex(header.number)
        jobs = [PoolJob(spec, pool_key(spec)) for spec in specs]
        total = len(jobs)
        done = 0
        progress = self.progress
        progress.done, progress.total, progress.block = 0, total, header.number
        t0 = self.clock.monotonic()
        last_log = t0
        sem = asyncio.Semaphore(self.concurrency)
        kind = "/".join(sorted({s.protocol for s in specs}))

        async def run(batch: list[PoolJob]) -> None:
            nonlocal done, last_log
            async with sem:
                try:
                    await self._batch(batch, header.number, tag)
                except (RpcUnavailable, RpcError) as exc:
                    for job in batch:
                        job.error = f"batch failed: {exc}"
            done += sum(1 for j in batch if j.pool is not None)
            progress.done = done
            if self.on_progress is not None:
                self.on_progress(progress)
            now = self.clock.monotonic()
            if now - last_log >= self.progress_interval:
                last_log = now
                rate = done / (now - t0)
                eta = (total - done) / rate if rate else float("inf")
                log.info(
                    "scrape %s at block %d: %d/%d pools, %.1f pools/s, ETA %.0f s",
                    kind, header.number, done, total, rate, eta,
                )  # fmt: skip

        todo = jobs
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.pools_retried += len(todo)
                log.info("scrape: retrying %d pool(s) (attempt %d)", len(todo), attempt + 1)
            for job in todo:
                job.error = ""
                job.pool = None
            batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
            await asyncio.gather(*(run(b) for b in batches))
            todo = [j for j in todo if j.pool is None]
            if not todo:
                break
        for job in jobs:
            if job.pool is not None:
                result.pools.append(job.pool)
            else:
                result.failed.append((job.spec, job.error or "failed"))
        self.stats.pools_done += len(result.pools)
        self.stats.pools_failed += len(result.failed)
        result.round_trips = self.rpc.stats.requests - requests0 + 1
        self.stats.round_trips += result.round_trips
        elapsed = self.clock.monotonic() - t0
        if total:
            log.info(
                "scraped %d/%d %s pool(s) at block %d in %.2f s (%.1f pools/s, %d round trips, %d failed)",
                len(result.pools), total, kind, header.number, elapsed, len(result.pools) / max(elapsed, 1e-9),
                result.round_trips, len(result.failed),
            )  # fmt: skip
        return result

    # -- one batch ------------------------------------------------------------------------------

    async def _calls(self, calls: list[tuple[str, str]], tag: Any) -> list[Any]:
        """eth_calls in batch requests; calls answered with an error are sent again (``retries``
        times), so one transient error among a pool's hundreds of calls does not fail the pool."""
        self.stats.calls += len(calls)
        payload = [("eth_call", [{"to": to, "data": data}, tag]) for to, data in calls]
        replies = await self.rpc.batch(payload)
        for _ in range(self.retries):
            again = [i for i, r in enumerate(replies) if isinstance(r, RpcError)]
            if not again:
                break
            self.stats.calls += len(again)
            self.stats.call_retries += len(again)
            for i, reply in zip(again, await self.rpc.batch([payload[i] for i in again]), strict=True):
                replies[i] = reply
        return replies

    async def _batch(self, jobs: list[PoolJob], block: int, tag: Any) -> None:
        # round 1: the pool's own state
        calls: list[tuple[str, str]] = []
        spans: list[tuple[PoolJob, int, int]] = []
        for job in jobs:
            start = len(calls)
            try:
                calls += self._state_calls(job)
            except ValueError as exc:
                job.error = str(exc)
                continue
            spans.append((job, start, len(calls)))
        replies = await self._calls(calls, tag)
        deep: list[PoolJob] = []
        for job, a, b in spans:
            try:
                job.pool = self._parse_state(job, replies[a:b], block)
            except (RpcError, ValueError) as exc:
                job.error = str(exc)
                continue
            if job.pool.protocol != "v2":
                deep.append(job)
        if not deep:
            return
        # round 2: bitmap words; round 3: the initialized ticks
        calls, spans = [], []
        for job in deep:
            pool = job.pool
            assert pool is not None
            job.words = self._word_list(pool)
            start = len(calls)
            calls += [self._bitmap_call(job, w) for w in job.words]
            spans.append((job, start, len(calls)))
        replies = await self._calls(calls, tag)
        tick_calls: list[tuple[str, str]] = []
        tick_spans: list[tuple[PoolJob, list[int], int]] = []
        for job, a, b in spans:
            pool = job.pool
            assert pool is not None
            try:
                bitmaps = [read_words(r, 1)[0] for r in replies[a:b]]
            except (RpcError, ValueError) as exc:
                job.pool, job.error = None, f"tick bitmap: {exc}"
                continue
            ticks = []
            for word, bits in zip(job.words, bitmaps, strict=True):
                while bits:
                    low = bits & -bits
                    ticks.append(((word << 8) + low.bit_length() - 1) * pool.tick_spacing)
                    bits ^= low
            tick_spans.append((job, ticks, len(tick_calls)))
            tick_calls += [self._tick_call(job, t) for t in ticks]
        replies = await self._calls(tick_calls, tag) if tick_calls else []
        for job, ticks, a in tick_spans:
            pool = job.pool
            assert pool is not None
            try:
                loaded = []
                for i, t in enumerate(ticks):
                    gross, net = read_words(replies[a + i], 2)
                    loaded.append((t, gross, signed(net, 128)))
                pool.set_ticks(loaded)
                self.stats.ticks += len(loaded)
            except (RpcError, ValueError) as exc:
                job.pool, job.error = None, f"ticks: {exc}"
