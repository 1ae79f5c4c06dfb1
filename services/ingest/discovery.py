"""Gamma discovery: page through ``GET /markets/keyset`` with ``after_cursor``.

``clobTokenIds`` is a JSON-encoded string; ``closed`` (not ``active``, not ``endDate``) says a
market is over. A plain ``cursor=`` is ignored upstream (page 1 forever), so the paginator
sends ``after_cursor`` and stops, counted, if a cursor ever repeats.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import aiohttp
import msgspec

log = logging.getLogger("poolwire.ingest.discovery")


class GammaMarket(msgspec.Struct):
    id: str | int = ""
    conditionId: str = ""
    question: str = ""
    clobTokenIds: str | list[str] | None = None
    closed: bool = False
    orderMinSize: float | int | str | None = None  # hashed with the books (min_order_size)
    negRisk: bool | None = None


class KeysetPage(msgspec.Struct):
    markets: list[GammaMarket] = []
    next_cursor: str | None = None


_PAGE = msgspec.json.Decoder(KeysetPage)
_IDS = msgspec.json.Decoder(list[str])


def token_ids(m: GammaMarket) -> list[str]:
    raw = m.clobTokenIds
    if raw is None or raw == "":
        return []
    if isinstance(raw, list):
        return [str(x) for x in raw]
    try:
        return _IDS.decode(raw)
    except msgspec.DecodeError:
        return []


def decimal_str(x: float | int | str) -> str:
    """Gamma's number as the CLOB writes it in a book: ``5`` -> "5", ``0.01`` -> "0.01"."""
    if isinstance(x, str):
        return x
    if isinstance(x, float) and x.is_integer():
        return str(int(x))
    return str(x)


def parse_page(body: bytes) -> KeysetPage:
    return _PAGE.decode(body)


@dataclass
class DiscoveryResult:
    open: list[tuple[str, list[str]]] = field(default_factory=list)  # (market, token ids)
    closed: list[tuple[str, list[str]]] = field(default_factory=list)
    pages: int = 0
    complete: bool = False  # reached the last page without error
    cursor_stuck: bool = False
    bad_markets: int = 0
    params: dict[str, tuple[str, bool]] = field(default_factory=dict)  # token id -> (min size, neg)


async def discover(
    session: aiohttp.ClientSession,
    base_url: str,
    *,
    params: dict[str, str] | None = None,
    limit: int = 100,
    max_pages: int = 10_000,
    timeout: float = 30.0,
) -> DiscoveryResult:
    out = DiscoveryResult()
    seen: set[str] = set()
    cursor: str | None = None
    url = base_url.rstrip("/") + "/markets/keyset"
    while out.pages < max_pages:
        query = {"limit": str(limit), "closed": "false", **(params or {})}
        if cursor is not None:
            query["after_cursor"] = cursor
        async with session.get(url, params=query, timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
            resp.raise_for_status()
            page = parse_page(await resp.read())
        out.pages += 1
        for m in page.markets:
            ids = token_ids(m)
            if not ids:
                out.bad_markets += 1
                continue
            (out.closed if m.closed else out.open).append((m.conditionId, ids))
            if m.orderMinSize is not None and m.negRisk is not None:
                size = decimal_str(m.orderMinSize)
                for token in ids:
                    out.params[token] = (size, m.negRisk)
        cursor = page.next_cursor
        if not cursor or not page.markets:
            out.complete = True
            return out
        if cursor in seen:
            out.cursor_stuck = True
            log.error("gamma cursor stopped advancing after %d pages: stopping this poll", out.pages)
            return out
        seen.add(cursor)
    return out
