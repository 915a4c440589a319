"""Credentials never escape: plant a Redis password and an API key, then grep every output.

The planted strings go where users put them (``redis_url``, ``RAG_PERF_REDIS_URL``, a YAML
file, ``api_key=``, ``default_headers``, a proxy URL) and every way a value can come back
out is read: ``rag-perf config show`` and ``rag-perf bench`` (stdout, stderr, the results
JSON and Markdown), ``ConfigError`` messages and attributes, reprs, ``str()``, ``stats()``,
``to_dict()``/``to_json()`` and log records at DEBUG of a Redis outage and of real calls to
the simulator. Paths that must reach Redis with a password use the real server (it lets
the default user in with any password); outage paths use a dead port.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from rag_perf_plugins._secrets import (
    MASK,
    describe_error,
    is_secret_name,
    redact_data,
    redact_text,
    redact_url,
)
from rag_perf_plugins.admission import AdmissionGate, RateLimits
from rag_perf_plugins.bench import registry
from rag_perf_plugins.bench.registry import BenchContext, Benchmark, Result
from rag_perf_plugins.bench.runner import (
    build_document,
    collect_meta,
    render_markdown,
    run,
    validate_document,
)
from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.cli import main
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.errors import ConfigError
from rag_perf_plugins.pool.http import (
    HttpClientRegistry,
    async_openai_client,
    http_pool_stats,
    openai_client,
)
from rag_perf_plugins.simulator import Simulator

PASSWORD = "pl4nted-Redis-s3cret"
API_KEY = "sk-pl4nted-api-key"
PLANTED = (PASSWORD, API_KEY)
# Nothing listens on port 1: every Redis call takes the outage path (and logs it).
DEAD_URL = f"redis://app:{PASSWORD}@127.0.0.1:1/0"


def text_of(value: Any) -> str:
    """Everything a value shows: str and repr, and JSON for data."""
    if isinstance(value, str):
        return value
    shown = f"{value!s}\n{value!r}"
    if isinstance(value, dict | list):
        shown += "\n" + json.dumps(value, default=repr)
    return shown


def assert_clean(*outputs: Any) -> None:
    for output in outputs:
        text = text_of(output)
        for secret in PLANTED:
            assert secret not in text, f"{secret!r} leaked in: {text[:2000]}"


def assert_error_clean(exc: BaseException) -> None:
    """The message, repr, args, attributes and the formatted traceback (chain included)."""
    formatted = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert_clean(str(exc), repr(exc), repr(exc.args), repr(vars(exc)), formatted)


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Every log record at DEBUG and above, of every logger."""
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_logs_clean(caplog: pytest.LogCaptureFixture) -> None:
    # caplog.text is each record formatted, exceptions and their tracebacks included.
    assert_clean(caplog.text, *(repr(r.args) for r in caplog.records))


# --- the helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://app:s3cret@h:6379/0", "redis://app:***@h:6379/0"),
        ("redis://:s3cret@h:6379/0", "redis://:***@h:6379/0"),
        ("redis://h:6379/0?password=s3cret&db=1", "redis://h:6379/0?password=***&db=1"),
        ("redis://:p@ss/w:rd@h:6379/0", "redis://:***@h:6379/0"),  # raw '@', '/', ':'
        ("rediss://s3cret@h:6380", "rediss://***@h:6380"),  # a lone userinfo: a token
        ("redis:/app:s3cret@h/0", "***@h/0"),  # malformed: all before '@' masked
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("unix:///var/run/redis.sock?db=0", "unix:///var/run/redis.sock?db=0"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_text_masks_every_url_in_a_message() -> None:
    text = "Error connecting to redis://:s3cret@h:1 (via http://u:p@ss@proxy:3128), see h:6379"
    assert redact_text(text) == (
        "Error connecting to redis://:***@h:1 (via http://u:***@proxy:3128), see h:6379"
    )
    assert redact_text("GET https://api.example/v1?api_key=s3cret&x=1") == (
        "GET https://api.example/v1?api_key=***&x=1"
    )


@pytest.mark.parametrize(
    "name",
    ["api_key", "openai_api_key", "X-Api-Key", "Authorization", "password", "client_secret",
     "aws_secret_access_key", "aws_session_token", "hf_token", "token", "auth", "credentials"],
)  # fmt: skip
def test_secret_names(name: str) -> None:
    assert is_secret_name(name)


@pytest.mark.parametrize(
    "name",
    ["max_tokens", "tokens_per_minute", "eos_token", "pad_token_id", "tokenizer", "key",
     "cache_key", "model", "api_base", "secrets_dir"],
)  # fmt: skip
def test_names_that_are_not_secrets(name: str) -> None:
    assert not is_secret_name(name)


def test_redact_data_masks_by_name_and_by_url_and_keeps_secret_references() -> None:
    data = {
        "openai_api_key": {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]},
        "default_headers": {"Authorization": "Bearer sk-1", "Accept": "json"},
        "auth": ("user", "pw"),
        "api_base": "http://u:pw@h/v1",
        "max_tokens": 5,
        "stop": ("a", "b"),
        "api_key": None,
    }
    assert redact_data(data) == {
        "openai_api_key": {"lc": 1, "type": "secret", "id": ["OPENAI_API_KEY"]},
        "default_headers": {"Authorization": MASK, "Accept": "json"},
        "auth": MASK,
        "api_base": "http://u:***@h/v1",
        "max_tokens": 5,
        "stop": ("a", "b"),
        "api_key": None,
    }


def test_describe_error() -> None:
    assert describe_error(ConnectionError("to redis://:s3cret@h:1")) == (
        "ConnectionError: to redis://:***@h:1"
    )
    assert describe_error(TimeoutError()) == "TimeoutError"


# --- configuration --------------------------------------------------------------------------
def test_config_repr_str_and_redacted_hide_the_password() -> None:
    for url in (DEAD_URL, f"redis://127.0.0.1:6379/0?password={PASSWORD}"):
        config = PerformanceConfig(redis_url=url)
        assert_clean(repr(config), str(config), config.redacted())
        assert config.redis_url == url and config.to_dict()["redis_url"] == url  # still usable


def test_config_show_hides_the_password_from_env_and_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RAG_PERF_REDIS_URL", DEAD_URL)
    assert main(["config", "show"]) == 0
    shown = capsys.readouterr()
    assert_clean(shown.out, shown.err)
    assert "app:***@127.0.0.1" in shown.out

    monkeypatch.delenv("RAG_PERF_REDIS_URL")
    path = tmp_path / "perf.yaml"
    path.write_text(f"redis_url: 'redis://127.0.0.1:6379/0?password={PASSWORD}'\n")
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = capsys.readouterr()
    assert_clean(shown.out, shown.err)
    assert MASK in shown.out  # (the value column folds the URL over lines)


MALFORMED = [
    f"http://app:{PASSWORD}@127.0.0.1:6379/0",  # not a Redis scheme
    f"redis://app:{PASSWORD}@127.0.0.1:port/0",  # a port that is not a number
    f"redis://app:ab/{PASSWORD}@127.0.0.1:6379/0",  # a raw '/' in the password
    f"redis:/app:{PASSWORD}@127.0.0.1/0",  # one slash short
    f"redis://app:{PASSWORD}@[::1/0",  # a broken IPv6 host
]


@pytest.mark.parametrize("url", MALFORMED)
def test_config_error_for_a_malformed_url_hides_the_password(url: str, tmp_path: Path) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text(f"redis_url: {json.dumps(url)}\n")
    sources: list[Callable[[], PerformanceConfig]] = [
        lambda: PerformanceConfig(redis_url=url),
        lambda: PerformanceConfig.from_dict({"redis_url": url}),
        lambda: PerformanceConfig.load(env={"RAG_PERF_REDIS_URL": url}),
        lambda: PerformanceConfig.load(path, env={}),
        lambda: PerformanceConfig().replace(redis_url=url),
    ]
    for make in sources:
        with pytest.raises(ConfigError, match="redis_url") as info:
            make()
        assert_error_clean(info.value)
        assert info.value.key == "redis_url"


def test_config_error_for_a_wrongly_typed_value_names_only_its_type(tmp_path: Path) -> None:
    path = tmp_path / "perf.yaml"
    path.write_text(f"redis_url:\n  password: {PASSWORD}\n")
    with pytest.raises(ConfigError, match="got dict") as info:
        PerformanceConfig.load(path, env={})
    assert_error_clean(info.value)


def test_cli_config_error_hides_the_password(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAG_PERF_REDIS_URL", MALFORMED[0])
    assert main(["config", "show"]) == 2
    shown = capsys.readouterr()
    assert "redis_url" in shown.err
    assert_clean(shown.out, shown.err)


# --- Redis: an outage with a password in the URL --------------------------------------------
def test_redis_tier_outage_hides_the_password(logs: pytest.LogCaptureFixture) -> None:
    from rag_perf_plugins.cache.redis_tier import RedisTier
    from rag_perf_plugins.redis.client import RedisUnavailable

    tier = RedisTier(DEAD_URL, prefix="secrets", timeout=0.2)
    try:
        with pytest.raises(RedisUnavailable) as info:
            tier.get_many(["a"])
        assert_error_clean(info.value)
        with pytest.raises(RedisUnavailable) as info:  # the breaker is open now
            tier.delete_many(["a"])
        assert_error_clean(info.value)
        assert tier.ping() is False
        assert_clean(repr(tier), tier.stats(), repr(tier.breaker))
    finally:
        tier.close()
    assert_logs_clean(logs)


def test_cache_manager_outage_hides_the_password(
    logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    config = PerformanceConfig(
        redis_url=DEAD_URL, redis_timeout=0.2, redis_position="before-disk", cache_dir=str(tmp_path)
    )
    with CacheManager(config) as cache:
        cache.set("k", {"answer": 42}, namespace="secrets")
        assert cache.get("k", namespace="secrets") == {"answer": 42}  # the disk tier answers
        assert_clean(repr(cache), cache.get_stats(), repr(cache.config))
    assert "redis" in logs.text  # the outage was logged
    assert_logs_clean(logs)


def test_redis_budget_store_outage_hides_the_password(logs: pytest.LogCaptureFixture) -> None:
    from rag_perf_plugins.admission.redis_store import RedisBudgetStore

    store = RedisBudgetStore(DEAD_URL, prefix="secrets", timeout=0.2, worker_count=2)
    limits = RateLimits(requests_per_minute=600)
    try:
        wait = store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=1.0)
        # The local share admitted it, one interval of its 300 RPM later (it starts empty).
        assert wait == pytest.approx(0.2)
        wait = asyncio.run(
            store.atry_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=1.0)
        )
        assert wait >= 0.0
        assert_clean(repr(store), store.stats())
    finally:
        store.close()
    assert "did not answer" in logs.text
    assert_logs_clean(logs)


def test_shared_gate_outage_hides_the_password(logs: pytest.LogCaptureFixture) -> None:
    config = PerformanceConfig(
        redis_url=DEAD_URL,
        redis_timeout=0.2,
        shared_rate_limit=True,
        requests_per_minute=6000,
        cache_namespace_prefix="secrets-gate",
    )
    gate = AdmissionGate(config, key="openai/gpt-4o-mini/k-test")
    with gate.acquire():
        pass
    assert_clean(repr(gate), gate.stats(), repr(gate.config))
    assert "did not answer" in logs.text
    assert_logs_clean(logs)


# --- Redis: a live server reached with a password -------------------------------------------
@pytest.fixture
def secret_redis_url(redis_url: str) -> str:
    """The test database, reached with a planted password (the default user takes any)."""
    import redis

    url = redis_url.replace("redis://", f"redis://:{PASSWORD}@", 1)
    client = redis.Redis.from_url(url)
    try:
        client.ping()
    except redis.AuthenticationError:  # pragma: no cover - a server with other users
        pytest.skip("this Redis refuses a password for the default user")
    finally:
        client.close()
    return url


@pytest.mark.redis
def test_live_redis_with_a_password_shows_none_of_it(
    secret_redis_url: str, logs: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    from rag_perf_plugins.admission.redis_store import RedisBudgetStore
    from rag_perf_plugins.cache.redis_tier import RedisTier

    config = PerformanceConfig(
        redis_url=secret_redis_url, cache_dir=str(tmp_path), cache_namespace_prefix="secrets"
    )
    with CacheManager(config) as cache:
        cache.set("k", "v", namespace="secrets")
        assert cache.get("k", namespace="secrets") == "v"
        redis_tiers = [t for t in cache.tiers if isinstance(t, RedisTier)]
        assert redis_tiers and redis_tiers[0].ping()
        assert_clean(repr(cache), cache.get_stats(), *(repr(t) for t in cache.tiers))
    store = RedisBudgetStore.from_config(config)
    try:
        limits = RateLimits(requests_per_minute=600)
        assert store.try_reserve("k", limits, requests=1, tokens=0, now=0.0, max_wait=1.0) == 0
        assert store.stats()["redis_calls"] == 1
        assert_clean(repr(store), store.stats())
    finally:
        store.close()
    assert_logs_clean(logs)


# --- the benchmark: metadata, results file, console -----------------------------------------
def _leaky_benchmark(ctx: BenchContext) -> Iterator[Result]:
    yield Result.compare("secrets_ok", 1.0, "s")
    # As a client library's error would: quoting the URL it was given.
    raise ConnectionError(f"Error connecting to {ctx.config.redis_url}")


@pytest.fixture
def leaky_category() -> Iterator[None]:
    added = Benchmark("secretscat", "quotes the Redis URL", _leaky_benchmark)
    registry.BENCHMARKS.append(added)
    try:
        yield
    finally:
        registry.BENCHMARKS.remove(added)


def test_bench_meta_and_document_hide_the_password(tmp_path: Path) -> None:
    config = PerformanceConfig(redis_url=DEAD_URL)
    meta = collect_meta(config, quick=True, argv=["rag-perf", "bench", f"--note={DEAD_URL}"])
    assert meta["config"]["redis_url"] == "redis://app:***@127.0.0.1:1/0"
    ctx = BenchContext(config=config, quick=True, workdir=tmp_path)
    results = run([Benchmark("secretscat", "quotes the Redis URL", _leaky_benchmark)], ctx)
    assert results[-1].error is not None and "Error connecting" in results[-1].error
    document = build_document(results, meta=meta)
    assert validate_document(document) == []
    assert_clean(meta, document, json.dumps(document), render_markdown(document))


def test_bench_cli_hides_the_password(
    leaky_category: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("RAG_PERF_REDIS_URL", DEAD_URL)
    out, md = tmp_path / "results.json", tmp_path / "results.md"
    argv = ["bench", "--only", "secretscat", "--quick", "--output", str(out), "--markdown", str(md)]
    assert main(argv) == 1  # the error row
    shown = capsys.readouterr()
    assert "Error connecting" in shown.out
    document = json.loads(out.read_text())
    assert document["meta"]["config"]["redis_url"] == "redis://app:***@127.0.0.1:1/0"
    assert_clean(shown.out, shown.err, out.read_text(), md.read_text())


# --- pooled HTTP clients and the OpenAI helpers ---------------------------------------------
def test_http_registry_hides_proxy_and_base_url_credentials() -> None:
    registry_ = HttpClientRegistry()
    try:
        registry_.get_client("http://127.0.0.1:9/v1")
        registry_.get_client("http://127.0.0.1:9/v1", proxy=f"http://user:{PASSWORD}@127.0.0.1:3")
        registry_.get_async_client(f"http://user:{API_KEY}@127.0.0.1:9/v1")
        stats = registry_.stats()
        assert any("proxy=http://user:***@127.0.0.1:3" in name for name in stats)
        assert_clean(repr(registry_), list(stats), stats)
        with pytest.raises(ValueError, match="absolute http") as info:
            registry_.get_client(f"ftp://user:{API_KEY}@127.0.0.1/v1")
        assert_error_clean(info.value)
    finally:
        registry_.close()


def test_openai_helpers_hide_the_api_key(
    simulator: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    client = openai_client(base_url=simulator.base_url, api_key=API_KEY)
    client.embeddings.create(model="text-embedding-3-small", input=["one"])

    async def call() -> Any:
        aclient = async_openai_client(base_url=simulator.base_url, api_key=API_KEY)
        await aclient.embeddings.create(model="text-embedding-3-small", input=["two"])
        return aclient

    aclient = asyncio.run(call())
    assert_clean(repr(client), repr(aclient), http_pool_stats(), simulator.stats())
    assert_logs_clean(logs)  # the SDK, httpx, httpcore and the simulator at DEBUG


# --- both frameworks' wrappers --------------------------------------------------------------
NO_CACHE = PerformanceConfig(enable_caching=False)


def test_langchain_wrappers_hide_the_api_key(
    simulator: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    lc = pytest.importorskip("rag_perf_plugins.langchain")
    headers = {"Authorization": f"Bearer {API_KEY}", "X-Api-Key": API_KEY}
    llm = lc.PerfChatModel(
        lc.pooled_chat_openai(
            api_key=API_KEY, base_url=simulator.base_url, model="gpt-4o-mini",
            default_headers=headers,
        ),
        NO_CACHE,
    )  # fmt: skip
    embeddings = lc.PerfEmbeddings(
        lc.pooled_openai_embeddings(api_key=API_KEY, base_url=simulator.base_url), NO_CACHE
    )
    assert llm.invoke("hello").content
    assert len(embeddings.embed_query("hello")) > 0
    assert_logs_clean(logs)
    assert_clean(simulator.stats())

    # Credentials in the base URL too, for what the wrappers show (not sent anywhere).
    url = simulator.base_url.replace("http://", f"http://user:{API_KEY}@")
    shown_llm = lc.PerfChatModel(
        lc.pooled_chat_openai(api_key=API_KEY, base_url=url, default_headers=headers), NO_CACHE
    )
    shown_embeddings = lc.PerfEmbeddings(
        lc.pooled_openai_embeddings(api_key=API_KEY, base_url=url), NO_CACHE
    )
    for model in (llm, shown_llm):
        assert_clean(
            repr(model),
            str(model),
            json.dumps(model.to_json(), default=repr),
            model._identifying_params,
            model.model_dump(),
            model.model_dump_json(),
            repr(model.service),
        )
    assert "ChatOpenAI" in repr(llm) and "gpt-4o-mini" in repr(llm)
    for wrapped in (embeddings, shown_embeddings):
        assert_clean(repr(wrapped), str(wrapped), repr(wrapped.service))


def test_llama_index_wrappers_hide_the_api_key(
    simulator: Simulator, logs: pytest.LogCaptureFixture
) -> None:
    li = pytest.importorskip("rag_perf_plugins.llama_index")
    from rag_perf_plugins.llama_index.embeddings import inner_identity
    from rag_perf_plugins.llama_index.llms import llm_identity

    headers = {"Authorization": f"Bearer {API_KEY}"}
    llm = li.wrap_llm(
        li.pooled_openai_llm(api_key=API_KEY, api_base=simulator.base_url, default_headers=headers),
        NO_CACHE,
    )
    embedding = li.PerfEmbedding(
        li.pooled_openai_embedding(api_key=API_KEY, api_base=simulator.base_url), NO_CACHE
    )
    assert llm.complete("hello").text
    assert len(embedding.get_query_embedding("hello")) > 0
    assert_logs_clean(logs)
    assert_clean(simulator.stats())

    # Credentials in the base URL and in additional_kwargs too, for what the wrappers show.
    url = simulator.base_url.replace("http://", f"http://user:{API_KEY}@")
    inner_llm = li.pooled_openai_llm(
        api_key=API_KEY,
        api_base=url,
        default_headers=headers,
        additional_kwargs={"extra_headers": {"X-Api-Key": API_KEY}},
    )
    inner_embedding = li.pooled_openai_embedding(
        api_key=API_KEY, api_base=url, additional_kwargs={"api_key": API_KEY}
    )
    assert_clean(llm_identity(inner_llm), inner_identity(inner_embedding))
    for wrapped in (
        llm,
        embedding,
        li.wrap_llm(inner_llm, NO_CACHE),
        li.PerfEmbedding(inner_embedding, NO_CACHE),
    ):
        assert_clean(
            repr(wrapped),
            str(wrapped),
            wrapped.to_dict(),
            wrapped.to_json(),
            wrapped.model_dump(),
            wrapped.model_dump_json(),
        )
    assert "api_key" not in json.dumps(llm_identity(inner_llm))
    assert "api_key" not in json.dumps(
        inner_identity(li.pooled_openai_embedding(api_key=API_KEY, api_base=url))
    )
