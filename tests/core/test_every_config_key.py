"""Every config key has an effect: set to a non-default value, it changes what a component does.

``EFFECTS`` has one row per key of :class:`PerformanceConfig`: a non-default value, what is
observed, and a function that builds the real component(s) reading that key from a config
(cache manager, disk and Redis tiers, pools, HTTP clients, gate, retry policy, batcher,
LLM service, engines, tracker) and returns what it observed. ``test_the_key_has_an_effect``
runs it twice, with the key at its default and with the row's value (every other key as in
the row's ``base``), and expects exactly the row's two results. A key added to the config
without a row fails ``test_every_key_has_a_row``: give it an effect and a row, or remove it.

Time is a ``FakeClock`` wherever a component takes a clock, and results are exact counts
and values, never measured durations. Where a component waits on real time the row compares
a short wait with a long one and looks once, well between the two: ``max_wait_time`` (5 ms
or an hour, looked at after 0.5 s), ``connection_timeout`` (0.05 s or 30 s, after 1 s),
``cache_disk_timeout`` (0.1 s or 30 s, after at most 1 s), ``redis_timeout`` (0.25 s or
30 s, after 1 s); ``version_check_interval`` expects its two reads within the default
second, and ``keepalive_expiry`` (1 µs) more than a microsecond between two HTTP requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from rag_perf_plugins import (
    AsyncRAGEngine,
    BatchProcessor,
    CacheManager,
    ConnectionPool,
    ConnectionPoolConfig,
    LLMRequest,
    LLMService,
    PerformanceConfig,
    RAGEngine,
)
from rag_perf_plugins._clock import FakeClock
from rag_perf_plugins.admission import AdmissionGate, LocalBudgetStore, RetryPolicy
from rag_perf_plugins.admission.spend import LocalSpendStore
from rag_perf_plugins.bench.redis_servers import MASTER_NAME
from rag_perf_plugins.bench.suites.semantic import simulator_embed
from rag_perf_plugins.cache.manager import default_cache_dir
from rag_perf_plugins.cache.redis_tier import RedisTier
from rag_perf_plugins.cache.semantic import SemanticCache
from rag_perf_plugins.cache.tiers import DiskTier
from rag_perf_plugins.cost import price_table
from rag_perf_plugins.errors import (
    BudgetExceeded,
    DeadlineExceeded,
    Overloaded,
    PoolTimeout,
    ProviderError,
    ProviderUnavailable,
)
from rag_perf_plugins.pool.http import HttpClientRegistry
from rag_perf_plugins.redis.client import RedisUnavailable
from rag_perf_plugins.resilience import Breakers, BreakerSettings, LocalBreakerStore, Target
from rag_perf_plugins.resilience.breaker import Outcome
from rag_perf_plugins.services import Usage
from rag_perf_plugins.services.defaults import default_gate
from rag_perf_plugins.services.embeddings import EmbeddingService
from rag_perf_plugins.services.llm import Fallback
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import (
    NULL_TRACKER,
    PerformanceTracker,
    get_performance_tracker,
    set_performance_tracker,
)

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1: refused at once


# --- what every row gets ------------------------------------------------------------------
@dataclass
class Ctx:
    """A row's surroundings: a private directory tree, fixtures on demand, unique names."""

    tmp_path: Path
    request: pytest.FixtureRequest
    monkeypatch: pytest.MonkeyPatch
    _names: Iterator[int] = field(default_factory=itertools.count)

    def dir(self, name: str = "dir") -> str:
        """A new directory path (not created) under the test's tmp_path."""
        return str(self.tmp_path / f"{name}-{next(self._names)}")

    def unique(self, name: str) -> str:
        """A name no other row and no other run of this row uses (gate keys)."""
        return f"every-key-{name}-{id(self)}-{next(self._names)}"

    @property
    def redis_url(self) -> str:
        """The real Redis (database 15), flushed: see ``redis_url`` in tests/conftest.py."""
        url: str = self.request.getfixturevalue("redis_url")
        _flush(url)
        return url

    @property
    def simulator(self) -> Simulator:
        """The in-process provider simulator (one per test)."""
        sim: Simulator = self.request.getfixturevalue("simulator")
        return sim


Observe = Callable[[Ctx, PerformanceConfig], Any]


@dataclass(frozen=True)
class Effect:
    """One key's row: set it to ``value`` and ``observe`` gives ``changed`` instead of ``default``.

    ``value`` and ``base`` may be functions of the :class:`Ctx` (a fixture's URL, a path).
    ``base`` sets other keys in both runs, to make the effect visible.
    """

    value: Any
    observes: str
    observe: Observe
    default: Any
    changed: Any
    base: Mapping[str, Any] | Callable[[Ctx], Mapping[str, Any]] = field(default_factory=dict)


def _resolve(value: Any, ctx: Ctx) -> Any:
    return value(ctx) if callable(value) else value


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()


def _redis_keys(url: str) -> list[str]:
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        return sorted(str(key) for key in client.keys("*"))
    finally:
        client.close()


# --- pools and HTTP clients ---------------------------------------------------------------
def borrowed_at_once(ctx: Ctx, config: PerformanceConfig) -> int:
    pool: ConnectionPool[object] = ConnectionPool(object, ConnectionPoolConfig.from_config(config))
    held: list[object] = []
    with contextlib.suppress(PoolTimeout):
        for _ in range(3):
            held.append(pool.get_connection(timeout=0))
    for conn in held:
        pool.return_connection(conn)
    pool.close()
    return len(held)


def created_up_front(ctx: Ctx, config: PerformanceConfig) -> int:
    pool: ConnectionPool[object] = ConnectionPool(object, ConnectionPoolConfig.from_config(config))
    created = pool.get_stats().created
    pool.close()
    return created


def created_for_two_borrows_a_minute_apart(ctx: Ctx, config: PerformanceConfig) -> int:
    clock = FakeClock()
    pool: ConnectionPool[object] = ConnectionPool(
        object, ConnectionPoolConfig.from_config(config), clock=clock
    )
    pool.return_connection(pool.get_connection())
    clock.advance(60.0)
    pool.return_connection(pool.get_connection())
    created = pool.get_stats().created
    pool.close()
    return created


def second_borrower_and_http_timeouts(
    ctx: Ctx, config: PerformanceConfig
) -> tuple[str, list[tuple[Any, Any]]]:
    """(how a second borrower of a one-connection pool fares, the HTTP clients' timeouts).

    The borrower waits ``connection_timeout``: the 30 s default outlasts the second after
    which the first connection comes back; a short one gives up before.
    """
    pool: ConnectionPool[object] = ConnectionPool(
        object, ConnectionPoolConfig.from_config(config.replace(connection_pool_size=1))
    )
    first = pool.get_connection()
    outcome: list[str] = []

    def borrow() -> None:
        try:
            pool.return_connection(pool.get_connection())  # no timeout: the config's
            outcome.append("served")
        except PoolTimeout:
            outcome.append("PoolTimeout")

    borrower = threading.Thread(target=borrow)
    borrower.start()
    borrower.join(timeout=1.0)
    pool.return_connection(first)
    borrower.join()
    pool.close()

    registry = HttpClientRegistry()
    try:
        url = "http://127.0.0.1:9/v1"  # never contacted: only the clients are built
        clients = (
            registry.get_client(url, config=config),
            registry.get_async_client(url, config=config),
        )
        timeouts = [(c.timeout.connect, c.timeout.pool) for c in clients]
    finally:
        registry.close()
    return outcome[0], timeouts


def connections_for_three_requests(ctx: Ctx, config: PerformanceConfig) -> int:
    sim = ctx.simulator
    before = sim.stats()["connections_opened"]
    registry = HttpClientRegistry()
    try:
        for _ in range(3):
            client = registry.get_client(sim.base_url, config=config)
            client.get(sim.base_url + "/models").raise_for_status()
            client.close()  # a shared client ignores it; an unpooled one is the caller's
    finally:
        registry.close()
    opened: int = sim.stats()["connections_opened"] - before
    return opened


def async_pool_carrying_a_request(ctx: Ctx, config: PerformanceConfig) -> str:
    sim = ctx.simulator
    registry = HttpClientRegistry()
    client: Any = registry.get_async_client(sim.base_url, config=config)

    async def one() -> str:
        (await client.get(sim.base_url + "/models")).raise_for_status()
        (pool,) = client._transport._pools.resources()
        return type(pool).__name__

    try:
        return asyncio.run(one())
    finally:
        registry.close()


# --- cache --------------------------------------------------------------------------------
def value_after_set(ctx: Ctx, config: PerformanceConfig) -> Any:
    with CacheManager(config) as cache:
        cache.set("k", "v")
        return cache.get("k")


def values_after_three_sets(ctx: Ctx, config: PerformanceConfig) -> list[Any]:
    with CacheManager(config) as cache:
        for i in range(3):
            cache.set(f"k{i}", f"v{i}")
        return [cache.get(f"k{i}") for i in range(3)]


def value_two_minutes_later(ctx: Ctx, config: PerformanceConfig) -> Any:
    clock = FakeClock(start=1000.0)
    with CacheManager(config, clock=clock) as cache:
        cache.set("k", "v")
        clock.advance(120.0)
        return cache.get("k")


def store_searches_for_one_search_two_minutes_apart(ctx: Ctx, config: PerformanceConfig) -> int:
    from rag_perf_plugins.services.search import SearchCache

    clock = FakeClock(start=1000.0)
    searches = 0

    def run() -> list[str]:
        nonlocal searches
        searches += 1
        return ["doc"]

    with CacheManager(config, clock=clock) as cache:
        store = SearchCache(config, name="kb", cache=cache)
        fields = {"query": "q", "k": 1}
        same: Callable[[Any], Any] = lambda value: value  # noqa: E731
        store.search("similarity_search", fields, run, same, same)
        clock.advance(120.0)
        store.search("similarity_search", fields, run, same, same)
    return searches


def small_and_large_kept(ctx: Ctx, config: PerformanceConfig) -> tuple[bool, bool]:
    with CacheManager(config) as cache:
        cache.set("small", "s")
        cache.set("large", "x" * 10_000)
        return cache.get("small") is not None, cache.get("large") is not None


def found_by_a_second_manager(ctx: Ctx, config: PerformanceConfig) -> Any:
    with CacheManager(config) as first:
        first.set("k", "v")
    with CacheManager(config) as second:  # its memory tier starts empty
        return second.get("k")


def client_a_tier_builds(ctx: Ctx, config: PerformanceConfig) -> str:
    """The redis-py client class the Redis tier builds, or the error that refused it."""
    try:
        tier = RedisTier.from_config(config)
    except Exception as exc:
        return type(exc).__name__
    try:
        return type(tier._client).__name__
    finally:
        tier.close()


def providers_left_after_a_shared_miss(ctx: Ctx, config: PerformanceConfig) -> tuple[int, int]:
    """(processes that led, that waited) when a miss finds another process's lease taken.

    The other process is stood in for by a lease taken directly on the tier; it stores
    the answer 0.3 s later (the manager under test polls meanwhile, if it waits).
    """
    assert config.redis_url is not None
    _flush(config.redis_url)
    with CacheManager(config) as cache:
        tier = next(t for t in cache.tiers if isinstance(t, RedisTier))
        stored = cache._prefix("llm") + "q"
        lease = tier.try_lease(stored, 5.0)
        assert lease is not None

        def other_process() -> None:
            threading.Event().wait(0.3)
            with CacheManager(config.replace(cross_process_lease=0.0)) as other:
                other.set("q", "theirs", namespace="llm")
            lease.release()

        helper = threading.Thread(target=other_process)
        helper.start()
        value = cache.get_or_compute("q", lambda: "ours", namespace="llm")
        helper.join()
        flight = cache.get_stats()["single_flight"]
        assert value == ("theirs" if flight["cross_process_followed"] else "ours")
        return flight["cross_process_led"], flight["cross_process_followed"]


def sentinel_keys(**keys: Any) -> Callable[[Ctx], Mapping[str, Any]]:
    """The Sentinel fixture's URL in sentinel mode, with ``keys``."""

    def build(ctx: Ctx) -> Mapping[str, Any]:
        sentinel = ctx.request.getfixturevalue("redis_sentinel")
        return {"redis_url": sentinel.url, "redis_mode": "sentinel", "redis_timeout": 0.5,
                **{k: v(sentinel) if callable(v) else v for k, v in keys.items()}}  # fmt: skip

    return build


def disk_tier_directory(ctx: Ctx, config: PerformanceConfig) -> str:
    with CacheManager(config) as cache:
        cache.set("k", "v")
        directory = Path(cache.get_stats()["tiers"]["disk"]["directory"])
    assert (directory / "000").is_dir()  # really written there
    return directory.relative_to(ctx.tmp_path).as_posix()


def disk_entries_after_writing_three_mib(ctx: Ctx, config: PerformanceConfig) -> tuple[int, int]:
    """(entries on disk, entries evicted) after 48 values of 64 KiB (one shard)."""
    with CacheManager(config) as cache:
        for i in range(48):
            cache.set(f"k{i}", bytes([i]) * 64 * 1024)
        disk = cache.get_stats()["tiers"]["disk"]
    return disk["items"], disk["evictions"]


def shard_directories(ctx: Ctx, config: PerformanceConfig) -> list[str]:
    with CacheManager(config) as cache:
        directory = Path(cache.get_stats()["tiers"]["disk"]["directory"])
    return sorted(p.name for p in directory.iterdir() if p.is_dir())


def write_while_another_writer_holds_the_lock(
    ctx: Ctx, config: PerformanceConfig
) -> tuple[dict[str, int], int]:
    """(cache errors by kind, entries on disk) after a write that met a locked database."""
    with CacheManager(config) as cache:
        directory = Path(cache.get_stats()["tiers"]["disk"]["directory"])
        lock = sqlite3.connect(directory / "000" / "cache.db", isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")  # another writer: SQLite allows one at a time
        writer = threading.Thread(target=cache.set, args=("k", "v"))
        writer.start()
        # With the default (0.1 s) the write gives up long before this; with 30 s it is
        # still waiting when the lock is released below, and then succeeds.
        writer.join(timeout=1.0)
        lock.execute("COMMIT")
        lock.close()
        writer.join()
        stats = cache.get_stats()
    return stats["errors_by_kind"], stats["tiers"]["disk"]["items"]


def vector_returned(ctx: Ctx, config: PerformanceConfig) -> list[float]:
    with CacheManager(config) as cache:
        return cache.set_vectors({"k": [0.1]})["k"]


class _Codec:
    def encode(self, value: str) -> Any:
        return value

    def decode(self, data: Any) -> str:
        return str(data)

    def usage(self, value: str) -> Usage | None:
        return None


def provider_calls_for_one_sampled_call_twice(ctx: Ctx, config: PerformanceConfig) -> int:
    calls = 0

    def call() -> str:
        nonlocal calls
        calls += 1
        return "answer"

    request = LLMRequest(
        model="m", messages=[{"role": "user", "content": "hi"}], params={"temperature": 0.7}
    )
    with CacheManager(config) as cache:
        service = LLMService(config=config, cache=cache)
        for _ in range(2):
            assert service.generate(request, call, _Codec()) == "answer"
    return calls


def version_after_another_writer_bumps(ctx: Ctx, config: PerformanceConfig) -> int:
    """The namespace version a manager reads right after a writer it does not share with bumped.

    The writer's shared tiers differ from the reader's (the reader's directory plus one
    more), so the reader learns of the bump only from disk, as from another process.
    """
    assert config.cache_dir is not None
    with CacheManager(config) as reader:
        assert reader.namespace_version("retrieval") == 1
        tiers = [DiskTier(config.cache_dir, shards=config.cache_shards), DiskTier(ctx.dir())]
        with CacheManager(config, tiers=tiers) as writer:
            assert writer.bump_namespace("retrieval") == 2
        # Within the default's second the reader still uses the version it read.
        return reader.namespace_version("retrieval")


def redis_key_prefixes(ctx: Ctx, config: PerformanceConfig) -> list[str]:
    assert config.redis_url is not None
    _flush(config.redis_url)
    with CacheManager(config) as cache:
        cache.set("k", "v")
    return sorted({key.split(":")[0] for key in _redis_keys(config.redis_url)})


def why_a_read_from_a_silent_redis_ended(ctx: Ctx, config: PerformanceConfig) -> str:
    """What ended a Redis read from a server that accepts connections and never answers.

    ``redis_timeout`` (0.25 s by default) ends it; a 30 s timeout is still waiting when the
    server hangs up a second later, and the read ends with the connection reset.
    """
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel completes the handshake; nobody ever reads or answers
    silent = config.replace(redis_url=f"redis://127.0.0.1:{server.getsockname()[1]}/0")
    causes: list[str] = []
    with CacheManager(silent) as cache:
        (tier,) = (t for t in cache.tiers if isinstance(t, RedisTier))

        def read() -> None:
            try:
                tier.get_many(["k"])
            except RedisUnavailable as exc:
                causes.append(type(exc.__cause__).__name__)

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(timeout=1.0)
        server.close()  # resets the connection still in the listen queue
        reader.join()
    return causes[0]


def tiers_and_the_one_that_answers(
    ctx: Ctx, config: PerformanceConfig
) -> tuple[list[str], dict[str, int]]:
    assert config.redis_url is not None
    _flush(config.redis_url)
    with CacheManager(config) as first:
        first.set("k", "v")
    with CacheManager(config) as second:
        assert second.get("k") == "v"
        names = [t.name for t in second.tiers]
        hits: dict[str, int] = second.get_stats()["namespaces"]["default"]["hits"]
    return names, hits


# --- admission gate -----------------------------------------------------------------------
def _gate(ctx: Ctx, config: PerformanceConfig, clock: FakeClock, **options: Any) -> AdmissionGate:
    return AdmissionGate(
        config,
        key=ctx.unique("gate"),
        clock=clock,
        sleep=clock.sleep,
        jitter_allowance=0.0,  # the burst is exactly rate_burst_seconds
        **options,
    )


def waits_for(calls: int, *, tokens: int = 0) -> Observe:
    """The waits (fake seconds) of ``calls`` admissions in a row, on a private budget."""

    def observe(ctx: Ctx, config: PerformanceConfig) -> list[float]:
        clock = FakeClock()
        gate = _gate(ctx, config, clock, store=LocalBudgetStore())
        for _ in range(calls):
            with gate.acquire(tokens=tokens):
                pass
        return [round(s, 9) for s in clock.slept]

    return observe


def gates_of_chat_and_embeddings(ctx: Ctx, config: PerformanceConfig) -> int:
    """How many gates a chat model and an embedding model of one key get from the defaults."""
    chat = default_gate(config, provider="openai", model="gpt-4o-mini", api_key="sk-scope")
    embed = default_gate(
        config, provider="openai", model="text-embedding-3-small", api_key="sk-scope"
    )
    return len({id(chat), id(embed)})


def admitted_at_once(ctx: Ctx, config: PerformanceConfig) -> int:
    gate = _gate(ctx, config, FakeClock(), store=LocalBudgetStore())
    with contextlib.ExitStack() as held:
        for n in range(3):
            try:
                held.enter_context(gate.acquire(timeout=0))
            except DeadlineExceeded:
                return n
    return 3


def refusal_of_a_second_caller(ctx: Ctx, config: PerformanceConfig) -> dict[str, int]:
    gate = _gate(ctx, config, FakeClock(), store=LocalBudgetStore())
    with gate.acquire(), contextlib.suppress(Overloaded, DeadlineExceeded), gate.acquire(timeout=0):
        pass
    by_reason: dict[str, int] = gate.stats()["rejected_by_reason"]
    return by_reason


def admitted_and_refused_of_two(ctx: Ctx, config: PerformanceConfig) -> tuple[int, int]:
    gate = _gate(ctx, config, FakeClock(), store=LocalBudgetStore())
    for _ in range(2):
        with contextlib.suppress(Overloaded), gate.acquire():
            pass
    stats = gate.stats()
    return stats["admitted"], stats["rejected"]


def budget_keys_in_redis(ctx: Ctx, config: PerformanceConfig) -> list[str]:
    assert config.redis_url is not None
    _flush(config.redis_url)
    with AdmissionGate(config, key="every-key-shared").acquire():
        pass
    return _redis_keys(config.redis_url)


def admission_while_redis_is_down(ctx: Ctx, config: PerformanceConfig) -> str:
    gate = AdmissionGate(config, key=ctx.unique("down"))
    try:
        with gate.acquire():
            return "admitted"
    except Overloaded:
        return "Overloaded"


def seconds_waited_by_five_admissions_while_redis_is_down(
    ctx: Ctx, config: PerformanceConfig
) -> float:
    clock = FakeClock()
    gate = _gate(ctx, config, clock)  # the shared store of the config, falling back
    for _ in range(5):
        with gate.acquire():
            pass
    return round(sum(clock.slept), 3)


# --- retries ------------------------------------------------------------------------------
class _Longest(random.Random):
    """Jitter that always picks the longest back-off allowed."""

    def uniform(self, a: float, b: float) -> float:
        return b


class _Shortest(random.Random):
    """Jitter that never waits (the budget, not the back-off, is under test)."""

    def uniform(self, a: float, b: float) -> float:
        return a


def _failing(status: int, retry_after: float | None = None) -> tuple[Callable[[], Any], list[int]]:
    attempts: list[int] = []

    def fn() -> Any:
        attempts.append(1)
        raise ProviderError("provider error", status_code=status, retry_after=retry_after)

    return fn, attempts


def _policy(
    config: PerformanceConfig, clock: FakeClock, rng: random.Random, **options: Any
) -> RetryPolicy:
    return RetryPolicy(config, clock=clock, sleep=clock.sleep, rng=rng, **options)


def attempts_of_a_failing_call(ctx: Ctx, config: PerformanceConfig) -> int:
    fn, attempts = _failing(500)
    with pytest.raises(ProviderError):
        _policy(config, FakeClock(), _Shortest()).call(fn)
    return len(attempts)


def back_offs_of_a_failing_call(ctx: Ctx, config: PerformanceConfig) -> list[float]:
    clock = FakeClock()
    fn, _ = _failing(500)
    with pytest.raises(ProviderError):
        _policy(config, clock, _Longest()).call(fn)
    return clock.slept


def outcome_under_a_deadline(ctx: Ctx, config: PerformanceConfig) -> tuple[str, int]:
    fn, attempts = _failing(500)
    try:
        _policy(config, FakeClock(), _Longest()).call(fn)
    except (ProviderError, DeadlineExceeded) as exc:
        return type(exc).__name__, len(attempts)
    raise AssertionError("the call cannot succeed")


def attempts_and_pause_for_retry_after_90(ctx: Ctx, config: PerformanceConfig) -> tuple[int, float]:
    clock = FakeClock()
    fn, attempts = _failing(429, retry_after=90.0)
    with pytest.raises(ProviderError):
        _policy(config, clock, _Shortest()).call(fn)
    gate = _gate(ctx, config, clock, store=LocalBudgetStore())
    gate.pause(90.0)
    return len(attempts), gate.stats()["paused_for_s"]


def attempts_without_a_budget_floor(ctx: Ctx, config: PerformanceConfig) -> int:
    fn, attempts = _failing(500)
    with pytest.raises(ProviderError):
        _policy(config, FakeClock(), _Shortest(), budget_floor=0).call(fn)
    return len(attempts)


def attempts_thirty_seconds_after_five_calls(ctx: Ctx, config: PerformanceConfig) -> int:
    clock = FakeClock(start=1000.0)
    policy = _policy(config, clock, _Shortest(), budget_floor=0)
    for _ in range(5):
        policy.call(lambda: "ok")
    clock.advance(30.0)
    fn, attempts = _failing(500)
    with pytest.raises(ProviderError):
        policy.call(fn)
    return len(attempts)


# --- batching -----------------------------------------------------------------------------
def batch_sizes(items: int, *, tokens_each: int | None = None) -> Observe:
    """The sizes of the provider batches ``items`` texts submitted together are cut into."""

    def observe(ctx: Ctx, config: PerformanceConfig) -> list[int]:
        sizes: list[int] = []

        def send(texts: list[str]) -> list[str]:
            sizes.append(len(texts))
            return texts

        options: dict[str, Any] = {}
        if tokens_each is not None:
            options["token_counter"] = lambda _text: tokens_each
        texts = [f"text {i}" for i in range(items)]
        with BatchProcessor.from_config(config, send, **options) as batcher:
            assert batcher.submit_many(texts) == texts
        return sizes

    return observe


def how_a_lone_item_is_sent(ctx: Ctx, config: PerformanceConfig) -> dict[str, int]:
    batcher: BatchProcessor[str, str] = BatchProcessor.from_config(config, lambda texts: texts)
    submitter = threading.Thread(target=batcher.submit, args=("alone",))
    submitter.start()
    # The default sends it after 5 ms; an hour-long wait has not ended after half a second.
    submitter.join(timeout=0.5)
    batcher.close()  # sends what is still pending
    submitter.join()
    return dict(batcher.stats.flush_reasons)


# --- engines ------------------------------------------------------------------------------
def peak_concurrent_queries(ctx: Ctx, config: PerformanceConfig) -> int:
    active = peak = 0

    async def retrieve(query: str, top_k: int) -> list[str]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        active -= 1
        return [query]

    async def generate(query: str, passages: Sequence[Any]) -> str:
        return query

    async def run() -> None:
        engine = AsyncRAGEngine(
            config, retriever=retrieve, generator=generate, cache=False, gate=False, retry=False
        )
        await asyncio.gather(*(engine.query(f"q{i}") for i in range(8)))

    asyncio.run(run())
    return peak


def second_query_while_one_runs(**query_options: Any) -> Observe:
    """The answer (or refusal) of a query that arrives while another one holds the engine."""

    def observe(ctx: Ctx, config: PerformanceConfig) -> str:
        async def run() -> str:
            entered, release = asyncio.Event(), asyncio.Event()

            async def retrieve(query: str, top_k: int) -> list[str]:
                if query == "first":
                    entered.set()
                    await release.wait()
                return [f"p{i}" for i in range(top_k)]

            async def generate(query: str, passages: Sequence[Any]) -> str:
                return f"{query} from {len(passages)} passages"

            engine = AsyncRAGEngine(
                config, retriever=retrieve, generator=generate, cache=False, gate=False,
                retry=False,
            )  # fmt: skip
            first = asyncio.create_task(engine.query("first"))
            await entered.wait()
            try:
                outcome = str((await engine.query("second", **query_options)).answer)
            except Overloaded:
                outcome = "Overloaded"
            release.set()
            await first
            return outcome

        return asyncio.run(run())

    return observe


def answer_when_the_provider_fails_after_expiry(ctx: Ctx, config: PerformanceConfig) -> Any:
    clock = FakeClock(start=1000.0)
    failing = False

    def generate(query: str, passages: Sequence[Any]) -> str:
        if failing:
            raise ProviderError("provider down", status_code=503)
        return "fresh answer"

    with CacheManager(config, clock=clock) as cache:
        engine = RAGEngine(
            config, retriever=lambda q, k: ["p"], generator=generate, cache=cache, gate=False,
            retry=False,
        )  # fmt: skip
        assert engine.query("q").answer == "fresh answer"
        assert config.cache_ttl is not None
        clock.advance(config.cache_ttl + 1.0)
        failing = True
        try:
            result = engine.query("q")
        except ProviderError:
            return "ProviderError"
        return result.answer, result.stale


# --- statistics ---------------------------------------------------------------------------
def counters_recorded_by_a_cache(ctx: Ctx, config: PerformanceConfig) -> dict[str, int]:
    tracker = PerformanceTracker()
    previous = set_performance_tracker(tracker)
    try:
        with CacheManager(config) as cache:  # no tracker passed: the config decides
            cache.get("missing")
    finally:
        set_performance_tracker(previous)
    return tracker.counters()


def throughput_and_process_window(ctx: Ctx, config: PerformanceConfig) -> tuple[float, float]:
    """(calls/s 30 s after six calls, the process tracker's window) for the config's window."""
    clock = FakeClock(start=1000.0)
    tracker = PerformanceTracker.from_config(config, clock=clock)
    for _ in range(6):
        tracker.record("op", 0.01)
    clock.advance(30.0)
    throughput = tracker.get_operation_stats("op").throughput_per_s
    # The process-wide tracker is built from the loaded config (file and environment).
    ctx.monkeypatch.setenv("RAG_PERF_METRICS_WINDOW_SECONDS", repr(config.metrics_window_seconds))
    previous = set_performance_tracker(None)
    try:
        window = get_performance_tracker().window_s
    finally:
        set_performance_tracker(previous)
        ctx.monkeypatch.delenv("RAG_PERF_METRICS_WINDOW_SECONDS")
    return throughput, window


# --- circuit breakers and fallbacks -----------------------------------------------------
class _PlainCodec:
    """Answers are plain strings: stored as they are."""

    def encode(self, value: str) -> str:
        return value

    def decode(self, data: str) -> str:
        return data

    def usage(self, value: str) -> Usage | None:
        return None


def _breakers(config: PerformanceConfig, clock: FakeClock, rand: float = 0.0) -> Breakers:
    settings = BreakerSettings.from_config(config)
    return Breakers(settings, LocalBreakerStore(), clock=clock, rand=lambda: rand)


def provider_calls_of_ten_calls_to_a_dead_model(ctx: Ctx, config: PerformanceConfig) -> int:
    """Calls that reached a model answering 503 out of ten, no fallback."""
    service = LLMService(config=config, breakers=_breakers(config, FakeClock()))
    request = LLMRequest(model="m", provider="p", messages=[{"role": "user", "content": "q"}])
    sent = 0

    def call() -> str:
        nonlocal sent
        sent += 1
        raise ProviderError("down", status_code=503)

    for _ in range(10):
        with contextlib.suppress(ProviderError, ProviderUnavailable):
            service.generate(request, call, _PlainCodec())
    return sent


def state_after(outcomes: str, gap_s: float = 0.0) -> Observe:
    """The breaker's state after ``outcomes`` (``f`` failure, ``d`` down, ``s`` success)."""
    names: dict[str, Outcome] = {"f": "failure", "d": "down", "s": "success"}

    def observe(ctx: Ctx, config: PerformanceConfig) -> str:
        clock = FakeClock()
        breakers = _breakers(config, clock)
        for outcome in outcomes:
            breakers.record("t", names[outcome], probe=False)
            clock.advance(gap_s)
        return breakers.peek("t")[0]

    return observe


def cooldown_after_failed_probes(probes: int, rand: float = 0.0) -> Observe:
    """Seconds of the cool-down after a 503 and ``probes`` failed probes (jitter draw ``rand``)."""

    def observe(ctx: Ctx, config: PerformanceConfig) -> float:
        clock = FakeClock()
        breakers = _breakers(config, clock, rand)
        transition = breakers.record("t", "down", probe=False)
        for _ in range(probes):
            clock.advance(breakers.peek("t")[1])
            assert breakers.admit("t").probe
            transition = breakers.record("t", "failure", probe=True)
        assert transition is not None
        return round(transition.cooldown_s, 6)

    return observe


def who_answers_a_probe_that_takes_300_ms(ctx: Ctx, config: PerformanceConfig) -> str:
    """The primary's breaker is open (a 503), its cool-down ends; the probe call hangs 0.3 s."""
    clock = FakeClock()
    service = LLMService(config=config, breakers=_breakers(config, clock))
    question = [{"role": "user", "content": "q"}]
    primary = LLMRequest(model="primary", provider="p", messages=question)
    fallback = Fallback(
        Target("fallback"),
        LLMRequest(model="fallback", provider="p", messages=question),
        lambda: "fallback",
    )
    calls = [0]

    def call() -> str:
        calls[0] += 1
        if calls[0] == 1:
            raise ProviderError("down", status_code=503)
        time.sleep(0.3)  # real seconds: the probe's bound is real time
        return "primary"

    assert service.generate(primary, call, _PlainCodec(), fallbacks=[fallback]) == "fallback"
    clock.advance(config.breaker_cooldown * (1 + config.breaker_cooldown_jitter))
    answer: str = service.generate(primary, call, _PlainCodec(), fallbacks=[fallback])
    return answer


def admitted_two_seconds_after_opening(ctx: Ctx, config: PerformanceConfig) -> bool:
    clock = FakeClock()
    breakers = _breakers(config, clock)
    for _ in range(config.breaker_min_calls):
        breakers.record("t", "failure", probe=False)
    clock.advance(2.0)
    return breakers.admit("t").allowed


def probes_let_through_after_the_cooldown(ctx: Ctx, config: PerformanceConfig) -> int:
    clock = FakeClock()
    breakers = _breakers(config, clock)
    for _ in range(config.breaker_min_calls):
        breakers.record("t", "failure", probe=False)
    clock.advance(config.breaker_cooldown)
    return sum(breakers.admit("t").allowed for _ in range(5))


def who_answers_the_primary_after_a_fallback_did(ctx: Ctx, config: PerformanceConfig) -> str:
    """The primary is down for one call (the fallback answers), then back: who answers it."""
    service = LLMService(config=config, breakers=_breakers(config, FakeClock()))
    question = [{"role": "user", "content": "q"}]
    primary = LLMRequest(model="primary", provider="p", messages=question)
    fallback = Fallback(
        Target("fallback"),
        LLMRequest(model="fallback", provider="p", messages=question),
        lambda: "fallback",
    )
    down = [True]

    def call() -> str:
        if down.pop() if down else False:
            raise ProviderError("failed", status_code=500)  # a failure, not "down": stays closed
        return "primary"

    first = service.generate(primary, call, _PlainCodec(), fallbacks=[fallback])
    assert first == "fallback"
    answer: str = service.generate(primary, call, _PlainCodec(), fallbacks=[fallback])
    return answer


# --- semantic cache ---------------------------------------------------------------------
ASKED = "How do I reset my account password?"
PARAPHRASE = "how do I reset my account password, please?"  # cosine 0.87 (simulator, 384-d)


def _semantic_service(config: PerformanceConfig) -> LLMService:
    """An LLMService with a SemanticCache over the simulator's embeddings, in-process."""
    embed = simulator_embed()
    embeddings = EmbeddingService(
        embed_many=lambda texts: embed(texts).tolist(),
        provider="sim",
        model="sim-384",
        config=config,
        store=None,
        symmetric=True,
    )
    return LLMService(config=config, semantic=SemanticCache(embeddings, config=config))


def _ask(service: LLMService, text: str, **params: Any) -> str:
    request = LLMRequest(
        model="m",
        messages=[{"role": "user", "content": text}],
        params={"temperature": 0.0, **params},
    )
    answer: str = service.generate(request, lambda: f"answer to {text}", _PlainCodec())
    return answer


def whose_answer_a_paraphrase_gets(ctx: Ctx, config: PerformanceConfig) -> str:
    """A question, then a paraphrase (a SemanticCache is there either way): whose answer."""
    service = _semantic_service(config)
    _ask(service, ASKED)
    return "first" if _ask(service, PARAPHRASE) == f"answer to {ASKED}" else "own"


def whose_answer_a_sampled_paraphrase_gets(ctx: Ctx, config: PerformanceConfig) -> str:
    """The same at temperature 0.7 without a seed."""
    service = _semantic_service(config)
    _ask(service, ASKED, temperature=0.7)
    answer = _ask(service, PARAPHRASE, temperature=0.7)
    return "first" if answer == f"answer to {ASKED}" else "own"


def whose_answer_a_negation_gets(ctx: Ctx, config: PerformanceConfig) -> str:
    """A question, then its negation (cosine 0.9985 here): whose answer."""
    service = _semantic_service(config)
    _ask(service, ASKED)
    answer = _ask(service, "How do I not reset my account password?")
    return "first" if answer == f"answer to {ASKED}" else "own"


def whose_answer_a_paraphrase_gets_after_another_question(
    ctx: Ctx, config: PerformanceConfig
) -> str:
    """A question, another question, then the first one's paraphrase: whose answer."""
    service = _semantic_service(config)
    _ask(service, ASKED)
    _ask(service, "What are the opening hours of the support team?")
    return "first" if _ask(service, PARAPHRASE) == f"answer to {ASKED}" else "own"


# --- cost -------------------------------------------------------------------------------
def price_file(ctx: Ctx) -> str:
    """A price file with gpt-4o-mini at $2 per million input and output tokens."""
    path = ctx.tmp_path / f"prices-{next(ctx._names)}.json"
    entry = {"input": 2.0, "output": 2.0, "as_of": "2026-12-01", "source": "test"}
    path.write_text(json.dumps({"models": {"gpt-4o-mini": entry}}))
    return str(path)


def million_input_tokens_cost(ctx: Ctx, config: PerformanceConfig) -> float | None:
    return price_table(config).chat_cost("gpt-4o-mini", 1_000_000, 0)


DAY_START = 20_834 * 86_400.0  # a UTC midnight: every minute, hour and day window starts here


def admitted_of_five(spacing_s: float) -> Observe:
    """How many of five $0.30 calls, ``spacing_s`` apart, a gate admits."""

    def observe(ctx: Ctx, config: PerformanceConfig) -> int:
        wall = [DAY_START]
        gate = AdmissionGate(
            config,
            key=ctx.unique("usd"),
            tracker=NULL_TRACKER,
            spend_store=LocalSpendStore(),
            wall_clock=lambda: wall[0],
        )
        admitted = 0
        for _ in range(5):
            try:
                with gate.acquire(cost_usd=0.3):
                    admitted += 1
            except BudgetExceeded:
                pass
            wall[0] += spacing_s
        return admitted

    return observe


def two_tenants_admitted(ctx: Ctx, config: PerformanceConfig) -> tuple[bool, bool]:
    """Whether tenant a's and then tenant b's $0.60 call are admitted under $1/minute."""
    gate = AdmissionGate(
        config, key=ctx.unique("usd"), tracker=NULL_TRACKER, spend_store=LocalSpendStore()
    )
    out = []
    for tenant in ("a", "b"):
        try:
            with gate.acquire(cost_usd=0.6, tenant=tenant):
                out.append(True)
        except BudgetExceeded:
            out.append(False)
    return out[0], out[1]


# --- the table ----------------------------------------------------------------------------
MEMORY_ONLY = {"cache_disk_enabled": False}


def with_redis(**keys: Any) -> Callable[[Ctx], Mapping[str, Any]]:
    return lambda ctx: {"redis_url": ctx.redis_url, **keys}


DOWN = {"shared_rate_limit": True, "redis_url": DEAD_REDIS, "requests_per_minute": 600}

# One row per key: (value, what is observed, how, observed with the default, with value,
# other keys of both runs). Kept one row to a few lines, so the formatter stays out.
# fmt: off
EFFECTS: dict[str, Effect] = {
    # --- seed keys ---
    "connection_pool_size": Effect(
        2, "connections a pool lends at once", borrowed_at_once, 3, 2
    ),
    "connection_timeout": Effect(
        0.05, "(a 2nd borrower of a 1-connection pool, the HTTP clients' connect/pool timeouts)",
        second_borrower_and_http_timeouts,
        ("served", [(30.0, 30.0)] * 2), ("PoolTimeout", [(0.05, 0.05)] * 2),
    ),
    "enable_connection_pooling": Effect(
        False, "TCP connections the simulator accepts for three requests",
        connections_for_three_requests, 1, 3,
    ),
    "enable_caching": Effect(
        False, "the value read back after a set", value_after_set, "v", None, MEMORY_ONLY
    ),
    "cache_size": Effect(
        2, "values of three keys in the memory tier", values_after_three_sets,
        ["v0", "v1", "v2"], [None, "v1", "v2"], MEMORY_ONLY,
    ),
    "cache_ttl": Effect(
        60.0, "an entry two minutes after it was set", value_two_minutes_later, "v", None,
        MEMORY_ONLY,
    ),
    "async_enabled": Effect(
        False, "most of 8 gathered queries inside the async engine at once",
        peak_concurrent_queries, 8, 1,
    ),
    "max_concurrent_requests": Effect(
        2, "callers the gate admits at once", admitted_at_once, 3, 2
    ),
    "batch_size": Effect(
        10, "provider batches of 50 texts", batch_sizes(50), [20, 20, 10], [10] * 5
    ),
    "enable_metrics": Effect(
        False, "counters a cache miss leaves in the process tracker",
        counters_recorded_by_a_cache, {"cache.misses": 1}, {}, MEMORY_ONLY,
    ),
    # --- pooled clients ---
    "min_connections": Effect(2, "connections a new pool opens", created_up_front, 0, 2),
    "keepalive_expiry": Effect(
        1e-6, "TCP connections the simulator accepts for three requests",
        connections_for_three_requests, 1, 3,
    ),
    "http_transport": Effect(
        "aiohttp", "the class of the event loop's pool that carried a request",
        async_pool_carrying_a_request, "AsyncHTTPTransport", "AiohttpPool",
    ),
    "idle_timeout": Effect(
        10.0, "connections made for two borrows a minute apart",
        created_for_two_borrows_a_minute_apart, 1, 2,
    ),
    "max_lifetime": Effect(
        10.0, "connections made for two borrows a minute apart",
        created_for_two_borrows_a_minute_apart, 1, 2,
    ),
    # --- cache ---
    "cache_dir": Effect(
        lambda ctx: str(ctx.tmp_path / "mine"), "where the disk tier writes (under tmp_path)",
        disk_tier_directory, "xdg/rag-perf-plugins", "mine",
    ),
    "cache_disk_enabled": Effect(
        False, "a value set by one manager, read by a new one", found_by_a_second_manager,
        "v", None,
    ),
    "cache_max_bytes": Effect(
        1024 * 1024, "(entries on disk, entries evicted) after writing 48 x 64 KiB",
        disk_entries_after_writing_three_mib, (48, 0), (15, 33),
    ),
    "cache_memory_max_bytes": Effect(
        4096, "(a 1-byte value kept, a 10 kB value kept)", small_and_large_kept,
        (True, True), (True, False), MEMORY_ONLY,
    ),
    "cache_shards": Effect(
        2, "shard directories of the disk tier", shard_directories,
        [f"{i:03d}" for i in range(8)], ["000", "001"],
    ),
    "cache_disk_timeout": Effect(
        30.0, "(errors, entries on disk) after a write meets another writer's lock",
        write_while_another_writer_holds_the_lock, ({"timeout": 1}, 0), ({}, 1),
    ),
    "cache_vector_dtype": Effect(
        "float64", "the vector set_vectors returns for [0.1]", vector_returned,
        [0.10000000149011612], [0.1], MEMORY_ONLY,
    ),
    "cache_skip_sampled": Effect(
        True, "provider calls for one temperature-0.7 request made twice",
        provider_calls_for_one_sampled_call_twice, 1, 2, MEMORY_ONLY,
    ),
    "retrieval_ttl": Effect(
        300.0, "store searches for one search made twice, two minutes apart",
        store_searches_for_one_search_two_minutes_apart, 2, 1, MEMORY_ONLY,
    ),
    "version_check_interval": Effect(
        0.0, "the namespace version read just after another writer bumped it",
        version_after_another_writer_bumps, 1, 2,
    ),
    "cache_namespace_prefix": Effect(
        "tenant-b", "prefixes of the Redis keys a set writes", redis_key_prefixes,
        ["rag-perf"], ["tenant-b"], with_redis(redis_position="instead-of-disk"),
    ),
    # --- Redis ---
    "redis_url": Effect(
        lambda ctx: ctx.redis_url, "a value set by one manager, read by a new one",
        found_by_a_second_manager, None, "v", MEMORY_ONLY,
    ),
    "redis_mode": Effect(
        "cluster", "the client a Redis tier builds for a standalone server",
        client_a_tier_builds, "Redis", "RedisClusterException",
        lambda ctx: {"redis_url": ctx.redis_url.rsplit("/", 1)[0]},  # a cluster has no db
    ),
    "redis_sentinels": Effect(
        lambda ctx: ctx.request.getfixturevalue("redis_sentinel").sentinels,
        "a value set by one manager, read by a new one (the URL's host is a data node)",
        found_by_a_second_manager, None, "v",
        sentinel_keys(redis_master_name=MASTER_NAME, **MEMORY_ONLY),
    ),
    "redis_master_name": Effect(
        MASTER_NAME, "a value set by one manager, read by a new one (sentinels of that name)",
        found_by_a_second_manager, None, "v",
        sentinel_keys(redis_sentinels=lambda s: s.sentinels, **MEMORY_ONLY),
    ),
    "cross_process_lease": Effect(
        5.0, "(led, waited) of a miss whose lease another process holds",
        providers_left_after_a_shared_miss, (0, 0), (0, 1),
        with_redis(**MEMORY_ONLY),
    ),
    "redis_timeout": Effect(
        30.0, "what ends a read from a Redis that never answers (hung up after 1 s)",
        why_a_read_from_a_silent_redis_ended, "TimeoutError", "ConnectionError",
        MEMORY_ONLY,
    ),
    "redis_position": Effect(
        "before-disk", "(tier order, the tier that answers a new manager)",
        tiers_and_the_one_that_answers,
        (["memory", "disk", "redis"], {"disk": 1}), (["memory", "redis", "disk"], {"redis": 1}),
        with_redis(),
    ),
    "shared_rate_limit": Effect(
        True, "Redis keys after one admission", budget_keys_in_redis,
        [], ["rag-perf:rl:{every-key-shared}"], with_redis(requests_per_minute=600),
    ),
    "limiter_fallback": Effect(
        "fail-closed", "one admission while Redis is down", admission_while_redis_is_down,
        "admitted", "Overloaded", DOWN,
    ),
    "worker_count": Effect(
        10, "seconds five admissions at 600/min wait while Redis is down (the local share "
        "starts empty: one interval each)",
        seconds_waited_by_five_admissions_while_redis_is_down, 0.5, 5.0, DOWN,
    ),
    # --- admission gate ---
    "requests_per_minute": Effect(
        60, "waits (s) of three admissions", waits_for(3), [], [1.0, 1.0]
    ),
    "tokens_per_minute": Effect(
        600, "waits (s) of three 10-token admissions", waits_for(3, tokens=10), [], [1.0, 1.0]
    ),
    "rate_limit_scope": Effect(
        "every-key-scope", "gates a chat and an embedding model get", gates_of_chat_and_embeddings,
        2, 1,
    ),
    "rate_burst_seconds": Effect(
        5.0, "waits (s) of five admissions at 60/min", waits_for(5), [1.0] * 4, [],
        {"requests_per_minute": 60},
    ),
    "max_queue": Effect(
        0, "refusals of a caller who finds the one slot taken", refusal_of_a_second_caller,
        {"queue_full": 0, "wait_too_long": 0, "deadline": 1},
        {"queue_full": 1, "wait_too_long": 0, "deadline": 0},
        {"max_concurrent_requests": 1},
    ),
    "max_queue_wait": Effect(
        0.5, "(admitted, refused) of two callers at 60/min", admitted_and_refused_of_two,
        (2, 0), (1, 1), {"requests_per_minute": 60},
    ),
    # --- retries ---
    "retry_max_attempts": Effect(
        2, "attempts of a call that always fails with 500", attempts_of_a_failing_call, 4, 2
    ),
    "retry_initial_backoff": Effect(
        0.1, "back-offs (s, longest jitter) of a failing call", back_offs_of_a_failing_call,
        [0.5], [0.1], {"retry_max_attempts": 2},
    ),
    "retry_max_backoff": Effect(
        0.75, "back-offs (s, longest jitter) of a failing call", back_offs_of_a_failing_call,
        [0.5, 1.0, 2.0], [0.5, 0.75, 0.75],
    ),
    "retry_after_cap": Effect(
        120.0, "(attempts of a call answered 429 Retry-After: 90, a gate's pause for 90 s)",
        attempts_and_pause_for_retry_after_90, (1, 60.0), (4, 90.0),
    ),
    "retry_budget_ratio": Effect(
        2.0, "attempts of a failing call with no budget floor",
        attempts_without_a_budget_floor, 1, 3,
    ),
    "retry_budget_window": Effect(
        10.0, "attempts of a failing call 30 s after five calls (ratio 1, no floor)",
        attempts_thirty_seconds_after_five_calls, 7, 2,
        {"retry_budget_ratio": 1.0, "retry_max_attempts": 20},
    ),
    "request_deadline": Effect(
        1.0, "(error, attempts) of a failing call (longest jitter)", outcome_under_a_deadline,
        ("ProviderError", 4), ("DeadlineExceeded", 2),
    ),
    # --- circuit breakers and fallbacks ---
    "breaker_enabled": Effect(
        True, "calls of ten that reach a model answering 503 (no fallback)",
        provider_calls_of_ten_calls_to_a_dead_model, 10, 1,
        {"breaker_min_calls": 2, "retry_max_attempts": 1, "request_deadline": 1.0},
    ),
    "breaker_failure_ratio": Effect(
        0.9, "the breaker's state after success, failure, success, failure",
        state_after("sfsf"), "open", "closed", {"breaker_min_calls": 4},
    ),
    "breaker_min_calls": Effect(
        3, "the breaker's state after three failures", state_after("fff"), "closed", "open"
    ),
    "breaker_window": Effect(
        1.0, "the breaker's state after four failures 0.5 s apart", state_after("ffff", 0.5),
        "open", "closed", {"breaker_min_calls": 4},
    ),
    "breaker_cooldown": Effect(
        1.0, "whether a call is let through 2 s after the breaker opened",
        admitted_two_seconds_after_opening, False, True, {"breaker_min_calls": 2},
    ),
    "breaker_probes": Effect(
        2, "calls let through (of five) when the cool-down ends",
        probes_let_through_after_the_cooldown, 1, 2, {"breaker_min_calls": 2},
    ),
    "breaker_consecutive_failures": Effect(
        3, "the breaker's state after four failures in a row (min_calls 20)",
        state_after("ffff"), "closed", "open", {"breaker_min_calls": 20},
    ),
    "breaker_down_failures": Effect(
        2, "the breaker's state after one 503", state_after("d"), "open", "closed",
    ),
    "breaker_cooldown_growth": Effect(
        1.0, "the cool-down after one failed probe (seconds)", cooldown_after_failed_probes(1),
        10.0, 5.0,
    ),
    "breaker_cooldown_max": Effect(
        12.0, "the cool-down after two failed probes (seconds)", cooldown_after_failed_probes(2),
        20.0, 12.0,
    ),
    "breaker_cooldown_jitter": Effect(
        0.5, "the first cool-down with the largest jitter draw (seconds)",
        cooldown_after_failed_probes(0, rand=1.0), 5.5, 7.5,
    ),
    "breaker_probe_timeout": Effect(
        0.05, "who answers a probe call to a primary that takes 0.3 s",
        who_answers_a_probe_that_takes_300_ms, "primary", "fallback",
    ),
    "cache_fallback_answers": Effect(
        True, "who answers the primary's request after a fallback answered it",
        who_answers_the_primary_after_a_fallback_did, "primary", "fallback", MEMORY_ONLY,
    ),
    # --- semantic cache ---
    "semantic_cache": Effect(
        True, "whose answer a paraphrase gets", whose_answer_a_paraphrase_gets, "own", "first",
        {"semantic_threshold": 0.8},
    ),
    "semantic_threshold": Effect(
        0.85, "whose answer a paraphrase at cosine 0.87 gets", whose_answer_a_paraphrase_gets,
        "own", "first", {"semantic_cache": True},
    ),
    "semantic_guards": Effect(
        False, "whose answer a negated question gets", whose_answer_a_negation_gets,
        "own", "first", {"semantic_cache": True, "semantic_threshold": 0.8},
    ),
    "semantic_serve_sampled": Effect(
        True, "whose answer a sampled paraphrase gets", whose_answer_a_sampled_paraphrase_gets,
        "own", "first", {"semantic_cache": True, "semantic_threshold": 0.8},
    ),
    "semantic_max_entries": Effect(
        1, "whose answer a paraphrase gets after another question",
        whose_answer_a_paraphrase_gets_after_another_question, "first", "own",
        {"semantic_cache": True, "semantic_threshold": 0.8},
    ),
    # --- batching ---
    "max_wait_time": Effect(
        3600.0, "what sends a lone item's batch", how_a_lone_item_is_sent,
        {"time": 1}, {"close": 1},
    ),
    "batch_max_tokens": Effect(
        250, "provider batches of ten 100-token texts", batch_sizes(10, tokens_each=100),
        [10], [2] * 5,
    ),
    "provider_profile": Effect(
        "cohere", "provider batches of 200 texts (batch_size 200)", batch_sizes(200),
        [200], [96, 96, 8], {"batch_size": 200},
    ),
    # --- degradation ---
    "degrade_serve_stale": Effect(
        True, "the answer when the provider fails after the cached one expired",
        answer_when_the_provider_fails_after_expiry, "ProviderError", ("fresh answer", True),
        MEMORY_ONLY,
    ),
    "degrade_top_k_factor": Effect(
        0.5, "a query's answer while another holds the one slot",
        second_query_while_one_runs(), "second from 4 passages", "second from 2 passages",
        {"max_concurrent_requests": 1},
    ),
    "degrade_shed_below_priority": Effect(
        1, "a priority-0 query's answer while another holds the one slot",
        second_query_while_one_runs(priority=0), "second from 4 passages", "Overloaded",
        {"max_concurrent_requests": 1},
    ),
    # --- cost ---
    "price_table_path": Effect(
        price_file, "USD of a million gpt-4o-mini input tokens", million_input_tokens_cost,
        0.15, 2.0,
    ),
    "budget_usd_per_minute": Effect(
        1.0, "$0.30 calls admitted of five at once", admitted_of_five(0.0), 5, 3,
    ),
    "budget_usd_per_hour": Effect(
        1.0, "$0.30 calls admitted of five ten minutes apart", admitted_of_five(600.0), 5, 3,
    ),
    "budget_usd_per_day": Effect(
        1.0, "$0.30 calls admitted of five three hours apart", admitted_of_five(10_800.0),
        5, 3,
    ),
    "budget_scopes": Effect(
        "tenant", "tenant a's then tenant b's $0.60 call admitted, under $1/minute",
        two_tenants_admitted, (True, False), (True, True), {"budget_usd_per_minute": 1.0},
    ),
    # --- statistics ---
    "metrics_window_seconds": Effect(
        10.0, "(calls/s 30 s after six calls, the process-wide tracker's window)",
        throughput_and_process_window, (0.2, 60.0), (0.0, 10.0), {"enable_metrics": True},
    ),
}
# fmt: on

FIELDS = {f.name: f for f in PerformanceConfig.fields()}
SEED_KEYS = (
    "connection_pool_size",
    "connection_timeout",
    "enable_connection_pooling",
    "enable_caching",
    "cache_size",
    "cache_ttl",
    "async_enabled",
    "max_concurrent_requests",
    "batch_size",
    "enable_metrics",
)


# --- the tests ----------------------------------------------------------------------------
def test_every_key_has_a_row() -> None:
    missing = sorted(set(FIELDS) - set(EFFECTS))
    assert not missing, (
        f"config keys without an effect test: {missing}. Add a row to EFFECTS that sets the "
        "key and observes a changed result, or remove a key that changes nothing."
    )
    assert not set(EFFECTS) - set(FIELDS), "rows for keys that no longer exist"
    assert set(SEED_KEYS) <= set(FIELDS), "the seed's keys stay (give them an effect)"
    same = [key for key, effect in EFFECTS.items() if effect.default == effect.changed]
    assert not same, f"rows that expect no change: {same}"


@pytest.fixture
def ctx(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Ctx:
    # cache_dir's default is the user's cache directory: keep it inside tmp_path too.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir().is_relative_to(tmp_path)
    return Ctx(tmp_path, request, monkeypatch)


@pytest.mark.parametrize("key", sorted(EFFECTS))
def test_the_key_has_an_effect(key: str, ctx: Ctx) -> None:
    effect = EFFECTS[key]
    value = _resolve(effect.value, ctx)
    assert value != FIELDS[key].default, "the row must set a non-default value"
    # Every run gets its own cache directory; one shard and no metrics keep the file fast.
    base: dict[str, Any] = {
        "cache_dir": ctx.dir("cache"),
        "cache_shards": 1,
        "enable_metrics": False,
    }
    base.update(_resolve(effect.base, ctx))
    base.pop(key, None)  # the first run has the key at its default

    default_config = PerformanceConfig(**base)
    assert getattr(default_config, key) == FIELDS[key].default
    changed_config = PerformanceConfig(**{**base, "cache_dir": ctx.dir("cache")} | {key: value})

    observed_default = effect.observe(ctx, default_config)
    observed_changed = effect.observe(ctx, changed_config)
    assert (observed_default, observed_changed) == (effect.default, effect.changed), (
        f"{key}: {effect.observes}"
    )
