"""The JSON-RPC log follower: an event source beside the ExEx socket, for any Ethereum node.

A ``newHeads`` subscription (``ws_url``), or polling ``eth_getBlockByNumber("latest")`` every
``poll_interval``, is only the *trigger*. On each trigger the follower:

1. checks that its head is still canonical: if not (a reorg, whether or not the node ever says
   ``removed: true``), it walks back to the common ancestor, emits a revert for each of its blocks
   above it (top down), and continues from the ancestor;
2. fetches the headers from its head to the tip in JSON-RPC batches, checking the parent-hash
   chain (a break means the chain moved meanwhile: the next trigger reconciles);
3. fetches the logs: one block -> ``eth_getLogs`` by block hash; a range (catch-up) ->
   ``eth_getLogs`` over ``logs_range`` blocks at most (halved when the node refuses), every log's
   block hash checked against the headers;
4. decodes (eth_logs.py) V2 Sync/Mint/Burn/Swap, V3 Initialize/Mint/Burn/Swap and V4 Initialize/
   ModifyLiquidity/Swap into :class:`PoolUpdate` and delivers each block (empty ones too) in order.

RPC failures are counted and retried with backoff, never fatal. A reorg deeper than the hashes
kept (``keep``) requests a resync.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from services.sync.buffer import Block
from services.sync.eth_logs import TOPICS, decode_log
from services.sync.rpc import Header, RpcClient, RpcError, hex_bytes, hex_int
from services.sync.source import BlockSource
from shared.backoff import sleep_or_wake
from shared.clock import Clock
from shared.exex import PoolUpdate, encode_payload

log = logging.getLogger("poolwire.sync.follower")


@dataclass(slots=True)
class FollowerStats:
    blocks: int = 0
    logs: int = 0
    reorgs: int = 0
    blocks_reverted: int = 0
    deepest_reorg: int = 0
    rpc_failures: int = 0
    bad_logs: int = 0  # logs that could not be decoded: skipped
    chain_breaks: int = 0  # parent-hash breaks or hash mismatches while fetching: refetched
    range_splits: int = 0  # eth_getLogs ranges halved because the node refused them
    triggers: int = 0


class LogFollower(BlockSource):
    def __init__(
        self,
        rpc: RpcClient,
        *,
        addresses: Callable[[], Sequence[str]],
        capacity: int = 100_000,
        poll_interval: float = 1.0,
        ws_url: str = "",
        logs_range: int = 1000,
        header_batch: int = 200,
        keep: int = 256,
        backoff_initial: float = 0.05,
        backoff_max: float = 5.0,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            capacity=capacity, backoff_initial=backoff_initial, backoff_max=backoff_max, clock=clock
        )
        self.rpc = rpc
        self.addresses = addresses
        self.poll_interval = poll_interval
        self.ws_url = ws_url
        self.logs_range = max(1, logs_range)
        self.header_batch = max(1, header_batch)
        self.keep = max(2, keep)
        self.fstats = FollowerStats()
        self.head: Header | None = None
        self.tip: Header | None = None  # the node's latest block, as of the last trigger
        self.hashes: OrderedDict[int, Header] = OrderedDict()  # our recent canonical blocks
        self._trigger = asyncio.Event()
        self.ws_subscribed = asyncio.Event()  # the node answered our eth_subscribe (newHeads)
        self._ws_task: asyncio.Task[None] | None = None

    # -- anchoring ------------------------------------------------------------------------------

    def anchor(self, header: Header) -> None:
        """Follow from ``header`` (a checkpoint's block): the next block delivered is its child."""
        self.head = header
        self.hashes.clear()
        self.hashes[header.number] = header
        if header.number > self.last_block:
            self.last_block = header.number

    def start_buffering(self, capacity: int | None = None) -> None:
        super().start_buffering(capacity)
        if self.head is not None:
            self.last_block = self.head.number  # the scrape is at or after our head

    # -- loop -----------------------------------------------------------------------------------

    async def close(self) -> None:
        if self._ws_task is not None:
            self._ws_task.cancel()
            await asyncio.gather(self._ws_task, return_exceptions=True)
        await super().close()

    async def _run(self) -> None:
        if self.ws_url:
            self._ws_task = asyncio.get_running_loop().create_task(self._ws_loop(), name="newHeads")
        backoff = self.backoff()
        while True:
            try:
                await self.step()
                backoff.reset()
            except Exception as exc:  # RpcUnavailable, RpcError, or any reply of a shape not foreseen
                self.fstats.rpc_failures += 1
                delay = backoff.next_delay()
                log.warning("follower: %r; retrying in %.2f s", exc, delay)
                await self.clock.sleep(delay)
                continue
            self._trigger.clear()
            await sleep_or_wake(self.clock, self.poll_interval, self._trigger)
            self.fstats.triggers += 1

    async def _ws_loop(self) -> None:
        """newHeads as a trigger only; reconnects with backoff; the polling goes on regardless."""
        backoff = self.backoff()
        while True:
            try:
                async with aiohttp.ClientSession() as session, session.ws_connect(self.ws_url) as ws:
                    await ws.send_json(
                        {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
                    )
                    backoff.reset()
                    async for _msg in ws:
                        self.ws_subscribed.set()
                        self._trigger.set()
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("newHeads subscription %s: %r", self.ws_url, exc)
            self.ws_subscribed.clear()
            await backoff.wait()

    async def _header(self, number: int | str) -> Header | None:
        tag = hex(number) if isinstance(number, int) else number
        raw = await self.rpc.call("eth_getBlockByNumber", [tag, False])
        return None if raw is None else Header.parse(raw)

    async def step(self) -> None:
        """Bring the follower to the node's tip (one trigger's work)."""
        tip = await self._header("latest")
        if tip is None:
            raise ValueError("the node has no latest block")
        self.tip = tip
        if self.head is None:
            self.anchor(tip)
            self.stats.connects += 1
            self.connected.set()
            log.info("following from block %d (%s)", tip.number, tip.hash.hex()[:10])
            return
        self.connected.set()
        if tip.hash == self.head.hash:
            return
        if tip.number <= self.head.number and not await self._reconcile(tip):
            return
        while self.head.number < tip.number:
            to = min(tip.number, self.head.number + self.logs_range)
            outcome = await self._advance(self.head.number + 1, to)
            if outcome == "reorg":
                if not await self._reconcile(tip):
                    return
            elif outcome == "moved":
                return  # the chain moved under us: the next trigger reconciles

    async def _reconcile(self, tip: Header) -> bool:
        """Our head is not canonical (or the chain got shorter): unwind to the common ancestor."""
        head = self.head
        assert head is not None
        k = min(head.number, tip.number)
        while True:
            ours = self.hashes.get(k)
            if ours is None:
                log.error("reorg deeper than the %d block hashes kept (below block %d): resync", self.keep, k)
                self._request_resync(f"reorg deeper than {self.keep} blocks")
                self.anchor(tip)
                return False
            canonical = tip if k == tip.number else await self._header(k)
            if canonical is not None and canonical.hash == ours.hash:
                break
            k -= 1
        depth = head.number - k
        self.fstats.reorgs += 1
        self.fstats.deepest_reorg = max(self.fstats.deepest_reorg, depth)
        log.warning(
            "reorg: block %d is no longer canonical; unwinding %d block(s) to %d", head.number, depth, k
        )
        for number in range(head.number, k, -1):
            gone = self.hashes.pop(number)
            self.fstats.blocks_reverted += 1
            self._on_block(Block(number, gone.hash, gone.parent_hash, True, []))
        self.head = self.hashes[k]
        return True

    async def _advance(self, first: int, last: int) -> str:
        """Fetch and deliver blocks first..last: "ok", "reorg" (our head is not the parent of the
        next block) or "moved" (the chain changed while fetching)."""
        head = self.head
        assert head is not None
        headers: list[Header] = []
        # our head is fetched again in the same batch: a changed hash is a reorg, at no extra cost
        for start in range(first - 1, last + 1, self.header_batch):
            stop = min(last, start + self.header_batch - 1)
            replies = await self.rpc.batch(
                [("eth_getBlockByNumber", [hex(n), False]) for n in range(start, stop + 1)]
            )
            for reply in replies:
                if isinstance(reply, Exception) or reply is None:
                    break
                headers.append(Header.parse(reply))
            if len(headers) < stop - first + 2:
                break
        if not headers or headers[0].hash != head.hash:
            return "reorg"
        prev = head
        good: list[Header] = []
        for h in headers[1:]:
            if h.parent_hash != prev.hash or h.number != prev.number + 1:
                self.fstats.chain_breaks += 1
                break
            good.append(h)
            prev = h
        if not good:
            return "moved"
        by_block = await self._logs(good)
        if by_block is None:
            return "moved"
        buffering = self.mode == "buffering"
        for h in good:
            updates = by_block.get(h.number, [])
            updates.sort(key=PoolUpdate.key)
            raws = [encode_payload(u) for u in updates] if buffering else []
            self.hashes[h.number] = h
            while len(self.hashes) > self.keep:
                self.hashes.popitem(last=False)
            self.head = h
            self.fstats.blocks += 1
            self._on_block(Block(h.number, h.hash, h.parent_hash, False, updates, raws, h.timestamp))
        return "ok" if len(good) == last - first + 1 else "moved"

    async def _logs(self, headers: list[Header]) -> dict[int, list[PoolUpdate]] | None:
        addresses = list(self.addresses())
        out: dict[int, list[PoolUpdate]] = {}
        if not addresses:
            return out
        expected = {h.number: h.hash for h in headers}
        if len(headers) == 1:
            flt: dict[str, Any] = {"blockHash": "0x" + headers[0].hash.hex()}
            entries = await self._get_logs(flt, addresses)
        else:
            entries = await self._get_logs_range(headers[0].number, headers[-1].number, addresses)
        for entry in entries:
            try:
                number = hex_int(entry["blockNumber"])
                if expected.get(number) != hex_bytes(entry["blockHash"]):
                    self.fstats.chain_breaks += 1
                    return None  # the logs are of another branch: refetch after reconciling
                if entry.get("removed"):
                    continue
                update = decode_log(entry)
            except (KeyError, ValueError, TypeError, IndexError) as exc:
                self.fstats.bad_logs += 1
                log.warning("skipped an undecodable log: %r", exc)
                continue
            if update is not None:
                self.fstats.logs += 1
                out.setdefault(number, []).append(update)
        return out

    async def _get_logs(self, flt: dict[str, Any], addresses: list[str]) -> list[dict[str, Any]]:
        result = await self.rpc.call("eth_getLogs", [{**flt, "address": addresses, "topics": [TOPICS]}])
        if not isinstance(result, list):
            raise ValueError(f"eth_getLogs returned {type(result).__name__}")
        return result

    async def _get_logs_range(self, first: int, last: int, addresses: list[str]) -> list[dict[str, Any]]:
        try:
            return await self._get_logs({"fromBlock": hex(first), "toBlock": hex(last)}, addresses)
        except RpcError as exc:
            if first == last:
                raise
            self.fstats.range_splits += 1
            log.info("eth_getLogs %d..%d refused (%s): splitting the range", first, last, exc.message)
            mid = (first + last) // 2
            return [
                *await self._get_logs_range(first, mid, addresses),
                *await self._get_logs_range(mid + 1, last, addresses),
            ]
