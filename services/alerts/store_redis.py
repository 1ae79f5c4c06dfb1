"""The shared throttle store: several alerts instances on one Redis, in the seed's layout."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from services.alerts.frequency import STATE_DECODER, STATE_ENCODER, AlertState
from services.alerts.store import (
    DEFAULT_LEASE_NS,
    NS_PER_MS,
    Plan,
    adopted,
    as_bytes,
    intersect,
    pack_jobs,
)
from shared.messages import StrategyJob

log = logging.getLogger("poolwire.alerts.store")

_CLAIM_LUA = """
local b = tonumber(ARGV[1])
local n = tonumber(ARGV[6])
local out = {}
local claimed = {}
for i = 7, 6 + n do
  local prev = redis.call('HGET', KEYS[1], ARGV[i])
  local p = 0
  if prev then p = tonumber(prev) end
  if p < b then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[1])
    claimed[ARGV[i]] = true
    out[#out + 1] = ARGV[i]
    out[#out + 1] = tostring(prev or '0')
  end
end
local stored = 0
for i = 7 + n, #ARGV, 2 do
  if claimed[ARGV[i]] then
    redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[4])
    redis.call('HSET', KEYS[3], ARGV[i + 1], ARGV[2])
    stored = stored + 1
  end
end
if stored > 0 then
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[5])
  redis.call('HSET', KEYS[5], ARGV[4], stored)
  redis.call('ZADD', KEYS[6], 'GT', ARGV[3], ARGV[2])
end
return out
"""

# Write the alert states (field, value pairs from ARGV[2]) and forget job ARGV[1] (its batch with its
# last job). KEYS: jobs, job owners, batches, batch job counts, alert states.
_FINISH_LUA = """
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 1]) end
local b = redis.call('HGET', KEYS[1], ARGV[1])
if b then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[2], ARGV[1])
  if redis.call('HINCRBY', KEYS[4], b, -1) <= 0 then
    redis.call('HDEL', KEYS[4], b)
    redis.call('HDEL', KEYS[3], b)
  end
end
return 0
"""

# Renew ARGV[1]'s lease until ARGV[3] (ms), forget leases that ended by ARGV[2] (ms), and take over
# the jobs of owners without a lease. KEYS: jobs, job owners, batches, leases.
# Returns the number of jobs k, k (job id, batch) pairs, then (batch, blob) pairs of their batches.
_ADOPT_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
local live = {}
local jobs = {}
local batches = {}
local owners = redis.call('HGETALL', KEYS[2])
for i = 1, #owners, 2 do
  local id, o = owners[i], owners[i + 1]
  if o ~= ARGV[1] then
    local alive = live[o]
    if alive == nil then
      alive = redis.call('ZSCORE', KEYS[4], o) ~= false
      live[o] = alive
    end
    if not alive then
      local b = redis.call('HGET', KEYS[1], id)
      if b then
        redis.call('HSET', KEYS[2], id, ARGV[1])
        jobs[#jobs + 1] = id
        jobs[#jobs + 1] = b
        batches[b] = true
      else
        redis.call('HDEL', KEYS[2], id)
      end
    end
  end
end
local out = {#jobs / 2}
for i = 1, #jobs do out[#out + 1] = jobs[i] end
for b, _ in pairs(batches) do
  out[#out + 1] = b
  out[#out + 1] = redis.call('HGET', KEYS[3], b) or ''
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

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "",
        large_universe: int = 1000,
        lease_ns: int = DEFAULT_LEASE_NS,
        client: Any = None,
    ) -> None:
        import redis

        self.large_universe = large_universe
        self.script_failures = 0
        self.write_failures = 0  # SQLite's figure; a failed Redis call raises to its caller instead
        self.owner = uuid.uuid4().hex  # this instance, as the owner of the jobs it dispatches
        self.lease_ms = max(lease_ns // NS_PER_MS, 1)
        self._now_ms = 0  # the time of the last adopt_jobs (a claim's lease lasts from there)
        self._r: Any = client if client is not None else redis.Redis.from_url(url, decode_responses=True)
        self._p = prefix
        self._upd = f"{prefix}TICK:UPD"
        self._univs = f"{prefix}STRAT:UNIVS"
        self._last = f"{prefix}STRAT:LAST"
        self._alerts = f"{prefix}ALERT:STATE"
        self._jobs = f"{prefix}JOBS"
        self._owners = f"{prefix}JOBS:OWNER"
        self._batches = f"{prefix}JOBS:BATCH"
        self._left = f"{prefix}JOBS:LEFT"
        self._leases = f"{prefix}JOBS:LEASE"
        self._inputs = f"{prefix}INPUTS:OPEN"
        self._batch_n = 0
        self._claim = self._r.register_script(_CLAIM_LUA)
        self._finish = self._r.register_script(_FINISH_LUA)
        self._adopt = self._r.register_script(_ADOPT_LUA)
        self._intersect = self._r.register_script(_INTERSECT_LUA)

    def _univ(self, strategy: str) -> str:
        return f"{self._p}STRAT:{strategy}:UNIV"

    def record_updates(self, updates: Mapping[str, int]) -> None:
        if updates:
            self._r.zadd(self._upd, {t: ns // NS_PER_MS for t, ns in updates.items()}, gt=True)

    def save_inputs(self, rows: Mapping[str, bytes], deletes: Sequence[str] = ()) -> None:
        if not rows and not deletes:
            return
        pipe = self._r.pipeline(transaction=True)
        if deletes:
            pipe.hdel(self._inputs, *deletes)
        if rows:
            pipe.hset(self._inputs, mapping={k: v.hex() for k, v in rows.items()})
        pipe.execute()

    def load_inputs(self) -> dict[str, bytes]:
        raw = self._r.hgetall(self._inputs)
        return {str(k): as_bytes(v) for k, v in raw.items()}

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

    def claim(self, bucket_ns: int, strategies: Sequence[str], plan: Plan | None = None) -> dict[str, int]:
        """Read the last runs, plan, then claim and store the jobs in one script.

        Another instance may claim in between: the script claims only what is still unclaimed (the
        other's claim wins, its jobs are not stored). A last run can only move forward meanwhile, so
        a job planned from an earlier one covers a superset of the changes: never a loss.
        """
        if not strategies:
            return {}
        bucket_ms = bucket_ns // NS_PER_MS
        prevs = self._r.hmget(self._last, list(strategies))
        may: dict[str, int] = {}
        for s, p in zip(strategies, prevs, strict=True):
            prev = 0 if p is None else int(p)
            if prev < bucket_ms:
                may[s] = prev * NS_PER_MS
        if not may:
            return {}
        jobs = {j.strategy: j for j in plan(may)} if plan is not None else {}
        lease_until = max(self._now_ms, bucket_ms) + self.lease_ms
        names = list(may)
        out: dict[str, int] = {}
        keys = [self._last, self._jobs, self._owners, self._batches, self._left, self._leases]
        for i in range(0, len(names), 5000):
            chunk = names[i : i + 5000]
            mine = [j for j in (jobs.get(s) for s in chunk) if j is not None]
            self._batch_n += 1
            batch, blob = f"{self.owner}:{self._batch_n}", pack_jobs(mine).hex() if mine else ""
            args: list[Any] = [bucket_ms, self.owner, lease_until, batch, blob, len(chunk), *chunk]
            for job in mine:
                args += (job.strategy, job.job_id)
            flat = self._claim(keys=keys, args=args)
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
        return {
            k: STATE_DECODER.decode(as_bytes(b)) for k, b in zip(keys, blobs, strict=True) if b is not None
        }

    def put_alert_states(self, states: Mapping[tuple[str, str], AlertState]) -> None:
        if states:
            self._r.hset(
                self._alerts,
                mapping={f"{s}|{sym}": STATE_ENCODER.encode(st).hex() for (s, sym), st in states.items()},
            )

    def finish_job(self, job_id: str, states: Mapping[tuple[str, str], AlertState]) -> None:
        args: list[Any] = [job_id]
        for (s, sym), st in states.items():
            args += (f"{s}|{sym}", STATE_ENCODER.encode(st).hex())
        self._finish(keys=[self._jobs, self._owners, self._batches, self._left, self._alerts], args=args)

    def adopt_jobs(self, now_ns: int) -> list[StrategyJob]:
        """Renew this instance's lease; take the jobs of owners whose lease ended (or was released)."""
        self._now_ms = now_ns // NS_PER_MS
        flat = self._adopt(
            keys=[self._jobs, self._owners, self._batches, self._leases],
            args=[self.owner, self._now_ms, self._now_ms + self.lease_ms],
        )
        k = int(flat[0])
        if not k:
            return []
        pending = [(flat[i], flat[i + 1]) for i in range(1, 2 * k + 1, 2)]
        blobs = {flat[i]: flat[i + 1] or None for i in range(2 * k + 1, len(flat), 2)}
        jobs, bad = adopted(pending, blobs)
        for job_id in bad:
            self.finish_job(job_id, {})
        return jobs

    def pending_jobs(self) -> int:
        return int(self._r.hlen(self._jobs))

    def transaction(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()

    def retry_writes(self) -> bool:
        """Nothing is kept here: a failed Redis call raises, and its caller retries the work."""
        return True

    def pending_writes(self) -> int:
        return 0

    def close(self) -> None:
        import redis

        with contextlib.suppress(redis.RedisError):
            self._r.zrem(self._leases, self.owner)  # our pending jobs are adoptable at once
        self._r.close()
