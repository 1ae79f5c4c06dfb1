"""Throttle state: ticker updates, strategy universes, last runs, alert states.

Two backends behind one interface:

- :class:`SqliteStore`, the embedded default: one process owns it, so it keeps the working set in
  memory (dicts and sets) and writes through to SQLite in the data directory, which is read back
  at start-up. Intersections run in memory, iterating the smaller side.
- :class:`RedisStore`, for several alerts instances sharing state, in the seed's layout: a ZSET of
  ticker updates (``TICK:UPD``, score = ms), a SET per strategy universe
  (``STRAT:<id>:UNIV``), a hash of last runs. Universes larger than ``large_universe`` are
  intersected server-side by a Lua script that iterates the smaller side; smaller ones are fetched
  and intersected here. The bucket claim is one atomic script, so two instances never both run a
  strategy for one bucket.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

import msgspec

from services.alerts.frequency import STATE_DECODER, STATE_ENCODER, AlertState

NS_PER_MS = 1_000_000
GROUP_CLAIM_MIN = 64  # SQLite: a claim of this many strategies or more is stored as one group row
_MEMBERS = msgspec.msgpack.Decoder(list[str])
_MEMBERS_ENC = msgspec.msgpack.Encoder()


class ThrottleStore(Protocol):
    name: str

    def record_updates(self, updates: Mapping[str, int]) -> None:
        """Ticker -> time (ns) of its last update; an older time never replaces a newer one."""

    def ticker_count(self) -> int: ...

    def tickers(self) -> list[str]: ...

    def last_update(self, ticker: str) -> int | None: ...

    def cleanup(self, cutoff_ns: int) -> int:
        """Forget ticker updates older than ``cutoff_ns``; returns how many were removed."""

    def get_universe(self, strategy: str) -> set[str] | None:
        """The strategy's universe; None when it has none (it watches every ticker)."""

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None: ...

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None: ...

    def drop_universe(self, strategy: str) -> None: ...

    def universe_sizes(self) -> dict[str, int]: ...

    def claim(self, bucket_ns: int, strategies: Sequence[str]) -> dict[str, int]:
        """Mark these strategies as run for ``bucket_ns``, atomically.

        Returns {strategy: its previous bucket (0: never ran)} for those claimed; a strategy that
        already ran this bucket (or a later one) is left out: a bucket duplicate.
        """

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        """For each (strategy, since_ns): the tickers of its universe updated at or after since.

        Returns the sets in request order and how many were large-universe intersections.
        """

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]: ...

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None: ...

    def close(self) -> None: ...


def intersect(updated: set[str], universe: set[str] | frozenset[str]) -> set[str]:
    """Iterate the smaller side (what CPython's ``&`` does too; spelled out because it matters)."""
    if len(universe) <= len(updated):
        return {t for t in universe if t in updated}
    return {t for t in updated if t in universe}


# ----------------------------------------------------------------------------------------------
# SQLite


_SCHEMA = """
CREATE TABLE IF NOT EXISTS ticker_updates (ticker TEXT PRIMARY KEY, ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ticker_updates_ns ON ticker_updates (ns);
CREATE TABLE IF NOT EXISTS universes (strategy TEXT NOT NULL, ticker TEXT NOT NULL,
    PRIMARY KEY (strategy, ticker)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS universe_known (strategy TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS last_runs (strategy TEXT PRIMARY KEY, bucket_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claim_groups (group_key TEXT PRIMARY KEY, members BLOB NOT NULL,
    bucket_ns INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alert_states (strategy TEXT NOT NULL, symbol TEXT NOT NULL, state BLOB NOT NULL,
    PRIMARY KEY (strategy, symbol)) WITHOUT ROWID;
"""


class SqliteStore:
    """Embedded store: in-memory working set, written through to one SQLite file."""

    name = "sqlite"

    def __init__(self, path: str, *, large_universe: int = 1000) -> None:
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.large_universe = large_universe
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._updates: dict[str, int] = dict(self._db.execute("SELECT ticker, ns FROM ticker_updates"))
        self._universes: dict[str, set[str]] = {
            s: set() for (s,) in self._db.execute("SELECT strategy FROM universe_known")
        }
        for strategy, ticker in self._db.execute("SELECT strategy, ticker FROM universes"):
            self._universes.setdefault(strategy, set()).add(ticker)
        self._last: dict[str, int] = dict(self._db.execute("SELECT strategy, bucket_ns FROM last_runs"))
        self._groups: set[str] = set()
        for key, members, bucket_ns in self._db.execute(
            "SELECT group_key, members, bucket_ns FROM claim_groups"
        ):
            self._groups.add(key)
            for s in _MEMBERS.decode(members):
                if self._last.get(s, 0) < bucket_ns:
                    self._last[s] = bucket_ns
        self._alerts: dict[tuple[str, str], AlertState] = {
            (s, sym): STATE_DECODER.decode(blob)
            for s, sym, blob in self._db.execute("SELECT strategy, symbol, state FROM alert_states")
        }

    def _write(self, sql: str, rows: Iterable[tuple[Any, ...]]) -> None:
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(sql, rows)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def record_updates(self, updates: Mapping[str, int]) -> None:
        mine = self._updates
        rows = []
        for ticker, ns in updates.items():
            if ns > mine.get(ticker, -1):
                mine[ticker] = ns
                rows.append((ticker, ns))
        if rows:
            self._write(
                "INSERT INTO ticker_updates (ticker, ns) VALUES (?, ?) "
                "ON CONFLICT (ticker) DO UPDATE SET ns = max(ns, excluded.ns)",
                rows,
            )

    def ticker_count(self) -> int:
        return len(self._updates)

    def tickers(self) -> list[str]:
        return list(self._updates)

    def last_update(self, ticker: str) -> int | None:
        return self._updates.get(ticker)

    def cleanup(self, cutoff_ns: int) -> int:
        old = [t for t, ns in self._updates.items() if ns < cutoff_ns]
        for t in old:
            del self._updates[t]
        self._db.execute("DELETE FROM ticker_updates WHERE ns < ?", (cutoff_ns,))
        return len(old)

    def get_universe(self, strategy: str) -> set[str] | None:
        u = self._universes.get(strategy)
        return None if u is None else set(u)

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = set(tickers)
        self._universes[strategy] = new
        db = self._db
        db.execute("BEGIN")
        db.execute("DELETE FROM universes WHERE strategy = ?", (strategy,))
        db.execute("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", (strategy,))
        db.executemany("INSERT INTO universes (strategy, ticker) VALUES (?, ?)", [(strategy, t) for t in new])
        db.execute("COMMIT")

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        u = self._universes.setdefault(strategy, set())
        new = [t for t in tickers if t not in u]
        u.update(new)
        db = self._db
        db.execute("BEGIN")
        db.execute("INSERT OR IGNORE INTO universe_known (strategy) VALUES (?)", (strategy,))
        db.executemany(
            "INSERT OR IGNORE INTO universes (strategy, ticker) VALUES (?, ?)", [(strategy, t) for t in new]
        )
        db.execute("COMMIT")

    def drop_universe(self, strategy: str) -> None:
        self._universes.pop(strategy, None)
        db = self._db
        db.execute("BEGIN")
        db.execute("DELETE FROM universes WHERE strategy = ?", (strategy,))
        db.execute("DELETE FROM universe_known WHERE strategy = ?", (strategy,))
        db.execute("COMMIT")

    def universe_sizes(self) -> dict[str, int]:
        return {s: len(u) for s, u in self._universes.items()}

    def claim(self, bucket_ns: int, strategies: Sequence[str]) -> dict[str, int]:
        last = self._last
        out: dict[str, int] = {}
        for s in strategies:
            prev = last.get(s, 0)
            if prev < bucket_ns:
                out[s] = prev
                last[s] = bucket_ns
        if not out:
            return out
        if len(strategies) < GROUP_CLAIM_MIN:
            self._write(
                "INSERT INTO last_runs (strategy, bucket_ns) VALUES (?, ?) "
                "ON CONFLICT (strategy) DO UPDATE SET bucket_ns = excluded.bucket_ns",
                [(s, bucket_ns) for s in out],
            )
            return out
        # After this call every one of ``strategies`` ran ``bucket_ns`` or later: one row says it.
        key = hashlib.blake2b("\n".join(strategies).encode(), digest_size=16).hexdigest()
        if key in self._groups:
            self._db.execute("UPDATE claim_groups SET bucket_ns = ? WHERE group_key = ?", (bucket_ns, key))
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO claim_groups (group_key, members, bucket_ns) VALUES (?, ?, ?)",
                (key, _MEMBERS_ENC.encode(list(strategies)), bucket_ns),
            )
            self._groups.add(key)
        return out

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        universes = self._universes.get
        updates = self._updates
        large_at = self.large_universe
        large = 0
        out: list[set[str]] = []
        append = out.append
        last_since: int | None = None
        updated: set[str] = set()
        for strategy, since in requests:
            if since != last_since:
                updated = {t for t, ns in updates.items() if ns >= since}
                last_since = since
            universe = universes(strategy)
            if universe is None:
                append(set(updated))
            else:
                if len(universe) > large_at:
                    large += 1
                append(universe & updated)  # C loop over the smaller side (see intersect())
        return out, large

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]:
        mine = self._alerts
        return {k: mine[k] for k in keys if k in mine}

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        if not states:
            return
        self._alerts.update(states)
        self._write(
            "INSERT INTO alert_states (strategy, symbol, state) VALUES (?, ?, ?) "
            "ON CONFLICT (strategy, symbol) DO UPDATE SET state = excluded.state",
            [(s, sym, STATE_ENCODER.encode(st)) for (s, sym), st in states.items()],
        )

    def close(self) -> None:
        self._db.close()


# ----------------------------------------------------------------------------------------------
# Redis


_CLAIM_LUA = """
local b = tonumber(ARGV[1])
local out = {}
for i = 2, #ARGV do
  local prev = redis.call('HGET', KEYS[1], ARGV[i])
  local p = 0
  if prev then p = tonumber(prev) end
  if p < b then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    out[#out + 1] = ARGV[i]
    out[#out + 1] = tostring(prev or '0')
  end
end
return out
"""

# Server-side intersection of one universe with the tickers updated since ARGV[1] (ms),
# iterating the smaller side.
_INTERSECT_LUA = """
local since = tonumber(ARGV[1])
local n_univ = redis.call('SCARD', KEYS[1])
local n_upd = redis.call('ZCOUNT', KEYS[2], since, '+inf')
local out = {}
if n_upd < n_univ then
  for _, t in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], since, '+inf')) do
    if redis.call('SISMEMBER', KEYS[1], t) == 1 then out[#out + 1] = t end
  end
else
  for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
    local s = redis.call('ZSCORE', KEYS[2], t)
    if s and tonumber(s) >= since then out[#out + 1] = t end
  end
end
return out
"""


class RedisStore:
    """Shared store on a Redis server (seed 004's layout)."""

    name = "redis"

    def __init__(self, url: str, *, prefix: str = "", large_universe: int = 1000, client: Any = None) -> None:
        import redis

        self.large_universe = large_universe
        self.script_failures = 0
        self._r: Any = client if client is not None else redis.Redis.from_url(url, decode_responses=True)
        self._p = prefix
        self._upd = f"{prefix}TICK:UPD"
        self._univs = f"{prefix}STRAT:UNIVS"
        self._last = f"{prefix}STRAT:LAST"
        self._alerts = f"{prefix}ALERT:STATE"
        self._claim = self._r.register_script(_CLAIM_LUA)
        self._intersect = self._r.register_script(_INTERSECT_LUA)

    def _univ(self, strategy: str) -> str:
        return f"{self._p}STRAT:{strategy}:UNIV"

    def record_updates(self, updates: Mapping[str, int]) -> None:
        if updates:
            self._r.zadd(self._upd, {t: ns // NS_PER_MS for t, ns in updates.items()}, gt=True)

    def ticker_count(self) -> int:
        return int(self._r.zcard(self._upd))

    def tickers(self) -> list[str]:
        return list(self._r.zrange(self._upd, 0, -1))

    def last_update(self, ticker: str) -> int | None:
        score = self._r.zscore(self._upd, ticker)
        return None if score is None else int(score) * NS_PER_MS

    def cleanup(self, cutoff_ns: int) -> int:
        return int(self._r.zremrangebyscore(self._upd, "-inf", f"({cutoff_ns // NS_PER_MS}"))

    def get_universe(self, strategy: str) -> set[str] | None:
        pipe = self._r.pipeline(transaction=False)
        pipe.sismember(self._univs, strategy)
        pipe.smembers(self._univ(strategy))
        known, members = pipe.execute()
        return set(members) if known else None

    def set_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = list(set(tickers))
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._univ(strategy))
        for i in range(0, len(new), 10_000):
            pipe.sadd(self._univ(strategy), *new[i : i + 10_000])
        pipe.sadd(self._univs, strategy)
        pipe.execute()

    def add_to_universe(self, strategy: str, tickers: Iterable[str]) -> None:
        new = list(tickers)
        pipe = self._r.pipeline(transaction=True)
        for i in range(0, len(new), 10_000):
            pipe.sadd(self._univ(strategy), *new[i : i + 10_000])
        pipe.sadd(self._univs, strategy)
        pipe.execute()

    def drop_universe(self, strategy: str) -> None:
        pipe = self._r.pipeline(transaction=True)
        pipe.delete(self._univ(strategy))
        pipe.srem(self._univs, strategy)
        pipe.execute()

    def universe_sizes(self) -> dict[str, int]:
        names = sorted(self._r.smembers(self._univs))
        pipe = self._r.pipeline(transaction=False)
        for s in names:
            pipe.scard(self._univ(s))
        return dict(zip(names, (int(n) for n in pipe.execute()), strict=True))

    def claim(self, bucket_ns: int, strategies: Sequence[str]) -> dict[str, int]:
        if not strategies:
            return {}
        out: dict[str, int] = {}
        bucket_ms = bucket_ns // NS_PER_MS
        for i in range(0, len(strategies), 5000):
            flat = self._claim(keys=[self._last], args=[bucket_ms, *strategies[i : i + 5000]])
            for j in range(0, len(flat), 2):
                out[flat[j]] = int(flat[j + 1]) * NS_PER_MS
        return out

    def changed(self, requests: Sequence[tuple[str, int]]) -> tuple[list[set[str]], int]:
        if not requests:
            return [], 0
        r = self._r
        pipe = r.pipeline(transaction=False)
        for strategy, _ in requests:
            pipe.sismember(self._univs, strategy)
            pipe.scard(self._univ(strategy))
        since_ms = sorted({since // NS_PER_MS for _, since in requests})
        for ms in since_ms:
            pipe.zrangebyscore(self._upd, ms, "+inf")
        replies = pipe.execute()
        n = len(requests)
        updated = {ms: set(replies[2 * n + i]) for i, ms in enumerate(since_ms)}
        pipe = r.pipeline(transaction=False)
        plan: list[str] = []  # "all" | "small" | "large" per request
        for i, (strategy, since) in enumerate(requests):
            known, size = replies[2 * i], int(replies[2 * i + 1])
            if not known:
                plan.append("all")
            elif size > self.large_universe:
                plan.append("large")
                self._intersect(
                    keys=[self._univ(strategy), self._upd], args=[since // NS_PER_MS], client=pipe
                )
            else:
                plan.append("small")
                pipe.smembers(self._univ(strategy))
        fetched = iter(pipe.execute(raise_on_error=False))
        out: list[set[str]] = []
        large = 0
        for (strategy, since), how in zip(requests, plan, strict=True):
            upd = updated[since // NS_PER_MS]
            if how == "all":
                out.append(set(upd))
                continue
            reply = next(fetched)
            if how == "large":
                if isinstance(reply, Exception):  # the seed's graceful fallback: do it client-side
                    self.script_failures += 1
                    out.append(intersect(upd, set(r.smembers(self._univ(strategy)))))
                else:
                    large += 1
                    out.append(set(reply))
            else:
                out.append(intersect(upd, reply))
        return out, large

    def get_alert_states(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], AlertState]:
        if not keys:
            return {}
        blobs = self._r.hmget(self._alerts, [f"{s}|{sym}" for s, sym in keys])
        return {k: STATE_DECODER.decode(_b(b)) for k, b in zip(keys, blobs, strict=True) if b is not None}

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        if states:
            self._r.hset(
                self._alerts,
                mapping={f"{s}|{sym}": STATE_ENCODER.encode(st).hex() for (s, sym), st in states.items()},
            )

    def close(self) -> None:
        self._r.close()


def _b(value: str | bytes) -> bytes:
    return bytes.fromhex(value) if isinstance(value, str) else value
