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
