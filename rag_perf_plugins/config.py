"""PerformanceConfig: every tunable of rag_perf_plugins in one immutable object.

Build it from keyword arguments, a YAML file, ``RAG_PERF_*`` environment variables or a
preset; :meth:`PerformanceConfig.load` combines them, keyword arguments over environment
over file over preset over defaults::

    config = PerformanceConfig.load("config/performance.yaml", max_concurrent_requests=32)
    fast = PerformanceConfig.from_preset("low-latency")
    bigger = fast.replace(cache_size=50_000)          # a new object; the old one is unchanged
    print(config.source_of("cache_ttl"))              # "env RAG_PERF_CACHE_TTL", "default", ...

The seed's YAML keys (``connection_pool_size``, ``connection_timeout``,
``enable_connection_pooling``, ``enable_caching``, ``cache_size``, ``cache_ttl``,
``async_enabled``, ``max_concurrent_requests``, ``batch_size``, ``enable_metrics``) keep the
seed's meaning and defaults. Every other key is documented on its field below, with its
unit. Bad input raises one :class:`~rag_perf_plugins.errors.ConfigError` (a ``ValueError``)
naming the key, the value and what is allowed; unknown keys get a close-match suggestion.

Not done here: reloading a config while running. Components read the config when they are
built; build new ones to apply a new config.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import yaml

from ._secrets import redact_text, redact_url
from .errors import ConfigError

__all__ = ["PRESETS", "ConfigField", "PerformanceConfig", "config_file", "resolve_config"]

ENV_PREFIX = "RAG_PERF_"
# Environment variables with our prefix that are not config keys: they steer tests,
# examples and CI, and from_env() must not reject them as typos.
NON_CONFIG_ENV = frozenset(
    {
        "RAG_PERF_CONFIG",
        "RAG_PERF_REQUIRE_REDIS",
        "RAG_PERF_TEST_REDIS_DB",
        "RAG_PERF_BASE_URL",
        "RAG_PERF_BENCH_QUICK",
    }
)
# The config file read when none is named: RAG_PERF_CONFIG, else this file if present.
CONFIG_ENV = "RAG_PERF_CONFIG"
DEFAULT_CONFIG_FILE = "rag-perf.yaml"

MiB = 1024 * 1024
GiB = 1024 * MiB


def _opt(
    default: Any,
    doc: str,
    *,
    unit: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    secret: bool = False,
    validator: Callable[[Any], str | None] | None = None,
    allowed: str | None = None,
) -> Any:
    """Declare one config key: its default, its meaning, its unit and its numeric bounds.

    ``secret``: the value may hold a credential (a password in a URL), masked wherever it
    is shown. ``validator``: returns why a value of the right type is still wrong, or
    ``None``; ``allowed`` then says in words what is allowed.
    """
    metadata = {
        "doc": doc,
        "unit": unit,
        "ge": ge,
        "gt": gt,
        "le": le,
        "secret": secret,
        "validator": validator,
        "allowed": allowed,
    }
    return field(default=default, metadata=metadata)


_SCOPE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def _scope_problem(name: str) -> str | None:
    """Why ``name`` cannot name a shared rate budget, or ``None``."""
    return None if _SCOPE_NAME.fullmatch(name) else "not a scope name"


def _redis_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a Redis URL, or ``None``; never quotes any part of it.

    The same schemes as redis-py's ``from_url``. A ``/``, ``?`` or ``#`` in a password
    must be percent-encoded: written raw, it ends the host part early, and redis-py would
    connect to the wrong server with a cut password.
    """
    if url == "":
        return None  # the same as null: no Redis
    scheme, sep, _rest = url.partition("://")
    if not sep or scheme.lower() not in ("redis", "rediss", "unix"):
        return "not a redis://, rediss:// or unix:// URL"
    try:
        parts = urlsplit(url)
        if scheme.lower() != "unix" and "@" in parts.path + parts.fragment:
            return "the part before '@' holds a raw '/' or '#': percent-encode it (%2F, %23)"
        _ = parts.port  # raises for a port that is not a number in 0-65535
    except ValueError:
        return "malformed host or port"
    return None


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """``"h1:26379,h2:26379"`` as ``(("h1", 26379), ("h2", 26379))``; ``ValueError`` if malformed.

    Example: ``parse_sentinels("127.0.0.1:26379, 10.0.0.2:26379")``. Spaces around an entry
    are ignored; an IPv6 host is written in brackets (``[::1]:26379``).
    """
    found: list[tuple[str, int]] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        host, sep, port = entry.rpartition(":")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            msg = f"{entry!r} is not host:port (a port in 1-65535)"
            raise ValueError(msg)
        found.append((host, int(port)))
    if not found:
        msg = "no host:port entry"
        raise ValueError(msg)
    return tuple(found)


def _sentinels_problem(text: str) -> str | None:
    if text == "":
        return None  # no sentinels (standalone or cluster)
    try:
        parse_sentinels(text)
    except ValueError as exc:
        return str(exc)
    return None


BUDGET_SCOPES = ("tenant", "key", "model")


def _budget_scopes_problem(value: str) -> str | None:
    """Why ``value`` is not a comma-separated list of budget scopes, or ``None``."""
    names = [part.strip() for part in value.split(",")]
    bad = [name for name in names if name not in BUDGET_SCOPES]
    if not value.strip() or bad:
        return f"{', '.join(repr(b) for b in bad) or 'empty'} is not a budget scope"
    return None


ProviderProfile = Literal["openai", "cohere", "voyage", "custom"]
VectorDtype = Literal["float32", "float64"]
RedisPosition = Literal["before-disk", "after-disk", "instead-of-disk"]
LimiterFallback = Literal["local-share", "fail-closed"]
RedisMode = Literal["standalone", "cluster", "sentinel"]
HttpTransport = Literal["httpx", "aiohttp"]


@dataclass(frozen=True)
class PerformanceConfig:
    """All settings of rag_perf_plugins; immutable, validated on construction.

    Example::

        config = PerformanceConfig(cache_ttl=600.0, requests_per_minute=3_000)
        config.cache_ttl                      # 600.0 (seconds)
        config.replace(cache_ttl=None)        # entries never expire

    Raises:
        ConfigError: a value has the wrong type or is out of range.
    """

    # --- seed keys --------------------------------------------------------------------
    connection_pool_size: int = _opt(
        20,
        "Maximum connections per pool (per HTTP client and event loop).",
        unit="connections",
        ge=1,
    )
    connection_timeout: float = _opt(
        30.0, "How long to wait for a free connection, and to connect.", unit="seconds", gt=0
    )
    enable_connection_pooling: bool = _opt(
        True, "Share pooled clients; when false every call opens its own connection."
    )
    enable_caching: bool = _opt(True, "Cache LLM answers, embeddings, retrieval and query results.")
    cache_size: int = _opt(
        10_000,
        "Maximum items in the in-memory tier (0 turns the memory tier off).",
        unit="items",
        ge=0,
    )
    cache_ttl: float | None = _opt(
        3600.0,
        "Default time-to-live of a cache entry; null means entries never expire.",
        unit="seconds",
        gt=0,
    )
    async_enabled: bool = _opt(
        True,
        "Run async work concurrently. False: the engine and process_queries_concurrently run "
        "one query at a time, and the async methods of the services and wrappers run their "
        "blocking path (blocking provider call and cache I/O) in a worker thread.",
    )
    max_concurrent_requests: int = _opt(
        50,
        "Provider calls in flight at once, per (provider, model, API key).",
        unit="requests",
        ge=1,
    )
    batch_size: int = _opt(
        20,
        "Most items in one provider batch (embedding texts per request).",
        unit="items",
        ge=1,
        le=2048,
    )
    enable_metrics: bool = _opt(
        True,
        "Record per-operation statistics in the tracker (false: components built with this "
        "config record nothing; the process-wide tracker follows the loaded config).",
    )

    # --- pooled clients ---------------------------------------------------------------
    min_connections: int = _opt(
        0, "Connections a generic ConnectionPool creates up front.", unit="connections", ge=0
    )
    keepalive_expiry: float = _opt(
        30.0, "Idle time after which a kept-alive HTTP connection is closed.", unit="seconds", gt=0
    )
    http_transport: HttpTransport = _opt(
        "httpx",
        "What carries the shared async HTTP clients' requests: httpx (httpcore) or aiohttp"
        " (the aiohttp extra; several times the requests per second under concurrency)."
        " The clients are httpx.AsyncClient either way.",
    )
    idle_timeout: float | None = _opt(
        300.0,
        "Idle time after which a generic pool discards a connection; null keeps it.",
        unit="seconds",
        gt=0,
    )
    max_lifetime: float | None = _opt(
        None,
        "Age after which a generic pool replaces a connection; null means no limit.",
        unit="seconds",
        gt=0,
    )

    # --- cache ------------------------------------------------------------------------
    cache_dir: str | None = _opt(
        None,
        "Directory of the disk tier; null means the user's cache directory "
        "(platformdirs) under rag-perf-plugins.",
    )
    cache_disk_enabled: bool = _opt(True, "Keep a persistent diskcache tier behind memory.")
    cache_max_bytes: int = _opt(
        1 * GiB,
        "Size bound of the disk tier; older entries are evicted past it.",
        unit="bytes",
        ge=1 * MiB,
    )
    cache_memory_max_bytes: int = _opt(
        64 * MiB, "Size bound of the memory tier (payload plus bookkeeping).", unit="bytes", ge=0
    )
    cache_shards: int = _opt(
        8,
        "diskcache FanoutCache shards; at least the number of concurrent writers.",
        unit="shards",
        ge=1,
        le=256,
    )
    cache_disk_timeout: float = _opt(
        0.1,
        "SQLite lock timeout of the disk tier; past it the call goes on uncached.",
        unit="seconds",
        gt=0,
    )
    cache_vector_dtype: VectorDtype = _opt(
        "float32", "How cached vectors are stored; cold and warm calls return the same values."
    )
    cache_skip_sampled: bool = _opt(
        False, "Do not cache LLM calls that sample (temperature above 0 and no seed)."
    )
    retrieval_ttl: float | None = _opt(
        60.0,
        "How long a vector store's cached search lives (a wrapper's ttl= argument wins); "
        "bounds how long a write that bypassed the wrappers (another process writing to "
        "the store directly) stays unseen; null means until the next write through a "
        "wrapper of the same store.",
        unit="seconds",
        gt=0,
    )
    version_check_interval: float = _opt(
        1.0,
        "How old a cached namespace or store write version may be before it is read again "
        "from the shared tier; another process's write is seen within it (0: every call).",
        unit="seconds",
        ge=0,
    )
    cache_namespace_prefix: str = _opt(
        "rag-perf", "Prefix of every shared-tier key, one per application or tenant."
    )

    # --- Redis (shared tier and shared limits) ----------------------------------------
    redis_url: str | None = _opt(
        None,
        "Redis URL of the shared cache tier and shared rate limits, e.g. "
        "redis://127.0.0.1:6379/0 or rediss://user:password@host:6380/0; null means no "
        "Redis. The password is masked wherever the URL is shown.",
        secret=True,
        validator=_redis_url_problem,
        allowed="a redis://, rediss:// or unix:// URL",
    )
    redis_mode: RedisMode = _opt(
        "standalone",
        "How redis_url is reached: standalone (one server), cluster (any node of a Redis "
        "Cluster, e.g. redis://10.0.0.1:7000/0; the others are discovered) or sentinel (the "
        "master named redis_master_name, found through redis_sentinels; redis_url then gives "
        "the master's password and database, and its host:port is the sentinel when "
        "redis_sentinels is empty).",
    )
    redis_sentinels: str = _opt(
        "",
        "Sentinels of redis_mode sentinel, comma-separated host:port, e.g. "
        "10.0.0.1:26379,10.0.0.2:26379,10.0.0.3:26379; empty: the host:port of redis_url "
        "is the one sentinel.",
        validator=_sentinels_problem,
        allowed="comma-separated host:port entries",
    )
    redis_master_name: str = _opt(
        "mymaster", "Name of the master the sentinels watch (redis_mode sentinel)."
    )
    cross_process_lease: float = _opt(
        0.0,
        "Cross-process single-flight through the Redis tier: a cache miss takes a lease of "
        "this many seconds (renewed while the provider call runs) and identical misses in "
        "other processes wait for its answer; a follower computes itself when the lease "
        "ends without an answer (the leader died). 0 turns it off.",
        unit="seconds",
        ge=0,
    )
    redis_timeout: float = _opt(
        0.25,
        "Socket timeout of Redis calls; past it the call degrades to local tiers.",
        unit="seconds",
        gt=0,
    )
    redis_position: RedisPosition = _opt(
        "after-disk", "Where the Redis tier sits relative to the disk tier."
    )
    shared_rate_limit: bool = _opt(
        False, "Keep the RPM/TPM budget in Redis so all processes share one budget."
    )
    limiter_fallback: LimiterFallback = _opt(
        "local-share", "When Redis is unreachable: use budget / worker_count locally, or refuse."
    )
    worker_count: int = _opt(
        1,
        "Processes sharing one budget; sizes the local share during a Redis outage.",
        unit="processes",
        ge=1,
    )

    # --- admission gate ---------------------------------------------------------------
    requests_per_minute: int | None = _opt(
        None,
        "Request budget per (provider, model, API key); null means unlimited.",
        unit="requests/minute",
        ge=1,
    )
    tokens_per_minute: int | None = _opt(
        None,
        "Token budget per (provider, model, API key); null means unlimited.",
        unit="tokens/minute",
        ge=1,
    )
    rate_limit_scope: str | None = _opt(
        None,
        "Name of a rate budget several models share: every wrapper and factory built with "
        "a config naming the same scope takes one gate (scope/NAME), whatever its provider, "
        "model and API key, e.g. chat and embeddings under one account-wide limit. Null "
        "means the provider's own scope: OpenAI per model, Azure per deployment, Anthropic "
        "per model family (the name without its date or -latest suffix), each per API key.",
        validator=_scope_problem,
        allowed="a name of letters, digits and . _ - : (at most 64 characters)",
    )
    rate_burst_seconds: float = _opt(
        1.0,
        "Largest burst, as seconds of budget (rate/60 x this); a fresh gate never sends "
        "a whole minute's budget at once.",
        unit="seconds",
        gt=0,
        le=60,
    )
    max_queue: int = _opt(
        1000,
        "Callers allowed to wait for admission; past it Overloaded is raised at once.",
        unit="callers",
        ge=0,
    )
    max_queue_wait: float = _opt(
        60.0,
        "Longest expected wait for admission; a caller who would wait longer gets "
        "Overloaded at once.",
        unit="seconds",
        gt=0,
    )

    # --- retries ----------------------------------------------------------------------
    retry_max_attempts: int = _opt(
        4,
        "Attempts per logical call, the first included (1 turns retries off).",
        unit="attempts",
        ge=1,
        le=20,
    )
    retry_initial_backoff: float = _opt(
        0.5, "Back-off before the first retry (full jitter, doubling).", unit="seconds", ge=0
    )
    retry_max_backoff: float = _opt(
        20.0, "Largest back-off between attempts.", unit="seconds", ge=0
    )
    retry_after_cap: float = _opt(
        60.0, "Largest Retry-After we honour; longer asks fail the call.", unit="seconds", ge=0
    )
    retry_budget_ratio: float = _opt(
        0.2,
        "Retries allowed as a fraction of calls in the window (0 forbids retries).",
        unit="ratio",
        ge=0,
        le=10,
    )
    retry_budget_window: float = _opt(
        60.0, "Sliding window of the retry budget.", unit="seconds", gt=0
    )
    request_deadline: float | None = _opt(
        300.0,
        "Deadline of one logical call: queue wait, attempts and back-off together.",
        unit="seconds",
        gt=0,
    )

    # --- circuit breakers and fallbacks -------------------------------------------------
    breaker_enabled: bool | None = _opt(
        None,
        "Circuit breaker per provider target (provider, model, API-key fingerprint): "
        "true on, false off, null on only for models given fallbacks. Shared by every "
        "process through Redis when redis_url is set.",
    )
    breaker_failure_ratio: float = _opt(
        0.5,
        "Share of failed calls (429, 5xx, timeouts; not other 4xx) in the window that "
        "opens a breaker.",
        unit="ratio",
        gt=0,
        le=1,
    )
    breaker_min_calls: int = _opt(
        10,
        "Calls that must have ended in the window before a breaker may open.",
        unit="calls",
        ge=1,
    )
    breaker_window: float = _opt(
        10.0,
        "Sliding window over which a breaker counts failures (a full outage trips it once "
        "failures are breaker_failure_ratio of the window's calls: about half of it).",
        unit="seconds",
        gt=0,
    )
    breaker_cooldown: float = _opt(
        5.0,
        "How long an open breaker refuses calls before letting probes through; a later "
        "opening never shortens it.",
        unit="seconds",
        gt=0,
    )
    breaker_probes: int = _opt(
        1,
        "Probe calls let through by a half-open breaker; all must succeed to close it.",
        unit="calls",
        ge=1,
    )
    breaker_consecutive_failures: int | None = _opt(
        5,
        "Failures in a row that open a breaker at once, whatever the window's ratio; catches "
        "a sudden outage of a busy target. Only a success of a call sent after the latest "
        "failure ends the run (calls in flight when the outage began do not). Null: only "
        "the ratio.",
        unit="calls",
        ge=1,
    )
    breaker_down_failures: int | None = _opt(
        1,
        "Failures in a row of the kind that means the target is down (refused or dropped "
        "connection, timeout, 502, 503, 504, 529 overloaded) that open a breaker at once. "
        "1: the first one opens it (traffic goes to the fallbacks for one cool-down, then a "
        "probe; with no fallback, calls wait or fail fast for that time: raise it there). "
        "Null: they count like any failure.",
        unit="calls",
        ge=1,
    )
    breaker_cooldown_growth: float = _opt(
        2.0,
        "Factor by which each failed probe lengthens the next cool-down (1: every "
        "cool-down is breaker_cooldown). Fewer requests to a target that stays down, at "
        "the price of returning to it up to one (longer) cool-down after it recovers.",
        unit="factor",
        ge=1,
    )
    breaker_cooldown_max: float = _opt(
        30.0,
        "Longest cool-down after failed probes (the growth stops there); at or below "
        "breaker_cooldown: no growth.",
        unit="seconds",
        gt=0,
    )
    breaker_cooldown_jitter: float = _opt(
        0.1,
        "Random share added to each cool-down (0.1: up to 10 % longer), so breakers of "
        "processes that do not share Redis do not probe in step.",
        unit="ratio",
        ge=0,
        le=1,
    )
    breaker_probe_timeout: float | None = _opt(
        30.0,
        "Longest a half-open probe may take (up to its answer, or a stream's first "
        "chunk) before it counts as a timeout and the call fails over; keep it above your "
        "slowest healthy answer, or a slow healthy target stays open. Null: the request's "
        "own timeout.",
        unit="seconds",
        gt=0,
    )
    cache_fallback_answers: bool = _opt(
        False,
        "Let an answer produced by a fallback model answer later requests for the primary "
        "model from the cache (it is always cached under the fallback's own key).",
    )

    # --- semantic LLM cache (docs/components/semantic-cache.md) -------------------------
    semantic_cache: bool = _opt(
        False,
        "Answer an exact-cache miss with the stored answer of a similar earlier prompt in the "
        "same partition (same model, parameters, system prompt, tools, history and scope) "
        "when the similarity reaches semantic_threshold and the guards agree. Needs a "
        "SemanticCache (an embedding model) on the LLM wrapper; per call: "
        "cache_control(semantic=...).",
    )
    semantic_threshold: float = _opt(
        0.92,
        "Lowest cosine similarity (dot product of unit vectors, -1..1) of the last user "
        "message to a stored one that may be served. The default is the lowest of "
        "0.80-0.98 with no false hit on the tuning half of tests/data/semantic_pairs.jsonl "
        "with all-MiniLM-L6-v2 and the guards on; re-tune it for another embedding model.",
        unit="cosine similarity",
        gt=0,
        le=1,
    )
    semantic_guards: bool = _opt(
        True,
        "Refuse a semantic match whose prompt differs from the query in negation, numbers, "
        "dates, units, on/off or up/down words, or capitalised names (the rule set in "
        "rag_perf_plugins.cache.guards). Off: similarity alone decides (not recommended).",
    )
    semantic_serve_sampled: bool = _opt(
        False,
        "Serve sampled calls (temperature above 0 and no seed) from the semantic cache too; "
        "off, they only use the exact cache.",
    )
    semantic_max_entries: int = _opt(
        10_000,
        "Prompts kept per partition by the default in-process index; the oldest go first.",
        unit="entries",
        ge=1,
    )

    # --- batching ---------------------------------------------------------------------
    max_wait_time: float = _opt(
        0.005,
        "Longest time the first item of a batch waits for company (the seed's "
        "BatchProcessor max_wait_time).",
        unit="seconds",
        ge=0,
    )
    batch_max_tokens: int = _opt(
        300_000,
        "Estimated tokens per provider batch (OpenAI allows 300,000 per request).",
        unit="tokens",
        ge=1,
    )
    provider_profile: ProviderProfile = _opt(
        "openai",
        "Provider limits on batch inputs and tokens (openai: 2048 inputs, "
        "300,000 tokens; cohere: 96; voyage: 128; custom: batch_size and batch_max_tokens).",
    )

    # --- degradation ------------------------------------------------------------------
    # Off by default: a RAG service must not change its answers under load unless asked to.
    degrade_serve_stale: bool = _opt(
        False,
        "On overload or provider failure, serve an expired cached answer, marked stale "
        "(the engine only; off by default).",
    )
    degrade_top_k_factor: float = _opt(
        1.0,
        "Under overload, multiply retrieval top_k by this (1.0, the default, turns the step "
        "off; the engine only).",
        unit="ratio",
        gt=0,
        le=1,
    )
    degrade_shed_below_priority: int | None = _opt(
        None,
        "Under overload, refuse queries whose priority is below this; null sheds none.",
    )

    # --- cost -------------------------------------------------------------------------
    price_table_path: str | None = _opt(
        None,
        "A JSON price file (the shipped table's format, USD per 1,000,000 tokens) whose "
        "entries add to or replace the shipped prices; null uses the shipped table only.",
    )
    budget_usd_per_minute: float | None = _opt(
        None,
        "Dollar budget of each scope in budget_scopes per clock minute; past it calls get "
        "BudgetExceeded; null means none.",
        unit="USD/minute",
        gt=0,
    )
    budget_usd_per_hour: float | None = _opt(
        None,
        "Dollar budget of each scope in budget_scopes per clock hour; null means none.",
        unit="USD/hour",
        gt=0,
    )
    budget_usd_per_day: float | None = _opt(
        None,
        "Dollar budget of each scope in budget_scopes per UTC day; null means none.",
        unit="USD/day",
        gt=0,
    )
    budget_scopes: str = _opt(
        "tenant,key",
        "Comma-separated scopes each dollar budget applies to, separately: tenant (the "
        "cost_scope of the call; calls without one are not limited by it), key (provider, "
        "model and API key: one gate), model (the model, across API keys).",
        validator=_budget_scopes_problem,
        allowed="a comma-separated subset of tenant, key, model",
    )

    # --- statistics -------------------------------------------------------------------
    metrics_window_seconds: float = _opt(
        60.0,
        "Sliding window for throughput, of the process-wide tracker (built from the loaded "
        "config, like the process-wide cache) and of PerformanceTracker.from_config.",
        unit="seconds",
        gt=0,
    )

    # Where each value came from, for `rag-perf config show`; not part of equality.
    _sources: Mapping[str, str] = field(
        default_factory=dict, repr=False, compare=False, metadata={"internal": True}
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> PerformanceConfig:  # noqa: D102
        # The dataclass __init__ would raise a bare TypeError for an unknown keyword; refuse
        # it here the way load() does, naming the key and the close matches.
        if args:
            msg = "PerformanceConfig takes keyword arguments only: PerformanceConfig(cache_ttl=60)"
            raise TypeError(msg)
        _check_keys({k: v for k, v in kwargs.items() if k != "_sources"}, where="argument")
        return super().__new__(cls)

    def __post_init__(self) -> None:
        for spec in _fields().values():
            spec.check(getattr(self, spec.name))
        if self.redis_mode == "cluster" and (self.redis_url or "").lower().startswith("unix:"):
            msg = (
                "redis_url=unix://...: a Redis Cluster is reached over TCP; allowed with "
                "redis_mode 'cluster': a redis:// or rediss:// URL of any node"
            )
            raise ConfigError(msg, key="redis_url", value="unix://...")
        if self.redis_mode == "cluster" and self.redis_url:
            db = urlsplit(self.redis_url).path.strip("/")
            if db not in ("", "0"):
                msg = (
                    "redis_url names database "
                    f"{db!r}: a Redis Cluster has one database; allowed with redis_mode "
                    "'cluster': /0 or no database"
                )
                raise ConfigError(msg, key="redis_url", value=f".../{db}")

    # --- constructors -----------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "argument") -> PerformanceConfig:
        """Build a config from a mapping of keys to already-typed values.

        Example: ``PerformanceConfig.from_dict({"cache_size": 500})``.

        Raises:
            ConfigError: an unknown key (with a suggestion), a wrong type or a bad value.
        """
        return cls.load(path=None, env={}, **_check_keys(data, where=source))

    @classmethod
    def from_preset(cls, name: str) -> PerformanceConfig:
        """One of the seed's presets: ``high-throughput``, ``low-latency``, ``memory-constrained``.

        Example: ``PerformanceConfig.from_preset("memory-constrained").cache_size == 1000``.
        """
        return cls.load(preset=name, env={})

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str]) -> PerformanceConfig:
        """Read a YAML file of config keys (optionally under a top-level ``performance:``).

        Example::

            # performance.yaml
            preset: low-latency
            cache_ttl: 600.0

            PerformanceConfig.from_yaml("performance.yaml")

        Raises:
            ConfigError: the file is missing or malformed (file and line named), or a key
                or value is invalid (its line named).
        """
        return cls.load(path, env={})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PerformanceConfig:
        """Read ``RAG_PERF_<KEY>`` variables, e.g. ``RAG_PERF_CACHE_TTL=600``.

        Booleans accept true/false/1/0/yes/no/on/off; ``none`` or an empty value sets an
        optional key to null. Unknown ``RAG_PERF_*`` names are rejected with a suggestion.
        """
        source = os.environ if env is None else env
        # Variables only: the file RAG_PERF_CONFIG names is load()'s business.
        return cls.load(env={k: v for k, v in source.items() if k != CONFIG_ENV})

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        preset: str | None = None,
        env: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> PerformanceConfig:
        """Combine every source: keyword arguments over env over file over preset over defaults.

        Example: ``PerformanceConfig.load("perf.yaml", cache_size=0)``, or
        ``PerformanceConfig.load()``: what every component uses when given no config.

        Args:
            path: A YAML file. ``None``: the file :func:`config_file` finds (the one
                named by ``RAG_PERF_CONFIG``, else ``./rag-perf.yaml`` if it exists, else
                none).
            preset: A preset name; a ``preset:`` key in the file is used when this is ``None``.
            env: Environment to read ``RAG_PERF_*`` from; defaults to ``os.environ``.
            **overrides: Config keys with typed values; these win over everything.

        Raises:
            ConfigError: a bad key or value in any source (the source is named), or a file
                named by ``RAG_PERF_CONFIG`` that cannot be read.
        """
        if path is None:
            path = config_file(env)
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        file_values: dict[str, Any] = {}
        file_sources: dict[str, str] = {}
        if path is not None:
            file_values, file_sources, file_preset = _read_yaml(Path(path))
            preset = preset if preset is not None else file_preset
        if preset is not None:
            for key, value in _preset(preset).items():
                values[key] = value
                sources[key] = f"preset {preset}"
        values.update(file_values)
        sources.update(file_sources)
        env_values, env_sources = _read_env(os.environ if env is None else env)
        values.update(env_values)
        sources.update(env_sources)
        for key, value in _check_keys(overrides, where="argument").items():
            values[key] = value
            sources[key] = "argument"
        for key in _fields():
            sources.setdefault(key, "default")
        return cls(**values, _sources=sources)

    # --- use --------------------------------------------------------------------------
    def replace(self, **changes: Any) -> PerformanceConfig:
        """Return a copy with ``changes`` applied and validated; this object is unchanged."""
        changes = _check_keys(changes, where="argument")
        sources = dict(self._sources) | dict.fromkeys(changes, "argument")
        return dataclasses.replace(self, **changes, _sources=sources)

    def to_dict(self) -> dict[str, Any]:
        """All keys and values, JSON-ready; ``from_dict(c.to_dict()) == c``.

        Holds credentials as they are (a password in ``redis_url``): use :meth:`redacted`
        for anything printed, logged or written to a report.
        """
        return {name: getattr(self, name) for name in _fields()}

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with credentials masked (``redis://:***@host``), for display.

        Example: ``rag-perf config show`` and the benchmark's ``meta.config`` use it.
        """
        return {spec.name: spec.redact(getattr(self, spec.name)) for spec in _fields().values()}

    def __repr__(self) -> str:
        # Only the keys that differ from their default, credentials masked.
        changed = ", ".join(
            f"{name}={value!r}"
            for name, value in self.redacted().items()
            if getattr(self, name) != _fields()[name].default
        )
        return f"PerformanceConfig({changed})"

    def source_of(self, key: str) -> str:
        """Where ``key``'s value came from: default, preset NAME, file:line, env VAR, argument."""
        _check_keys({key: None}, where="argument")
        return self._sources.get(key, "default")

    @classmethod
    def fields(cls) -> list[ConfigField]:
        """Every key with its type, default, unit, bounds and meaning (for the docs)."""
        return list(_fields().values())


def config_file(env: Mapping[str, str] | None = None) -> Path | None:
    """The config file :meth:`PerformanceConfig.load` reads when it is given no path.

    Example: ``RAG_PERF_CONFIG=/etc/app/perf.yaml`` makes every component read that file.

    One rule: the file named by ``RAG_PERF_CONFIG`` (an error later if it cannot be read);
    else ``rag-perf.yaml`` in the working directory when it exists; else none. ``env`` is
    the environment to look in; ``None`` means ``os.environ`` (only then is the working
    directory looked at, so ``from_env({...})`` and ``from_dict`` stay self-contained).
    """
    source = os.environ if env is None else env
    named = source.get(CONFIG_ENV, "").strip()
    if named:
        return Path(named)
    if env is None and Path(DEFAULT_CONFIG_FILE).is_file():
        return Path(DEFAULT_CONFIG_FILE)
    return None


def resolve_config(config: PerformanceConfig | None) -> PerformanceConfig:
    """The config a component uses: ``config``, or :meth:`PerformanceConfig.load` for ``None``.

    Example: ``self.config = resolve_config(config)``. Every wrapper, service, gate, retry
    policy, engine and factory resolves its config this way, so one ``RAG_PERF_*``
    variable or ``rag-perf.yaml`` reaches all of them alike.

    Raises:
        TypeError: ``config`` is neither ``None`` nor a :class:`PerformanceConfig`.
        ConfigError: the file or environment holds a bad key or value.
    """
    if config is None:
        return PerformanceConfig.load()
    if not isinstance(config, PerformanceConfig):
        msg = f"config must be a PerformanceConfig or None, got {type(config).__name__}"
        raise TypeError(msg)
    return config


@dataclass(frozen=True)
class ConfigField:
    """One key of :class:`PerformanceConfig`: its type, default, bounds and meaning."""

    name: str
    kind: type  # bool, int, float or str
    optional: bool
    choices: tuple[str, ...] | None
    default: Any
    doc: str
    unit: str | None
    ge: float | None
    gt: float | None
    le: float | None
    secret: bool = False  # the value may hold a credential: shown masked
    validator: Callable[[Any], str | None] | None = None
    allowed_text: str | None = None

    @property
    def type_name(self) -> str:
        """The type as the docs and error messages spell it, e.g. ``float or null``."""
        base = " | ".join(repr(c) for c in self.choices) if self.choices else self.kind.__name__
        return f"{base} or null" if self.optional else base

    def allowed(self) -> str:
        """Plain words for the allowed values, e.g. ``a float > 0 (seconds) or null``."""
        if self.allowed_text:
            text = self.allowed_text
        elif self.choices:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        else:
            text = {
                "bool": "true or false",
                "int": "an integer",
                "float": "a number",
                "str": "a string",
            }[self.kind.__name__]
            bounds = [
                f">= {_num(self.ge)}" if self.ge is not None else "",
                f"> {_num(self.gt)}" if self.gt is not None else "",
                f"<= {_num(self.le)}" if self.le is not None else "",
            ]
            if any(bounds):
                text += " " + " and ".join(b for b in bounds if b)
        if self.unit:
            text += f" ({self.unit})"
        return text + (" or null" if self.optional else "")

    def check(self, value: Any) -> None:
        """Raise ConfigError unless ``value`` is valid for this key (types are not coerced)."""
        if value is None:
            if self.optional:
                return
            self._fail(value, "null is not allowed")
        if self.kind is bool:
            ok = isinstance(value, bool)
        elif self.kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            self._fail(value, f"expected {self.type_name}, got {type(value).__name__}")
        if self.choices is not None and value not in self.choices:
            self._fail(value, "not an allowed value")
        if self.kind in (int, float) and not (
            (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
        ):
            self._fail(value, "out of range")
        if self.validator is not None:
            problem = self.validator(value)
            if problem is not None:
                self._fail(value, problem)

    def redact(self, value: Any) -> Any:
        """``value`` as it may be shown: credentials masked (``redis://:***@host``).

        A secret key's string goes through :func:`~rag_perf_plugins._secrets.redact_url`
        (masks a malformed URL's password too), any other string through ``redact_text``;
        a secret key's value of another type is replaced by its type name.
        """
        if isinstance(value, str):
            return redact_url(value) if self.secret else redact_text(value)
        if self.secret and value is not None:
            return f"<{type(value).__name__}>"
        return value

    def parse(self, text: str) -> Any:
        """Turn an environment string into a typed value (then checked by :meth:`check`)."""
        raw = text.strip()
        if self.optional and raw.lower() in ("", "none", "null"):
            return None
        if self.kind is bool:
            lowered = raw.lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            self._fail(text, "expected true or false")
        try:
            if self.kind is int:
                return int(raw.replace("_", ""))
            if self.kind is float:
                return float(raw)
        except ValueError:
            self._fail(text, f"expected {self.type_name}")
        return raw

    def _fail(self, value: Any, why: str) -> typing.NoReturn:
        # The message and the error's .value hold the masked value: errors get logged.
        shown = self.redact(value) if self.secret else value
        msg = f"{self.name}={redact_text(repr(shown))}: {why}; allowed: {self.allowed()}"
        raise ConfigError(msg, key=self.name, value=shown)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


_FIELD_CACHE: dict[str, ConfigField] = {}


def _fields() -> dict[str, ConfigField]:
    if _FIELD_CACHE:
        return _FIELD_CACHE
    hints = typing.get_type_hints(PerformanceConfig)
    for f in dataclasses.fields(PerformanceConfig):
        if f.metadata.get("internal"):
            continue
        kind, optional, choices = _unpack(hints[f.name])
        _FIELD_CACHE[f.name] = ConfigField(
            name=f.name,
            kind=kind,
            optional=optional,
            choices=choices,
            default=f.default,
            doc=f.metadata["doc"],
            unit=f.metadata["unit"],
            ge=f.metadata["ge"],
            gt=f.metadata["gt"],
            le=f.metadata["le"],
            secret=f.metadata["secret"],
            validator=f.metadata["validator"],
            allowed_text=f.metadata["allowed"],
        )
    return _FIELD_CACHE


def _unpack(hint: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    optional = False
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        (hint,) = args
    if get_origin(hint) is Literal:
        return str, optional, tuple(get_args(hint))
    return hint, optional, None


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(_fields()), n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else "; see `rag-perf config show` for keys"


# Keys that were renamed: the old name is refused with the new one named (nothing is
# released yet, so there are no aliases).
RENAMED: Final = {
    "batch_max_wait_ms": ("max_wait_time", "in seconds; batch_max_wait_ms was milliseconds"),
}


def _check_keys(data: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    for key in data:
        if key in RENAMED:
            new, note = RENAMED[key]
            msg = f"{key}: renamed ({where}); use {new} ({note})"
            raise ConfigError(msg, key=str(key))
        if key not in _fields():
            msg = f"{key}: unknown config key ({where}){_suggest(str(key))}"
            raise ConfigError(msg, key=str(key))
    return dict(data)


def _read_env(env: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name, text in env.items():
        if not name.startswith(ENV_PREFIX) or name in NON_CONFIG_ENV:
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in RENAMED:
            new, note = RENAMED[key]
            msg = f"{name}: renamed (environment); use {ENV_PREFIX}{new.upper()} ({note})"
            raise ConfigError(msg, key=key)
        spec = _fields().get(key)
        if spec is None:
            msg = f"{name}: unknown config key {key!r} (environment){_suggest(key)}"
            raise ConfigError(msg, key=key)
        try:
            value = spec.parse(text)
            spec.check(value)
        except ConfigError as exc:
            shown = spec.redact(text) if spec.secret else text
            raise ConfigError(
                f"{exc} (from environment variable {name})", key=key, value=shown
            ) from None
        values[key] = value
        sources[key] = f"env {name}"
    return values, sources


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, str], str | None]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        msg = f"{path}: cannot read config file ({exc.strerror or exc})"
        raise ConfigError(msg) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        msg = f"{where}: malformed YAML: {problem}"
        raise ConfigError(msg) from None
    if data is None:
        return {}, {}, None
    if not isinstance(data, dict) or not isinstance(node, yaml.MappingNode):
        msg = f"{path}: the top level must be a mapping of config keys, got {type(data).__name__}"
        raise ConfigError(msg)
    if set(data) == {"performance"} and isinstance(data["performance"], dict):
        data = data["performance"]
        node = node.value[0][1]
    lines = {k.value: k.start_mark.line + 1 for k, _ in _pairs(node)}
    preset = data.pop("preset", None)
    if preset is not None and not isinstance(preset, str):
        msg = f"{path}:{lines.get('preset', '?')}: preset must be a string, got {preset!r}"
        raise ConfigError(msg, key="preset", value=preset)
    sources: dict[str, str] = {}
    for key, value in data.items():
        where = f"{path}:{lines.get(str(key), '?')}"
        try:
            _check_keys({key: value}, where=f"file {where}")
            _fields()[key].check(value)
        except ConfigError as exc:
            if str(exc).startswith(str(key)) and "unknown config key" in str(exc):
                raise
            raise ConfigError(f"{exc} (in {where})", key=str(key), value=exc.value) from None
        sources[key] = f"file {where}"
    return dict(data), sources, preset


def _pairs(node: Any) -> Iterator[tuple[Any, Any]]:
    return iter(node.value if isinstance(node, yaml.MappingNode) else [])


# The seed's presets, with exactly its values for the keys it gives. Our own keys follow
# the preset's intent; the reasons are in docs/configuration.md.
PRESETS: dict[str, dict[str, Any]] = {
    "high-throughput": {
        # seed
        "connection_pool_size": 50,
        "cache_size": 50_000,
        "async_enabled": True,
        "max_concurrent_requests": 100,
        "batch_size": 50,
        "enable_connection_pooling": True,
        # ours: fuller batches are worth a few more milliseconds of wait; a deeper queue
        # absorbs bursts; more shards for more concurrent writers.
        "max_wait_time": 0.020,
        "max_queue": 5000,
        "cache_shards": 16,
        "cache_memory_max_bytes": 256 * MiB,
    },
    "low-latency": {
        # seed
        "connection_pool_size": 20,
        "cache_size": 10_000,
        "cache_ttl": 1800.0,
        "async_enabled": True,
        "max_concurrent_requests": 20,
        "batch_size": 10,
        # ours: barely wait for batch company; fail fast instead of queueing or retrying long.
        "max_wait_time": 0.001,
        "max_queue_wait": 2.0,
        "retry_max_attempts": 2,
        "retry_max_backoff": 2.0,
        "request_deadline": 15.0,
    },
    "memory-constrained": {
        # seed
        "connection_pool_size": 5,
        "cache_size": 1000,
        "cache_ttl": 900.0,
        "async_enabled": False,
        "max_concurrent_requests": 5,
        "batch_size": 5,
        # ours: a small memory tier (the disk tier keeps hit rates up), a short queue.
        "cache_memory_max_bytes": 8 * MiB,
        "cache_max_bytes": 256 * MiB,
        "max_queue": 100,
        "cache_shards": 4,
    },
}


def _preset(name: str) -> dict[str, Any]:
    try:
        return PRESETS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f"; did you mean {close[0]}?" if close else ""
        msg = f"preset={name!r}: unknown preset{hint}; allowed: {', '.join(sorted(PRESETS))}"
        raise ConfigError(msg, key="preset", value=name) from None


def reference_markdown() -> str:
    """The configuration reference table, in Markdown, generated from the fields.

    ``docs/configuration.md`` embeds this between markers; a test fails when it is stale.
    Regenerate with ``rag-perf config reference``.
    """
    rows = [
        "| key | type | default | unit | environment variable | meaning |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec in _fields().values():
        default = "null" if spec.default is None else repr(spec.default)
        if isinstance(spec.default, bool):
            default = str(spec.default).lower()
        # A "|" inside a cell (a Literal's alternatives) would split it: escape it.
        type_name = spec.type_name.replace("|", "\\|")
        rows.append(
            f"| `{spec.name}` | {type_name} | `{default}` | {spec.unit or ''} "
            f"| `{ENV_PREFIX}{spec.name.upper()}` | {spec.doc} Allowed: {spec.allowed()}. |"
        )
    presets = ["", "| key | " + " | ".join(PRESETS) + " |", "| --- |" + " --- |" * len(PRESETS)]
    keys = sorted({k for values in PRESETS.values() for k in values})
    for key in keys:
        cells = [repr(p[key]) if key in p else "" for p in PRESETS.values()]
        presets.append(f"| `{key}` | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\n### Presets\n" + "\n".join(presets) + "\n"
