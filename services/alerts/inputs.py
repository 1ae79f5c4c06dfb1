"""The order-flow inputs (trades, swaps) kept in the store while a job may still read them. Pure.

Order-flow metrics are computed at a boundary over the last ``flow_window`` of event time; a
kill -9 would take the trades of that window with it. Each one is a row (``flow:<event time>:<run>:<n>``)
written with the ticker updates and deleted once it is older than the longest window plus its
bucket; a restart feeds them back into the :class:`FlowBook`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping

import msgspec

from services.alerts.orderflow import FlowBook

ROW_PREFIX = "flow:"


class FlowRow(msgspec.Struct, array_like=True):
    symbol: str
    event_ns: int
    price: float
    size: float
    buy: bool


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(FlowRow)


class FlowLog:
    """Trades and swaps to write, and when to forget them. ``keep_ns`` 0: nothing is kept (no
    strategy reads order flow)."""

    def __init__(self, keep_ns: int, run_id: str) -> None:
        self.keep_ns = keep_ns
        self.run_id = run_id
        self._n = 0
        self._new: dict[str, bytes] = {}
        self._kept: deque[tuple[int, str]] = deque()  # (event time, key), in arrival order
        self._expired: list[str] = []

    def add(self, symbol: str, event_ns: int, price: float, size: float, buy: bool) -> None:
        if self.keep_ns <= 0:
            return
        self._n += 1
        key = f"{ROW_PREFIX}{event_ns:020d}:{self.run_id}:{self._n}"
        self._new[key] = _ENC.encode(FlowRow(symbol, event_ns, price, size, buy))
        self._kept.append((event_ns, key))

    def prune(self, now_ns: int) -> None:
        """Forget the rows older than what any job may still read (in arrival order: a late row
        behind a newer one waits for it)."""
        cutoff = now_ns - self.keep_ns
        kept = self._kept
        while kept and kept[0][0] < cutoff:
            _, key = kept.popleft()
            if self._new.pop(key, None) is None:  # written already: delete it
                self._expired.append(key)

    def take(self) -> tuple[dict[str, bytes], list[str]]:
        """The rows to write and the keys to delete since the last call."""
        new, self._new = self._new, {}
        expired, self._expired = self._expired, []
        return new, expired

    def restore(self, rows: Mapping[str, bytes], book: FlowBook) -> int:
        """Feed stored rows back into ``book`` in event-time order, and keep them; returns how many."""
        found: list[tuple[str, FlowRow]] = []
        for key, body in rows.items():
            if not key.startswith(ROW_PREFIX):
                continue
            try:
                found.append((key, _DEC.decode(body)))
            except (msgspec.DecodeError, ValueError):
                self._expired.append(key)
        found.sort(key=lambda kr: kr[0])
        for key, row in found:
            if self.keep_ns > 0:
                book.add(row.symbol, row.event_ns, row.price, row.size, row.buy)
                self._kept.append((row.event_ns, key))
            else:
                self._expired.append(key)
        return len(found) if self.keep_ns > 0 else 0
