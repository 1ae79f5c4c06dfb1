"""A small Ethereum JSON-RPC client over aiohttp: single calls and batch requests, retried.

Bad answers are never fatal by themselves: a timeout, a transport error, an HTTP error or a reply
that is not JSON-RPC is retried with ``shared.backoff.Backoff`` on the injected clock (rotating
over the configured URLs). One retry layer: a call is at most ``retries + 1`` POSTs, whatever
failed; after them it raises :class:`RpcUnavailable`. A JSON-RPC error *inside* a
reply (e.g. an eth_call that reverted) is the node's answer: it is not retried here but returned
(batches) or raised (single calls) as :class:`RpcError`, for the caller to count and skip.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from shared.backoff import Backoff
from shared.clock import Clock, RealClock

log = logging.getLogger("poolwire.sync.rpc")

Call = tuple[str, list[Any]]


class RpcError(Exception):
    """The node answered with a JSON-RPC error object."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(f"JSON-RPC error {code}: {message}")
        self.code = code
        self.message = message
        self.data = data


class RpcUnavailable(Exception):
    """No usable answer after every retry (timeouts, transport errors, garbage)."""


class _Reply(msgspec.Struct):
    id: int | None = None
    result: Any = None
    error: dict[str, Any] | None = None


_ONE = msgspec.json.Decoder(_Reply)
_MANY = msgspec.json.Decoder(list[_Reply])
_ENC = msgspec.json.Encoder()


@dataclass(slots=True)
class RpcStats:
    requests: int = 0  # HTTP round trips that got an answer
    calls: int = 0  # JSON-RPC calls answered (a batch counts each)
    retries: int = 0
    timeouts: int = 0
    transport_errors: int = 0
    garbage: int = 0  # replies that were not JSON-RPC
    rpc_errors: int = 0  # JSON-RPC error objects returned to callers
    failures: int = 0  # calls given up after every retry


class RpcClient:
    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_initial: float = 0.05,
        backoff_max: float = 2.0,
        max_batch: int = 500,
        clock: Clock | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no JSON-RPC URL")
        self.urls = list(urls)
        self.timeout = timeout
        self.retries = retries
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_batch = max_batch
        self.clock: Clock = clock or RealClock()
        self.stats = RpcStats()
        self._url = 0
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"content-type": "application/json"},
                connector=aiohttp.TCPConnector(limit=32),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _before_retry(self, backoff: Backoff) -> None:
        """The one retry layer's wait: counted, a backoff on the clock, then the next URL."""
        self.stats.retries += 1
        await backoff.wait()
        self._url = (self._url + 1) % len(self.urls)

    async def _post(self, body: bytes, attempt: int) -> bytes | None:
        """One POST; the raw reply body, or None after a timeout, a transport or an HTTP error
        (counted, logged on the first attempt and the last)."""
        url = self.urls[self._url]
        try:
            async with self._get_session().post(url, data=body) as resp:
                data = await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    raise aiohttp.ClientResponseError(
                        resp.request_info,
                        (),
                        status=resp.status,
                        message=data[:200].decode(errors="replace"),
                    )
                return data
        except TimeoutError as exc:
            self.stats.timeouts += 1
            failure: Exception = exc
        except (aiohttp.ClientError, OSError) as exc:
            self.stats.transport_errors += 1
            failure = exc
        if attempt == 0 or attempt == self.retries:
            log.warning("JSON-RPC %s: %r (attempt %d/%d)", url, failure, attempt + 1, self.retries + 1)
        return None

    def _error(self, reply: _Reply) -> RpcError:
        err = reply.error or {}
        self.stats.rpc_errors += 1
        return RpcError(int(err.get("code", 0)), str(err.get("message", "")), err.get("data"))

    async def call(self, method: str, params: list[Any] | None = None, *, retry_errors: bool = False) -> Any:
        """One call; raises RpcError (node's error) or RpcUnavailable (after retries).

        ``retry_errors``: a JSON-RPC error is retried too (reads that must succeed, e.g. a
        load-balanced node's transient "header not found")."""
        backoff = Backoff(self.backoff_initial, self.backoff_max, clock=self.clock)
        for attempt in range(self.retries + 1):
            if attempt:
                await self._before_retry(backoff)
            rid = next(self._ids)
            body = _ENC.encode({"jsonrpc": "2.0", "id": rid, "method": method, "params": params or []})
            data = await self._post(body, attempt)
            if data is None:
                continue
            try:
                reply = _ONE.decode(data)
            except msgspec.DecodeError:
                reply = None
            if reply is None or (reply.error is None and reply.id != rid):
                self.stats.garbage += 1
                continue
            self.stats.requests += 1
            self.stats.calls += 1
            if reply.error is not None:
                error = self._error(reply)
                if not retry_errors or attempt == self.retries:
                    raise error
                continue
            return reply.result
        self.stats.failures += 1
        raise RpcUnavailable(
            f"{method}: no valid JSON-RPC reply from {self.urls} after {self.retries + 1} attempts"
        )

    async def batch(self, calls: Sequence[Call]) -> list[Any]:
        """Many calls in JSON-RPC batch requests of at most ``max_batch``.

        Returns one item per call, in order: the result, or an :class:`RpcError` instance. Calls
        whose answer is missing or garbled are sent again (up to ``retries``); raises
        :class:`RpcUnavailable` if the transport keeps failing.
        """
        out: list[Any] = [None] * len(calls)
        for start in range(0, len(calls), self.max_batch):
            await self._batch_chunk(calls, range(start, min(start + self.max_batch, len(calls))), out)
        return out

    async def _batch_chunk(self, calls: Sequence[Call], indices: range, out: list[Any]) -> None:
        todo = list(indices)
        backoff = Backoff(self.backoff_initial, self.backoff_max, clock=self.clock)
        for attempt in range(self.retries + 1):
            if attempt:
                await self._before_retry(backoff)
            ids: dict[int, int] = {}
            payload = []
            for i in todo:
                rid = next(self._ids)
                ids[rid] = i
                method, params = calls[i]
                payload.append({"jsonrpc": "2.0", "id": rid, "method": method, "params": params})
            data = await self._post(_ENC.encode(payload), attempt)
            if data is None:
                continue
            try:
                replies = _MANY.decode(data)
            except msgspec.DecodeError:
                replies = []
                self.stats.garbage += 1
            self.stats.requests += 1
            for reply in replies:
                i_or_none = ids.pop(reply.id, None) if reply.id is not None else None
                if i_or_none is None:
                    continue
                self.stats.calls += 1
                out[i_or_none] = self._error(reply) if reply.error is not None else reply.result
            todo = list(ids.values())
            if not todo:
                return
            self.stats.garbage += 1
        self.stats.failures += len(todo)
        raise RpcUnavailable(f"{len(todo)} batched call(s) unanswered after {self.retries + 1} attempts")


U64_MAX = (1 << 64) - 1


def hex_int(value: Any) -> int:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"expected a 0x-hex quantity, got {value!r}")
    return int(value, 16)


def hex_bytes(value: Any) -> bytes:
    if not isinstance(value, str) or not value.startswith("0x"):
        raise ValueError(f"expected 0x-hex data, got {value!r}")
    return bytes.fromhex(value[2:])


@dataclass(slots=True, frozen=True)
class Header:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int = 0

    @classmethod
    def parse(cls, raw: Any) -> Header:
        """A block object from the node; ValueError if it is not one (wrong shape, impossible values)."""
        if not isinstance(raw, dict):
            raise ValueError(f"expected a block object, got {type(raw).__name__}")
        try:
            header = cls(
                hex_int(raw["number"]),
                hex_bytes(raw["hash"]),
                hex_bytes(raw["parentHash"]),
                hex_int(raw.get("timestamp", "0x0")),
            )
        except KeyError as exc:
            raise ValueError(f"block object without {exc}") from None
        if not (0 <= header.number <= U64_MAX and 0 <= header.timestamp <= U64_MAX):
            raise ValueError(f"block number {header.number} or timestamp {header.timestamp} out of uint64")
        if len(header.hash) != 32 or len(header.parent_hash) != 32:
            raise ValueError(f"block {header.number}: hash or parent hash not 32 bytes")
        return header
