"""The order-flow inputs (trades, swaps) kept in the store while a job may still read them. Pure.

Order-flow metrics are computed at a boundary over the last ``flow_window`` of event time; a
kill -9 would take the trades of that window with it. The trades read since the last flush are
written with the ticker updates as one row (``flow:<newest event time>:<run>:<n>``: the batch's
symbols once, then each trade's symbol index, event time and signed size), deleted once its newest
trade is older than the longest window plus its bucket; a restart feeds them back into the
:class:`FlowBook`. What this holds in memory is one entry per flush of that span (~480 at the
defaults), whatever the number of symbols or trades.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping

import msgspec

from services.alerts.orderflow import FlowBook

ROW_PREFIX = "flow:"


class FlowBatch(msgspec.Struct, array_like=True):
    symbols: list[str]
    trades: list[tuple[int, int, float]]  # (index in symbols, event time, signed size: - sell)


_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(FlowBatch)


class FlowLog:
    """Trades and swaps to write, and when to forget them. ``keep_ns`` 0: nothing is kept (no
    strategy reads order flow)."""

    def __init__(self, keep_ns: int, run_id: str) -> None:
        self.keep_ns = keep_ns
        self.run_id = run_id
        self._n = 0
        self._symbols: dict[str, int] = {}  # the pending batch's symbols -> index
        self._trades: list[tuple[int, int, float]] = []
        self._newest = 0  # the pending batch's newest event time
        self._kept: deque[tuple[int, str]] = deque()  # (newest event time, key) of written batches
        self._expired: list[str] = []
        self.restored_latest_ns = 0  # the latest trade restore() took back

    def add(self, symbol: str, event_ns: int, size: float, buy: bool) -> None:
        if self.keep_ns <= 0:
            return
        index = self._symbols.setdefault(symbol, len(self._symbols))
        self._trades.append((index, event_ns, size if buy else -size))
        if event_ns > self._newest:
            self._newest = event_ns

    def prune(self, now_ns: int) -> None:
        """Forget the batches older than what any job may still read (in the order written: a
        batch behind a newer one waits for it)."""
        cutoff = now_ns - self.keep_ns
        kept = self._kept
        while kept and kept[0][0] < cutoff:
            self._expired.append(kept.popleft()[1])

    def take(self) -> tuple[dict[str, bytes], list[str]]:
        """The rows to write (the batch read since the last call) and the keys to delete."""
        new: dict[str, bytes] = {}
        if self._trades:
            self._n += 1
            key = f"{ROW_PREFIX}{self._newest:020d}:{self.run_id}:{self._n}"
            new[key] = _ENC.encode(FlowBatch(list(self._symbols), self._trades))
            self._kept.append((self._newest, key))
            self._symbols, self._trades, self._newest = {}, [], 0
        expired, self._expired = self._expired, []
        return new, expired

    def restore(self, rows: Mapping[str, bytes], book: FlowBook) -> int:
        """Feed stored batches back into ``book`` in event-time order, and keep them; returns how
        many trades."""
        found: list[tuple[str, FlowBatch]] = []
        for key, body in rows.items():
            if not key.startswith(ROW_PREFIX):
                continue
            try:
                found.append((key, _DEC.decode(body)))
            except (msgspec.DecodeError, ValueError):
                self._expired.append(key)
        if self.keep_ns <= 0:
            self._expired += [key for key, _ in found]
            return 0
        found.sort(key=lambda kb: kb[0])
        trades: list[tuple[int, str, float]] = []
        for key, batch in found:
            newest = 0
            for index, event_ns, signed in batch.trades:
                if 0 <= index < len(batch.symbols):
                    trades.append((event_ns, batch.symbols[index], signed))
                    newest = max(newest, event_ns)
            self._kept.append((newest, key))
        trades.sort(key=lambda t: t[0])  # stable: ties keep the order they were read in
        if trades:
            self.restored_latest_ns = trades[-1][0]
        for event_ns, symbol, signed in trades:
            book.add(symbol, event_ns, abs(signed), math.copysign(1.0, signed) > 0)
        return len(trades)
