"""RedisBreakerStore: one circuit breaker per target, shared by every process through Redis.

Example::

    store = RedisBreakerStore("redis://127.0.0.1:6379/0", prefix="my-app")
    admission = store.admit("openai/gpt-4o-mini/k-3f9a", settings, now=time.time())
    await store.arecord("openai/gpt-4o-mini/k-3f9a", settings, "failure", False, time.time())

Each call is one Lua script (:data:`_SCRIPT`), the rules of
:class:`~.breaker.BreakerCore` written a second time, run atomically by Redis: two
processes can never both take the last probe slot, and an opening keeps the later of the
cool-down ends already set and its own (``max``), so a cool-down is never shortened by a
later writer. State lives in one small hash per target under :func:`breaker_key`
(``{prefix}:cb:{target}``; the target holds an API-key fingerprint, never the key), which
expires after an idle hour. Time is the caller's ``now``: wall-clock seconds by default
(``time.time``), so hosts sharing a breaker need clocks in step (NTP); tests pass a
``FakeClock``.

Redis down: a call that meets a refused connection or a timeout falls back to a
process-local breaker (:class:`~.store.LocalBreakerStore`) and counts it
(``stats()["fallback_calls"]``); the first outage is logged as a warning, later ones at
INFO; a Redis circuit breaker probes Redis again every ``retry_interval`` seconds. The local
breaker does not learn what the shared one saw, and the reverse.

The async twins use a ``redis.asyncio`` client of the running event loop (one per loop,
closed when the loop shuts down), so the event loop never blocks on Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal, cast

from .._loops import PerLoop
from ..config import PerformanceConfig
from ..redis.client import (
    OUTAGE_ERRORS,
    CircuitBreaker,
    RedisTarget,
    describe_error,
    own_or_given,
    redact_url,
)
from ..redis.keys import RedisKeys
from .breaker import Admission, BreakerSettings, Outcome, State, Transition
from .store import LocalBreakerStore

if TYPE_CHECKING:
    from redis.commands.core import AsyncScript

__all__ = ["RedisBreakerStore", "breaker_key"]

log = logging.getLogger("rag_perf_plugins.redis")


def breaker_key(prefix: str, target: str) -> str:
    """The Redis key of ``target``'s breaker: ``breaker_key("app", "openai/m/k-1")``.

    ``"app:cb:{openai/m/k-1}"``: the target is the Redis Cluster hash tag
    (:class:`~rag_perf_plugins.redis.keys.RedisKeys`).
    """
    return RedisKeys(prefix).part("cb", target)


# The rules of BreakerCore, once more, in Lua. ARGV: op, now, failure_ratio, min_calls,
# window, cooldown, probes, outcome, probe (1/0), consecutive (0: none), since (admission
# time of the recorded call; empty: unknown), down_failures (0: none), cooldown_growth,
# cooldown_max, cooldown_jitter, rand (the jitter draw in [0, 1), made by the client: a
# script's own random numbers are the same at every run). Numbers go back inside strings:
# Redis turns Lua numbers into integers. Fields: st state, ou open until, oa opened at,
# po probes out, pk probes ok, pa probe at, cf failures in a row, df "down" failures in a
# row, lf last failure, lv failed probes since the last close (cool-down growth).
_SCRIPT: Final = r"""
local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])
local ratio = tonumber(ARGV[3])
local min_calls = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local cooldown = tonumber(ARGV[6])
local probes = tonumber(ARGV[7])
local outcome = ARGV[8]
local probe = ARGV[9] == '1'
local consecutive = tonumber(ARGV[10])
local since = tonumber(ARGV[11])
local down_failures = tonumber(ARGV[12])
local growth = tonumber(ARGV[13])
local cooldown_max = tonumber(ARGV[14])
local jitter = tonumber(ARGV[15])
local rand = tonumber(ARGV[16])
local slots = 10
local s = redis.call('HMGET', key, 'st', 'ou', 'oa', 'po', 'pk', 'pa', 'cf', 'lf', 'df', 'lv')
local st = s[1] or 'closed'
local ou = tonumber(s[2]) or 0
local oa = tonumber(s[3]) or 0
local po = tonumber(s[4]) or 0
local pk = tonumber(s[5]) or 0
local pa = tonumber(s[6]) or 0
local cf = tonumber(s[7]) or 0
local lf = tonumber(s[8])
local df = tonumber(s[9]) or 0
local lv = tonumber(s[10]) or 0

local function num(x) return string.format('%.6f', x) end

local function save()
  redis.call('HSET', key, 'st', st, 'ou', num(ou), 'oa', num(oa), 'po', po, 'pk', pk,
             'pa', num(pa), 'cf', cf, 'df', df, 'lv', lv)
  redis.call('HDEL', key, 'lf')
  redis.call('EXPIRE', key, 3600)
end

local function clear()
  local names = {}
  for i = 0, slots - 1 do names[#names + 1] = 'b' .. i end
  redis.call('HDEL', key, unpack(names))
end

local function open()
  local kind = 'reopened'
  if st == 'closed' then
    oa = now
    kind = 'opened'
    lv = 0
  else
    lv = lv + 1
  end
  st = 'open'
  local grown = math.max(cooldown, math.min(cooldown_max, cooldown * growth ^ math.min(lv, 64)))
  local cd = grown * (1 + jitter * math.min(math.max(rand, 0), 1))
  ou = math.max(ou, now + cd)
  po = 0
  pk = 0
  cf = 0
  df = 0
  clear()
  save()
  return kind .. '|0|' .. num(ou - now)
end

local function close()
  st = 'closed'
  po = 0
  pk = 0
  cf = 0
  df = 0
  lv = 0
  clear()
  save()
  return 'closed|' .. num(math.max(0, now - oa)) .. '|0'
end

local function retry_in()
  if st == 'open' then return math.max(0, ou - now) end
  if st == 'half_open' and po >= probes then return math.max(0, pa + cooldown - now) end
  return 0
end

if op == 'admit' then
  local transition = ''
  if st == 'open' then
    if now < ou then return '0|0|open|' .. num(ou - now) .. '|' end
    st = 'half_open'
    po = 0
    pk = 0
    transition = 'half_open'
  end
  if st == 'half_open' then
    if po >= probes and now - pa >= cooldown then
      po = 0
      pk = 0
    end
    if po < probes then
      po = po + 1
      pa = now
      save()
      return '1|1|half_open|0|' .. transition
    end
    save()
    return '0|0|half_open|' .. num(math.max(0, pa + cooldown - now)) .. '|' .. transition
  end
  return '1|0|closed|0|'
elseif op == 'record' then
  if probe then
    if st ~= 'half_open' then return '|0|0' end
    if outcome == 'failure' or outcome == 'down' then return open() end
    if outcome == 'neutral' then
      po = math.max(0, po - 1)
      save()
      return '|0|0'
    end
    pk = pk + 1
    if pk >= probes then return close() end
    save()
    return '|0|0'
  end
  if st ~= 'closed' or outcome == 'neutral' then return '|0|0' end
  local step = window / slots
  local index = math.floor(now / step)
  local field = 'b' .. (index % slots)
  local raw = redis.call('HGET', key, field)
  local bi, bc, bf = -1, 0, 0
  if raw then
    local a, b, c = string.match(raw, '^(-?%d+):(%d+):(%d+)$')
    bi, bc, bf = tonumber(a), tonumber(b), tonumber(c)
  end
  if bi ~= index then bi, bc, bf = index, 0, 0 end
  bc = bc + 1
  if outcome ~= 'success' then bf = bf + 1 end
  redis.call('HSET', key, field, bi .. ':' .. bc .. ':' .. bf)
  redis.call('EXPIRE', key, 3600)
  if outcome == 'success' then
    -- a success of a call admitted before the last failure does not end the run
    if since == nil or lf == nil or since >= lf then redis.call('HSET', key, 'cf', 0, 'df', 0) end
    return '|0|0'
  end
  cf = cf + 1
  if outcome == 'down' then df = df + 1 end
  redis.call('HSET', key, 'cf', cf, 'df', df, 'lf', num(now))
  if outcome == 'down' and down_failures > 0 and df >= down_failures then return open() end
  if consecutive > 0 and cf >= consecutive then return open() end
  local oldest = index - slots
  local calls, failures = 0, 0
  for i = 0, slots - 1 do
    local r = redis.call('HGET', key, 'b' .. i)
    if r then
      local a, b, c = string.match(r, '^(-?%d+):(%d+):(%d+)$')
      if tonumber(a) > oldest then
        calls = calls + tonumber(b)
        failures = failures + tonumber(c)
      end
    end
  end
  if calls >= min_calls and failures >= ratio * calls then return open() end
  return '|0|0'
elseif op == 'peek' then
  local state = st
  if st == 'open' and now >= ou then state = 'half_open' end
  return state .. '|' .. num(retry_in())
end
return redis.error_reply('unknown op ' .. op)
"""


class _LoopScript:
    """One event loop's asyncio client and the breaker script registered on it."""

    __slots__ = ("client", "script")

    def __init__(self, client: Any) -> None:
        self.client = client
        self.script: AsyncScript = client.register_script(_SCRIPT)


async def _close_loop_script(entry: _LoopScript) -> None:
    await entry.client.aclose()


def _args(
    op: str,
    settings: BreakerSettings,
    now: float,
    outcome: str,
    probe: bool,
    since: float | None = None,
    rand: float = 0.0,
) -> list[Any]:
    return [
        op,
        repr(float(now)),
        repr(float(settings.failure_ratio)),
        settings.min_calls,
        repr(float(settings.window)),
        repr(float(settings.cooldown)),
        settings.probes,
        outcome,
        "1" if probe else "0",
        settings.consecutive or 0,
        "" if since is None else repr(float(since)),
        settings.down_failures or 0,
        repr(float(settings.cooldown_growth)),
        repr(float(settings.cooldown_max)),
        repr(float(settings.cooldown_jitter)),
        repr(float(rand)),
    ]


def _admission(raw: Any) -> Admission:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    allowed, probe, state, retry_in, transition = text.split("|")
    return Admission(
        allowed == "1", probe == "1", cast(State, state), float(retry_in), transition or None
    )


def _transition(raw: Any) -> Transition | None:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    kind, open_s, cooldown_s = text.split("|")
    if kind in ("opened", "reopened"):
        return Transition(cast(Literal["opened", "reopened"], kind), 0.0, float(cooldown_s))
    if kind == "closed":
        return Transition("closed", float(open_s))
    return None


def _peeked(raw: Any) -> tuple[State, float]:
    text = raw.decode() if isinstance(raw, bytes) else str(raw)
    state, retry_in = text.split("|")
    return cast(State, state), float(retry_in)


class RedisBreakerStore:
    """A :class:`~.store.BreakerStore` in Redis: one breaker per target for every process.

    Example::

        store = RedisBreakerStore.from_config(PerformanceConfig(redis_url="redis://..."))
        store.stats()       # {"redis_calls": ..., "fallback_calls": ..., "redis_errors": ...}

    Args:
        url: ``redis://[:password@]host:port/db``.
        prefix: Key prefix of this application or tenant (``cache_namespace_prefix``).
        timeout: Seconds per connect and per reply (``redis_timeout``).
        retry_interval: Seconds between probes of an unreachable Redis.
        clock: Monotonic seconds of the Redis outage breaker.
        client: An existing redis-py client for the blocking methods.
        max_connections: Connections per client (the blocking one and each loop's).
    """

    __slots__ = (
        "_async_scripts",
        "_client",
        "_counts",
        "_lock",
        "_owns_client",
        "_script",
        "_warned",
        "local",
        "outage",
        "prefix",
        "url",
    )

    def __init__(
        self,
        url: str | RedisTarget,
        *,
        prefix: str = "rag-perf",
        timeout: float = 0.25,
        retry_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        client: Any | None = None,
        max_connections: int = 32,
    ) -> None:
        if not isinstance(prefix, str) or not prefix:
            msg = f"prefix must be a non-empty string, got {prefix!r}"
            raise ValueError(msg)
        target = RedisTarget.of(url)
        self.url = target.url
        self.prefix = prefix
        self._client, self._owns_client = own_or_given(
            target, client, timeout=timeout, max_connections=max_connections
        )
        self._script = self._client.register_script(_SCRIPT)
        self._async_scripts: PerLoop[_LoopScript] = PerLoop(
            lambda: _LoopScript(
                target.async_client(timeout=timeout, max_connections=max_connections)
            ),
            _close_loop_script,
        )
        self.outage = CircuitBreaker(retry_interval=retry_interval, clock=clock)
        self.local = LocalBreakerStore()  # while Redis is unreachable
        self._lock = threading.Lock()
        self._warned = False
        self._counts = {"redis_calls": 0, "fallback_calls": 0, "redis_errors": 0}

    @classmethod
    def from_config(cls, config: PerformanceConfig, **options: Any) -> RedisBreakerStore:
        """The store of ``redis_url``, ``cache_namespace_prefix`` and ``redis_timeout``."""
        if not config.redis_url:
            msg = "RedisBreakerStore.from_config needs redis_url (e.g. redis://127.0.0.1:6379/0)"
            raise ValueError(msg)
        return cls(
            RedisTarget.from_config(config),
            prefix=config.cache_namespace_prefix,
            timeout=config.redis_timeout,
            **options,
        )

    def stats(self) -> dict[str, int]:
        """``redis_calls``, ``fallback_calls`` (answered by the local breaker), ``redis_errors``."""
        with self._lock:
            return dict(self._counts)

    def close(self) -> None:
        """Close the blocking client if this store made it (loop clients close with their loop)."""
        if self._owns_client:
            self._client.close()

    # --- one script call, and the local fallback ----------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _failed(self, exc: BaseException) -> None:
        self._count("redis_errors")
        self._count("fallback_calls")
        if self.outage.failure():
            with self._lock:
                first, self._warned = not self._warned, True
            log.log(
                logging.WARNING if first else logging.INFO,
                "shared circuit breaker: redis at %s did not answer (%s); using a local "
                "breaker per process and probing again every %g s",
                redact_url(self.url),
                describe_error(exc),
                self.outage.retry_interval,
            )

    def _answered(self, raw: Any) -> Any:
        self._count("redis_calls")
        if self.outage.success():
            log.info("shared circuit breaker: redis at %s answers again", redact_url(self.url))
        return raw

    def _call(self, target: str, args: list[Any]) -> Any:
        if not self.outage.allow():
            self._count("fallback_calls")
            return None
        try:
            raw = self._script(keys=[breaker_key(self.prefix, target)], args=args)
        except OUTAGE_ERRORS as exc:
            self._failed(exc)
            return None
        return self._answered(raw)

    async def _acall(self, target: str, args: list[Any]) -> Any:
        if not self.outage.allow():
            self._count("fallback_calls")
            return None
        try:
            run = (await self._async_scripts.get()).script
            raw = await run(keys=[breaker_key(self.prefix, target)], args=args)
        except OUTAGE_ERRORS as exc:
            self._failed(exc)
            return None
        return self._answered(raw)

    # --- the protocol -------------------------------------------------------------------
    def admit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """May a call go to ``target`` now (shared decision; local while Redis is down)."""
        raw = self._call(target, _args("admit", settings, now, "", False))
        return self.local.admit(target, settings, now) if raw is None else _admission(raw)

    async def aadmit(self, target: str, settings: BreakerSettings, now: float) -> Admission:
        """Async twin of :meth:`admit`, on this event loop's client."""
        raw = await self._acall(target, _args("admit", settings, now, "", False))
        return self.local.admit(target, settings, now) if raw is None else _admission(raw)

    def record(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Count one outcome of ``target`` in the shared breaker."""
        raw = self._call(target, _args("record", settings, now, outcome, probe, since, rand))
        if raw is None:
            return self.local.record(target, settings, outcome, probe, now, since, rand)
        return _transition(raw)

    async def arecord(
        self,
        target: str,
        settings: BreakerSettings,
        outcome: Outcome,
        probe: bool,
        now: float,
        since: float | None = None,
        rand: float = 0.0,
    ) -> Transition | None:
        """Async twin of :meth:`record`."""
        args = _args("record", settings, now, outcome, probe, since, rand)
        raw = await self._acall(target, args)
        if raw is None:
            return self.local.record(target, settings, outcome, probe, now, since, rand)
        return _transition(raw)

    def peek(self, target: str, settings: BreakerSettings, now: float) -> tuple[State, float]:
        """``(state, retry_in)`` of ``target``'s shared breaker, unchanged."""
        raw = self._call(target, _args("peek", settings, now, "", False))
        if raw is None:
            return self.local.peek(target, settings, now)
        return _peeked(raw)

    async def apeek(
        self, target: str, settings: BreakerSettings, now: float
    ) -> tuple[State, float]:
        """Async twin of :meth:`peek`, on this event loop's client."""
        raw = await self._acall(target, _args("peek", settings, now, "", False))
        if raw is None:
            return self.local.peek(target, settings, now)
        return _peeked(raw)

    def __repr__(self) -> str:
        c = self.stats()
        return (
            f"<RedisBreakerStore {redact_url(self.url)} prefix={self.prefix!r} | redis calls: "
            f"{c['redis_calls']}, fallback calls: {c['fallback_calls']}>"
        )
