"""RedisBudgetStore: one RPM/TPM budget per provider key, shared by every process through Redis.

Example::

    config = PerformanceConfig(redis_url="redis://127.0.0.1:6379/0", shared_rate_limit=True,
                               requests_per_minute=3_000, worker_count=4)
    gate = get_gate("openai", "gpt-4o-mini", api_key, config=config)   # uses this store
    # or explicitly:
    store = RedisBudgetStore("redis://127.0.0.1:6379/0", prefix="my-app", worker_count=4)
    gate = AdmissionGate(config, key="openai/gpt-4o-mini/k-3f9a0c1b22de", store=store)

The store implements :class:`~rag_perf_plugins.admission.gate.BudgetStore` with the gate's own
GCRA arithmetic, run as one Lua script per call, so a reservation is atomic across every
process and host using the Redis. Time is Redis's ``TIME`` (seconds), not the caller's
clock, so processes whose monotonic clocks disagree still share one schedule; waits are
returned as relative seconds, which is all the gate needs. State lives in one small hash per
key under ``{prefix}:rl:{{gate key}}`` (the gate key, an API-key fingerprint and never the
key, is the Redis Cluster hash tag: :class:`~rag_perf_plugins.redis.keys.RedisKeys`) and
expires once the bucket is idle and full again. The in-process
:class:`~rag_perf_plugins.admission.gate.AdmissionGate` stays in front: concurrency cap, FIFO
order and the bounded queue are per process; only the rate budget is shared.

Outages: calls have ``timeout`` seconds (``redis_timeout``) and no redis-py retries. A
connection error or timeout opens a circuit breaker (one warning per store; later outages
are logged at INFO) and, until Redis answers a probe ``retry_interval`` seconds later,
the store falls back (``limiter_fallback``):

- ``"local-share"``: a process-local budget of ``rate / worker_count`` (each of N workers
  takes its share, so together they still stay under the limit);
- ``"fail-closed"``: nothing is admitted (the gate refuses callers with ``Overloaded``).

When Redis answers again, the shared budget is used again. A flushed Redis (state or
script gone) is handled too: the script is reloaded and a missing bucket starts full.

Honest switches (the bound, per key and per switch): each process remembers when the last
reservation it was granted (from Redis or from its local share) is due to be sent.

- Redis lost: this process's local share starts *empty* at that moment (no burst), with
  the reservations Redis had already scheduled for it still counted. Together the N
  local shares then send at the full rate from where the shared schedule stopped.
- Redis back (the first answer after calls were served locally): the same script call
  first re-seeds the shared bucket as empty now (never full, whatever Redis remembered or
  forgot) plus what this process's local share had already scheduled.

So a switch over-admits at most one request per process beyond the rate (the rounding
of a share), far under 1 s of budget at any rate where N < rate / 60; a process that made
no call while Redis was away joins with a full bucket, at most ``rate_burst_seconds``
of its budget. During a failover (a cluster replica promoted, a Sentinel promotion) the
same two switches happen: calls keep being admitted from the local shares meanwhile.

Two clients, one decision path: ``acquire`` (and every blocking method) uses one
pooled redis-py client per store; the gate's ``async with acquire()`` path awaits the ``a*``
twins, which use a ``redis.asyncio`` client of the *running* event loop (one per loop,
made on first use and closed while that loop shuts down, because an asyncio client must
not cross loops). Both paths share the breaker, the counters, the fallback and the local
share, so an outage seen by one is seen by the other.

Cost and what it does not do: each reservation is one Redis round trip (about 0.1 ms on
loopback; p95 a few ms on a loaded machine). On the async path the event loop runs other
tasks meanwhile; a blocking call holds its thread for at most ``timeout`` seconds while
Redis is slow, then none while the breaker is open. A task cancelled while its call is in
flight may leave that reservation debited in Redis (the budget errs on the safe side).
A share is ``1 / worker_count`` of the rate even when some workers send nothing (their
share is unused). A loop
closed without ``shutdown_asyncgens()`` (a bare ``loop.close()``) leaves its client's
sockets to the garbage collector.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from .._loops import PerLoop
from ..config import PerformanceConfig
from ..redis.client import (
    OUTAGE_ERRORS,
    CircuitBreaker,
    RedisTarget,
    describe_error,
    own_or_given,
)
from ..redis.keys import RedisKeys
from .budget import LocalBudgetStore, RateLimits
from .spend import LocalSpendStore, Spend

if TYPE_CHECKING:  # redis-py comes through ..redis.client, behind its install hint
    from redis.commands.core import AsyncScript

__all__ = ["RedisBudgetStore", "shared_budget_store"]

log = logging.getLogger("rag_perf_plugins.redis")

Fallback = Literal["local-share", "fail-closed"]

# One script, one operation per call. Times are Redis TIME seconds; a missing field is 0,
# which is "long ago" (an empty bucket, no pause). Numbers go back as strings: Redis turns
# Lua numbers into integers.
_SCRIPT: Final = r"""
local key = KEYS[1]
local op = ARGV[1]
local ir = tonumber(ARGV[2])
local it = tonumber(ARGV[3])
local burst = tonumber(ARGV[4])
local req = tonumber(ARGV[5])
local tok = tonumber(ARGV[6])
local arg = tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', key, 'tr', 'tt', 'pu')
local tr = tonumber(s[1]) or 0
local tt = tonumber(s[2]) or 0
local pu = tonumber(s[3]) or 0
local seed = tonumber(ARGV[8])

local function grant(tat, amount, interval)
  if interval == 0 or amount <= 0 then return now end
  local tol = math.max(burst, interval)
  local at = tat - math.max(0, tol - amount * interval)
  if at - now <= 1e-9 then return now end
  return at
end

local function when()
  return math.max(now, pu, grant(tr, req, ir), grant(tt, tok, it))
end

local function save()
  redis.call('HSET', key, 'tr', string.format('%.6f', tr), 'tt', string.format('%.6f', tt),
             'pu', string.format('%.6f', pu))
  local idle = math.max(tr, tt, pu) - now + burst + 60
  redis.call('PEXPIRE', key, math.max(1000, math.ceil(idle * 1000)))
end

local function clamp(remaining, interval, tat)
  if remaining < 0 or interval == 0 then return tat end
  local floor = now + math.max(burst, interval) - remaining * interval
  return math.max(tat, floor)
end

if seed >= 0 then
  -- Rejoin after an outage: the bucket is empty now (whatever Redis kept or lost), and
  -- what the caller's local share already scheduled (seed, seconds at the full rate) is
  -- still to come.
  if ir > 0 then tr = math.max(tr, now + math.max(burst, ir)) + seed end
  if it > 0 then tt = math.max(tt, now + math.max(burst, it)) end
  save()
end

if op == 'reserve' then
  local at = when()
  local wait = at - now
  if wait <= arg then
    tr = math.max(tr, at) + req * ir
    tt = math.max(tt, at) + tok * it
    save()
  end
  return string.format('%.9f', wait)
elseif op == 'peek' then
  return string.format('%.9f', when() - now)
elseif op == 'adjust' then
  if req > 0 then tr = math.max(tr, now) + req * ir elseif req < 0 then tr = tr + req * ir end
  if tok > 0 then tt = math.max(tt, now) + tok * it elseif tok < 0 then tt = tt + tok * it end
  save()
  return '0'
elseif op == 'pause' then
  pu = math.max(pu, now + arg)
  if ir > 0 then tr = math.max(tr, pu + math.max(burst, ir) - ir) end
  tt = math.max(tt, pu)
  save()
  return '0'
elseif op == 'paused_for' then
  return string.format('%.9f', math.max(0, pu - now))
elseif op == 'clamp' then
  tr = clamp(req, ir, tr)
  tt = clamp(tok, it, tt)
  save()
  return '0'
end
return redis.error_reply('unknown op ' .. op)
"""


# Dollar budgets (a dimension beside RPM/TPM): one integer counter of micro-dollars per
# scope and clock window, under {prefix}:usd:{{scope}|{window name}}:{window index}, expiring
# one window after its end. 'spend' adds the amount only if the counter stays within the
# limit; 'adjust' adds a signed amount, never below zero. Returns {granted, spent before}.
_SPEND_SCRIPT: Final = r"""
local key = KEYS[1]
local amount = tonumber(ARGV[2])
local ttl = tonumber(ARGV[4])
local spent = tonumber(redis.call('GET', key) or '0')
if ARGV[1] == 'spend' then
  if spent + amount > tonumber(ARGV[3]) then return {0, spent} end
  redis.call('INCRBY', key, amount)
  redis.call('PEXPIRE', key, ttl)
  return {1, spent}
end
local now = math.max(0, spent + amount)
redis.call('SET', key, now, 'PX', ttl)
return {1, now}
"""


def _interval(per_minute: float | None) -> float:
    return 0.0 if per_minute is None else 60.0 / per_minute


def _nothing() -> float:
    return 0.0


@dataclass(frozen=True, slots=True)
class _Call:
    """One script call: ``op`` on ``key`` with these amounts, and what to do without Redis."""

    op: str
    key: str
    limits: RateLimits | None
    requests: float
    tokens: float
    arg: float
    fallback: Callable[[], float]
    now: float


class _LoopScript:
    """One event loop's asyncio client and the budget script registered on it."""

    __slots__ = ("client", "script", "spend")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.script: AsyncScript = client.register_script(_SCRIPT)
        self.spend: AsyncScript = client.register_script(_SPEND_SCRIPT)


async def _close_loop_script(entry: _LoopScript) -> None:
    await entry.client.aclose()


class RedisBudgetStore:
    """A :class:`~rag_perf_plugins.admission.gate.BudgetStore` in Redis, shared by processes.

    Example::

        store = RedisBudgetStore("redis://127.0.0.1:6379/0", prefix="app", worker_count=4)
        limits = RateLimits(requests_per_minute=600)
        store.try_reserve("openai/gpt-4o-mini/k-1", limits, requests=1, tokens=0,
                          now=time.monotonic(), max_wait=10.0)     # 0.0: send now
        store.stats()["fallback_calls"]                              # 0 while Redis answers
        await store.atry_reserve(...)       # the same, on this event loop's asyncio client

    Args:
        url: ``redis://[:password@]host:port/db``, or a
            :class:`~rag_perf_plugins.redis.client.RedisTarget` (cluster, sentinel).
        prefix: Key prefix of this application or tenant (``cache_namespace_prefix``).
        timeout: Seconds per connect and per reply (``redis_timeout``).
        fallback: ``"local-share"`` (budget / ``worker_count`` in this process) or
            ``"fail-closed"`` (admit nothing) while Redis is unreachable
            (``limiter_fallback``).
        worker_count: Processes sharing the budget (``worker_count``); sizes the share.
        retry_interval: Seconds between probes of an unreachable Redis.
        clock: Monotonic seconds of the circuit breaker (the budget uses Redis ``TIME``).
        client: An existing redis-py client for the blocking methods instead of building
            one from ``url`` (the asyncio clients are always built from ``url``).
        max_connections: Connections per client: the blocking one, and each event loop's.

    The ``now`` arguments of the protocol are used only by the local fallback.
    """

    __slots__ = (
        "_async_scripts",
        "_client",
        "_counts",
        "_local",
        "_local_due",
        "_local_keys",
        "_lock",
        "_owns_client",
        "_redis_due",
        "_script",
        "_seeding",
        "_shares",
        "_spend_local",
        "_spend_script",
        "_warned",
        "breaker",
        "fallback",
        "keys",
        "prefix",
        "target",
        "url",
        "worker_count",
    )

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        prefix: str = "rag-perf",
        timeout: float = 0.25,
        fallback: Fallback = "local-share",
        worker_count: int = 1,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        client: Any | None = None,
        max_connections: int = 32,
    ) -> None:
        if fallback not in ("local-share", "fail-closed"):
            msg = f"fallback must be 'local-share' or 'fail-closed', got {fallback!r}"
            raise ValueError(msg)
        if isinstance(worker_count, bool) or not isinstance(worker_count, int) or worker_count < 1:
            msg = f"worker_count must be an integer >= 1 (processes), got {worker_count!r}"
            raise ValueError(msg)
        if not isinstance(prefix, str) or not prefix:
            msg = f"prefix must be a non-empty string, got {prefix!r}"
            raise ValueError(msg)
        target = RedisTarget.of(url)
        self.target = target
        self.url = target.url
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self.fallback = fallback
        self.worker_count = worker_count
        self._client, self._owns_client = own_or_given(
            target, client, timeout=timeout, max_connections=max_connections
        )
        self._script = self._client.register_script(_SCRIPT)
        self._spend_script = self._client.register_script(_SPEND_SCRIPT)
        self._spend_local = LocalSpendStore()  # the outage share of dollar budgets
        # One asyncio client per event loop, closed while that loop shuts down.
        self._async_scripts: PerLoop[_LoopScript] = PerLoop(
            lambda: _LoopScript(
                target.async_client(timeout=timeout, max_connections=max_connections)
            ),
            _close_loop_script,
        )
        # Per key: when the latest reservation granted to this process by Redis, and by
        # the local share, is due to be sent (monotonic seconds of the callers' ``now``);
        # the keys served by the local share since Redis last answered (they re-seed Redis
        # on its next answer), and those whose re-seeding call is in flight.
        self._redis_due: dict[str, float] = {}
        self._local_due: dict[str, float] = {}
        self._local_keys: set[str] = set()
        self._seeding: set[str] = set()
        # Aligned probes: every process of a host rejoins the shared budget at one moment
        # (a process back on Redis while others still use their shares would over-admit).
        self.breaker = CircuitBreaker(retry_interval=retry_interval, clock=clock, aligned=True)
        self._local = LocalBudgetStore()
        self._shares: dict[RateLimits, RateLimits] = {}
        self._lock = threading.Lock()
        self._warned = False
        self._counts = {
            "redis_calls": 0,
            "fallback_calls": 0,
            "redis_errors": 0,
            "local_starts": 0,
            "reseeds": 0,
        }

    @classmethod
    def from_config(cls, config: PerformanceConfig, **options: Any) -> RedisBudgetStore:
        """The store of the config's Redis keys.

        Reads ``redis_url`` (with ``redis_mode``, ``redis_sentinels``, ``redis_master_name``),
        ``cache_namespace_prefix``, ``redis_timeout``,
        ``limiter_fallback`` and ``worker_count``.
        """
        if not config.redis_url:
            msg = "RedisBudgetStore.from_config needs redis_url (e.g. redis://127.0.0.1:6379/0)"
            raise ValueError(msg)
        return cls(
            RedisTarget.from_config(config),
            prefix=config.cache_namespace_prefix,
            timeout=config.redis_timeout,
            fallback=config.limiter_fallback,
            worker_count=config.worker_count,
            **options,
        )

    # --- the one Redis call and the fallback ---------------------------------------------
    # Both twins run the same decision code: _begin (breaker, arguments), _failed (count,
    # trip, warn), _answered (count, recover); only the round trip itself differs.
    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _begin(self, call: _Call) -> tuple[list[str], list[Any], bool] | None:
        """The script's keys and args for ``call`` and whether it re-seeds; None: breaker open."""
        if not self.breaker.allow():
            self._count("fallback_calls")
            return None
        ir = it = 0.0
        burst = 1.0
        if call.limits is not None:
            ir = _interval(call.limits.requests_per_minute)
            it = _interval(call.limits.tokens_per_minute)
            burst = call.limits.burst_seconds
        keys = [self.keys.budget(call.key)]
        args = [call.op, repr(ir), repr(it), repr(burst), call.requests, call.tokens]
        seed = self._seed(call)
        return keys, [*args, repr(call.arg), repr(seed)], seed >= 0

    def _seed(self, call: _Call) -> float:
        """Seconds of the rate still scheduled by the local share of ``call.key``, or -1.

        -1 (no re-seed) unless the key was served locally since Redis last answered. One
        call per key carries the seed (concurrent callers would add it up); another call
        carries it if that one does not reach Redis.
        """
        with self._lock:
            if call.limits is None or call.key not in self._local_keys:
                return -1.0
            if call.key in self._seeding:
                return -1.0
            self._seeding.add(call.key)
        ahead = max(0.0, self._local_due.get(call.key, call.now) - call.now)
        return ahead / self.worker_count

    def _call_failed(self, call: _Call, seeded: bool, exc: BaseException) -> None:
        if seeded:  # another call carries the re-seed
            with self._lock:
                self._seeding.discard(call.key)
        self._failed(exc)

    def _failed(self, exc: BaseException) -> None:
        self._count("redis_errors")
        self._count("fallback_calls")
        if self.breaker.failure():
            self._report_outage(exc)

    def _answered(self, call: _Call, seeded: bool, raw: Any) -> float:
        self._count("redis_calls")
        if self.breaker.success():
            log.info("shared rate limit: redis at %s answers again", self.target.describe())
        if seeded:
            with self._lock:
                self._seeding.discard(call.key)
                self._local_keys.discard(call.key)
                self._counts["reseeds"] += 1
        wait = float(raw)
        if call.op == "reserve" and wait <= call.arg:
            self._granted(self._redis_due, call.key, call.now + wait)
        return wait

    def _granted(self, book: dict[str, float], key: str, due: float) -> None:
        with self._lock:
            if due > book.get(key, -math.inf):
                book[key] = due

    def _redis(self, call: _Call) -> float | None:
        """Run ``call`` in Redis; ``None`` when Redis is unreachable (the caller falls back)."""
        probe = self.breaker.state == "open"
        script = self._begin(call)
        if script is None:
            return None
        try:
            try:
                raw = self._script(keys=script[0], args=script[1])
            except OUTAGE_ERRORS:
                if not probe:
                    raise
                # A probe's pooled connection may be one the restarted server dropped:
                # one more try on a fresh connection, so every process rejoins together.
                raw = self._script(keys=script[0], args=script[1])
        except OUTAGE_ERRORS as exc:
            self._call_failed(call, script[2], exc)
            return None
        return self._answered(call, script[2], raw)

    async def _aredis(self, call: _Call) -> float | None:
        """:meth:`_redis` on this event loop's asyncio client: the loop is never blocked."""
        probe = self.breaker.state == "open"
        script = self._begin(call)
        if script is None:
            return None
        try:
            run = (await self._async_scripts.get()).script
            try:
                raw = await run(keys=script[0], args=script[1])
            except OUTAGE_ERRORS:
                if not probe:
                    raise
                raw = await run(keys=script[0], args=script[1])  # see _redis
        except OUTAGE_ERRORS as exc:
            self._call_failed(call, script[2], exc)
            return None
        return self._answered(call, script[2], raw)

    def _run(self, call: _Call) -> float:
        wait = self._redis(call)
        return self._local_answer(call) if wait is None else wait

    async def _arun(self, call: _Call) -> float:
        wait = await self._aredis(call)
        return self._local_answer(call) if wait is None else wait

    def _local_answer(self, call: _Call) -> float:
        """``call`` served by the fallback (the local share, or fail-closed).

        The first local call of a key after Redis answered starts that key's local share
        empty, after what Redis had scheduled for this process.
        """
        if call.limits is not None and self.fallback == "local-share":
            with self._lock:
                first = call.key not in self._local_keys
                self._local_keys.add(call.key)
            if first:
                self._start_local_share(call.key, call.limits, call.now)
        wait = call.fallback()
        if call.op == "reserve" and wait <= call.arg:
            self._granted(self._local_due, call.key, call.now + wait)
        return wait

    def _start_local_share(self, key: str, limits: RateLimits, now: float) -> None:
        share = self._share(limits)
        tokens = None if limits.tokens_per_minute is None else 0
        self._local.clamp(key, share, requests=0, tokens=tokens, now=now)  # empty, no burst
        due = self._redis_due.get(key, now)
        rpm = share.requests_per_minute
        if due > now and rpm is not None:
            # Reservations Redis already granted us, still to be sent: the share comes after.
            ahead = math.ceil((due - now) * rpm / 60.0)
            self._local.adjust(key, share, requests=ahead, tokens=0, now=now)
        self._count("local_starts")

    def _report_outage(self, exc: BaseException) -> None:
        what = (
            f"a local share of 1/{self.worker_count} of each budget"
            if self.fallback == "local-share"
            else "no admissions (fail-closed)"
        )
        message = (
            "shared rate limit: redis at %s did not answer (%s); using %s and probing "
            "again every %g s"
        )
        args = (self.target.describe(), describe_error(exc), what)
        with self._lock:
            first = not self._warned
            self._warned = True
        level = logging.WARNING if first else logging.INFO
        log.log(level, message, *args, self.breaker.retry_interval)

    def _share(self, limits: RateLimits) -> RateLimits:
        share = self._shares.get(limits)
        if share is None:
            n = self.worker_count
            rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
            share = RateLimits(
                None if rpm is None else rpm / n,
                None if tpm is None else tpm / n,
                limits.burst_seconds,
            )
            self._shares[limits] = share
        return share

    # --- the calls: what to ask Redis, and what to do without it ----------------------
    def _refused(self) -> float:
        return math.inf  # fail-closed: the gate refuses the caller

    def _reserve_call(
        self, key: str, limits: RateLimits, requests: int, tokens: int, now: float, max_wait: float
    ) -> _Call:
        if self.fallback == "fail-closed":
            fallback = self._refused
        else:
            share = self._share(limits)

            def fallback() -> float:
                return self._local.try_reserve(
                    key, share, requests=requests, tokens=tokens, now=now, max_wait=max_wait
                )

        return _Call("reserve", key, limits, requests, tokens, max_wait, fallback, now)

    def _peek_call(
        self, key: str, limits: RateLimits, requests: int, tokens: int, now: float
    ) -> _Call:
        if self.fallback == "fail-closed":
            fallback = self._refused
        else:
            share = self._share(limits)

            def fallback() -> float:
                return self._local.peek(key, share, requests=requests, tokens=tokens, now=now)

        return _Call("peek", key, limits, requests, tokens, 0.0, fallback, now)

    def _adjust_call(
        self, key: str, limits: RateLimits, requests: int, tokens: int, now: float
    ) -> _Call:
        share = self._share(limits)

        def fallback() -> float:
            self._local.adjust(key, share, requests=requests, tokens=tokens, now=now)
            return 0.0

        return _Call("adjust", key, limits, requests, tokens, 0.0, fallback, now)

    def _pause_call(self, key: str, limits: RateLimits, seconds: float, now: float) -> _Call:
        # The local share pauses too (now, not only as a fallback), so a pause still holds
        # if Redis goes away meanwhile.
        self._local.pause(key, self._share(limits), seconds=seconds, now=now)
        return _Call("pause", key, limits, 0, 0, seconds, _nothing, now)

    def _paused_for_call(self, key: str, now: float) -> _Call:
        def fallback() -> float:
            return self._local.paused_for(key, now=now)

        return _Call("paused_for", key, None, 0, 0, 0.0, fallback, now)

    def _clamp_call(
        self, key: str, limits: RateLimits, requests: int | None, tokens: int | None, now: float
    ) -> _Call:
        share = self._share(limits)

        def fallback() -> float:
            self._local.clamp(key, share, requests=requests, tokens=tokens, now=now)
            return 0.0

        r = -1 if requests is None else max(0, requests)
        t = -1 if tokens is None else max(0, tokens)
        return _Call("clamp", key, limits, r, t, 0.0, fallback, now)

    # --- BudgetStore: blocking methods (the sync client) ----------------------------------
    def try_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Seconds until the amounts may be sent; debited only when that is ``<= max_wait``.

        Fail-closed during an outage: ``math.inf`` (the gate refuses the caller).
        """
        return self._run(self._reserve_call(key, limits, requests, tokens, now, max_wait))

    def peek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Seconds until the amounts could be sent, debiting nothing."""
        return self._run(self._peek_call(key, limits, requests, tokens, now))

    def adjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Debit (positive) or refund (negative) amounts, without waiting."""
        self._run(self._adjust_call(key, limits, requests, tokens, now))

    def pause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Pause ``key`` for every process for ``seconds``; afterwards resume at the rate."""
        self._run(self._pause_call(key, limits, seconds, now))

    def paused_for(self, key: str, *, now: float) -> float:
        """Seconds left of a pause on ``key`` (0.0 when not paused)."""
        return self._run(self._paused_for_call(key, now))

    def clamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Let at most ``requests``/``tokens`` leave now (the provider's remaining budget)."""
        self._run(self._clamp_call(key, limits, requests, tokens, now))

    # --- BudgetStore: async twins (this event loop's asyncio client) ----------------------
    async def atry_reserve(
        self,
        key: str,
        limits: RateLimits,
        *,
        requests: int,
        tokens: int,
        now: float,
        max_wait: float,
    ) -> float:
        """Async :meth:`try_reserve`: same answer, the event loop keeps running meanwhile."""
        return await self._arun(self._reserve_call(key, limits, requests, tokens, now, max_wait))

    async def apeek(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> float:
        """Async :meth:`peek`."""
        return await self._arun(self._peek_call(key, limits, requests, tokens, now))

    async def aadjust(
        self, key: str, limits: RateLimits, *, requests: int, tokens: int, now: float
    ) -> None:
        """Async :meth:`adjust`."""
        await self._arun(self._adjust_call(key, limits, requests, tokens, now))

    async def apause(self, key: str, limits: RateLimits, *, seconds: float, now: float) -> None:
        """Async :meth:`pause`."""
        await self._arun(self._pause_call(key, limits, seconds, now))

    async def apaused_for(self, key: str, *, now: float) -> float:
        """Async :meth:`paused_for`."""
        return await self._arun(self._paused_for_call(key, now))

    async def aclamp(
        self, key: str, limits: RateLimits, *, requests: int | None, tokens: int | None, now: float
    ) -> None:
        """Async :meth:`clamp`."""
        await self._arun(self._clamp_call(key, limits, requests, tokens, now))

    # --- SpendStore: dollar budgets (see rag_perf_plugins.admission.spend) --------------------
    # Redis unreachable: with worker_count > 1 each process spends its share of the limit
    # locally; with 1 (the default, where every process would get the whole limit) the call
    # is refused (fail closed), whatever limiter_fallback says for RPM/TPM.
    def _spend_key(self, key: str, window: int) -> str:
        return self.keys.part("usd", key, str(window))

    def _spend_args(self, op: str, amount: int, limit: int, window_s: int) -> list[Any]:
        return [op, amount, limit, (2 * window_s) * 1000]

    def _spend_fallback(
        self, key: str, window_s: int, limit: int, amount: int, now: float
    ) -> Spend:
        if self.worker_count > 1:
            share = limit // self.worker_count
            return self._spend_local.try_spend(
                key, window_s=window_s, limit=share, amount=amount, now=now
            )
        window = int(now // window_s)
        return Spend(False, 0, window, (window + 1) * window_s - now, unavailable=True)

    def _spend_answer(self, raw: Any, window: int, window_s: int, now: float) -> Spend:
        self._count("redis_calls")
        if self.breaker.success():
            log.info("shared rate limit: redis at %s answers again", self.target.describe())
        return Spend(bool(int(raw[0])), int(raw[1]), window, (window + 1) * window_s - now)

    def try_spend(self, key: str, *, window_s: int, limit: int, amount: int, now: float) -> Spend:
        """Add ``amount`` micro-USD to ``key``'s current window if it stays within ``limit``."""
        window = int(now // window_s)
        if self.breaker.allow():
            try:
                raw = self._spend_script(
                    keys=[self._spend_key(key, window)],
                    args=self._spend_args("spend", amount, limit, window_s),
                )
            except OUTAGE_ERRORS as exc:
                self._failed(exc)
            else:
                return self._spend_answer(raw, window, window_s, now)
        else:
            self._count("fallback_calls")
        return self._spend_fallback(key, window_s, limit, amount, now)

    async def atry_spend(
        self, key: str, *, window_s: int, limit: int, amount: int, now: float
    ) -> Spend:
        """Async :meth:`try_spend` on this event loop's asyncio client."""
        window = int(now // window_s)
        if self.breaker.allow():
            try:
                run = (await self._async_scripts.get()).spend
                raw = await run(
                    keys=[self._spend_key(key, window)],
                    args=self._spend_args("spend", amount, limit, window_s),
                )
            except OUTAGE_ERRORS as exc:
                self._failed(exc)
            else:
                return self._spend_answer(raw, window, window_s, now)
        else:
            self._count("fallback_calls")
        return self._spend_fallback(key, window_s, limit, amount, now)

    def adjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """Add ``amount`` (negative: refund) to window ``window`` of ``key``, never below 0."""
        if self.breaker.allow():
            try:
                self._spend_script(
                    keys=[self._spend_key(key, window)],
                    args=self._spend_args("adjust", amount, 0, window_s),
                )
            except OUTAGE_ERRORS as exc:
                self._failed(exc)
            else:
                self._count("redis_calls")
                return
        self._spend_local.adjust_spend(key, window_s=window_s, window=window, amount=amount)

    async def aadjust_spend(self, key: str, *, window_s: int, window: int, amount: int) -> None:
        """Async :meth:`adjust_spend`."""
        if self.breaker.allow():
            try:
                run = (await self._async_scripts.get()).spend
                await run(
                    keys=[self._spend_key(key, window)],
                    args=self._spend_args("adjust", amount, 0, window_s),
                )
            except OUTAGE_ERRORS as exc:
                self._failed(exc)
            else:
                self._count("redis_calls")
                return
        self._spend_local.adjust_spend(key, window_s=window_s, window=window, amount=amount)

    # --- inspection and lifecycle ---------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Calls answered by Redis, calls served by the fallback, errors, breaker state.

        ``local_starts``: keys whose local share was started (empty) at an outage;
        ``reseeds``: keys whose shared bucket was re-seeded when Redis answered again.
        """
        with self._lock:
            counts = dict(self._counts)
        return {
            **counts,
            "event_loops": len(self._async_scripts),
            "state": self.breaker.state,
            "trips": self.breaker.trips,
            "recoveries": self.breaker.recoveries,
            "fallback": self.fallback,
            "worker_count": self.worker_count,
        }

    def reset(self, key: str) -> None:
        """Forget the shared state of ``key`` (a full bucket again, no pause)."""
        self._client.delete(self.keys.budget(key))

    def reset_lock(self) -> None:
        """Replace locks after ``fork()``; redis-py reconnects in a new process by itself."""
        self._lock = threading.Lock()
        self.breaker.reset_lock()
        self._async_scripts.forget()

    def close(self) -> None:
        """Close the blocking client's pool (when this store built the client); idempotent.

        Asyncio clients close with their event loops (or with :meth:`aclose` on each loop).
        """
        if self._owns_client:
            self._client.close()

    async def aclose(self) -> None:
        """Close the running loop's asyncio client now; idempotent, reopened on next use.

        Not needed with ``asyncio.run``: a loop's client is closed while the loop shuts down.
        """
        await self._async_scripts.aclose_current()

    def __repr__(self) -> str:
        c = self._counts
        return (
            f"<RedisBudgetStore {self.target.describe()} prefix={self.prefix!r} "
            f"[{self.breaker.state} | redis calls: {c['redis_calls']}, fallback calls: "
            f"{c['fallback_calls']} | fallback={self.fallback}, workers={self.worker_count}]>"
        )


_STORES: dict[tuple[Any, ...], RedisBudgetStore] = {}
_STORES_LOCK = threading.Lock()


def shared_budget_store(config: PerformanceConfig) -> RedisBudgetStore:
    """The process-wide store for ``config``'s Redis settings, made on first use.

    Example: ``AdmissionGate(config, key=k, store=shared_budget_store(config))``; the gate
    does this itself when ``shared_rate_limit`` and ``redis_url`` are set.
    """
    if not config.redis_url:
        msg = "shared_rate_limit needs redis_url (e.g. redis://127.0.0.1:6379/0)"
        raise ValueError(msg)
    ident = (
        config.redis_url,
        config.redis_mode,
        config.redis_sentinels,
        config.redis_master_name,
        config.cache_namespace_prefix,
        config.redis_timeout,
        config.limiter_fallback,
        config.worker_count,
    )
    with _STORES_LOCK:
        store = _STORES.get(ident)
        if store is None:
            store = _STORES[ident] = RedisBudgetStore.from_config(config)
        return store


def _after_fork_in_child() -> None:
    global _STORES_LOCK
    _STORES_LOCK = threading.Lock()
    for store in list(_STORES.values()):
        store.reset_lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
