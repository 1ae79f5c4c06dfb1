"""The subscription table: every asset ingest knows, pending -> subscribed(connection) -> expired.

Pure bookkeeping, no sockets. Fed by Gamma discovery, the static list in config, ``new_market`` /
``market_resolved`` events and ``force_subscribe`` requests (which jump the pending queue).
An expired asset keeps its slot on its connection (the server still counts the subscription)
until the connection is recycled or reconnects: that is what the pollution ratio measures.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

State = Literal["pending", "subscribed", "expired"]


@dataclass(slots=True)
class AssetRecord:
    asset: str
    state: State = "pending"
    conn: str | None = None
    market: str = ""
    source: str = "static"


@dataclass(slots=True)
class ConnectionStats:
    total: int  # subscriptions held on the connection (expired included)
    expired: int

    @property
    def live(self) -> int:
        return self.total - self.expired

    @property
    def pollution(self) -> float:
        return self.expired / self.total if self.total else 0.0


class Subscriptions:
    def __init__(self) -> None:
        self.records: dict[str, AssetRecord] = {}
        self._pending: dict[str, None] = {}  # insertion-ordered queue
        self._priority: dict[str, None] = {}
        self._by_conn: dict[str, set[str]] = {}
        self._expired_by_conn: dict[str, int] = {}

    # -- intake ----------------------------------------------------------------------------------

    def add(
        self, assets: Iterable[str], *, market: str = "", source: str = "static", priority: bool = False
    ) -> int:
        """Queue new assets; returns how many were new. Known assets are left alone, except that
        ``priority`` moves a still-pending asset to the front."""
        added = 0
        for asset in assets:
            if not asset:
                continue
            rec = self.records.get(asset)
            if rec is None:
                self.records[asset] = AssetRecord(asset, market=market, source=source)
                added += 1
                (self._priority if priority else self._pending)[asset] = None
            elif priority and rec.state == "pending" and asset in self._pending:
                del self._pending[asset]
                self._priority[asset] = None
        return added

    def pending_count(self) -> int:
        return len(self._pending) + len(self._priority)

    def take_pending_batch(self, max_size: int) -> list[str]:
        """Up to ``max_size`` pending assets, priority first; they leave the queue (still pending)."""
        out: list[str] = []
        for queue in (self._priority, self._pending):
            while queue and len(out) < max_size:
                asset = next(iter(queue))
                del queue[asset]
                out.append(asset)
        return out

    def return_pending(self, assets: Iterable[str]) -> None:
        """Put taken (or orphaned) assets back at the front of the queue."""
        front = {a: None for a in assets if a in self.records and self.records[a].state != "expired"}
        for a in front:
            rec = self.records[a]
            if rec.conn is not None:
                self._detach(rec)
            rec.state = "pending"
        self._priority = {**front, **self._priority}

    # -- subscription ----------------------------------------------------------------------------

    def mark_subscribed(self, assets: Iterable[str], conn: str) -> None:
        members = self._by_conn.setdefault(conn, set())
        self._expired_by_conn.setdefault(conn, 0)
        for asset in assets:
            rec = self.records.get(asset)
            if rec is None:
                rec = self.records[asset] = AssetRecord(asset)
            self._pending.pop(asset, None)
            self._priority.pop(asset, None)
            if rec.conn is not None and rec.conn != conn:
                self._detach(rec)
            if rec.state == "expired":
                continue
            rec.state = "subscribed"
            rec.conn = conn
            members.add(asset)

    def mark_expired(self, assets: Iterable[str]) -> list[str]:
        """Markets over: returns the assets that expired now."""
        out = []
        for asset in assets:
            rec = self.records.get(asset)
            if rec is None:
                self.records[asset] = AssetRecord(asset, state="expired")
                continue
            if rec.state == "expired":
                continue
            self._pending.pop(asset, None)
            self._priority.pop(asset, None)
            rec.state = "expired"
            if rec.conn is not None:
                self._expired_by_conn[rec.conn] = self._expired_by_conn.get(rec.conn, 0) + 1
            out.append(asset)
        return out

    def _detach(self, rec: AssetRecord) -> None:
        conn = rec.conn
        assert conn is not None
        members = self._by_conn.get(conn)
        if members is not None and rec.asset in members:
            members.discard(rec.asset)
            if rec.state == "expired":
                self._expired_by_conn[conn] -= 1
        rec.conn = None

    def move(self, assets: Iterable[str], new_conn: str) -> None:
        """Recycling: live assets now belong to ``new_conn``."""
        self.mark_subscribed(assets, new_conn)

    def release_connection(self, conn: str) -> list[str]:
        """A connection is gone: forget its expired slots; its live assets go back to the queue front.

        Returns the live assets that were put back."""
        members = self._by_conn.pop(conn, set())
        self._expired_by_conn.pop(conn, None)
        live = []
        for asset in members:
            rec = self.records[asset]
            rec.conn = None
            if rec.state != "expired":
                live.append(asset)
        self.return_pending(live)
        return live

    def drop_expired(self, conn: str) -> list[str]:
        """The connection resubscribed only its live assets: its expired slots are freed."""
        members = self._by_conn.get(conn, set())
        gone = [a for a in members if self.records[a].state == "expired"]
        for asset in gone:
            members.discard(asset)
            self.records[asset].conn = None
        self._expired_by_conn[conn] = 0
        return gone

    # -- queries ---------------------------------------------------------------------------------

    def connection_stats(self, conn: str) -> ConnectionStats:
        return ConnectionStats(len(self._by_conn.get(conn, ())), self._expired_by_conn.get(conn, 0))

    def live_assets(self, conn: str) -> list[str]:
        return [a for a in self._by_conn.get(conn, ()) if self.records[a].state == "subscribed"]

    def assets_of(self, conn: str) -> set[str]:
        return set(self._by_conn.get(conn, ()))

    def counts(self) -> dict[str, int]:
        out = {"pending": 0, "subscribed": 0, "expired": 0}
        for rec in self.records.values():
            out[rec.state] += 1
        return out
