"""PerfEmbeddings beside the OpenAIEmbeddings it wraps: same vectors, same request bodies.

The real ``OpenAIEmbeddings`` talks to the simulator over HTTP, once bare and once inside
``PerfEmbeddings``, under every cache configuration (off, memory only, disk only, Redis
instead of disk). The bodies the provider receives (read by httpx event hooks on the SDK's
own clients) must be equal for every request the wrapper sends, and every answer, cold,
after each write and warm, must be the bare answer as the cache keeps it (float32). With
Redis, a second manager (another process: its own memory tier) must answer the same from
Redis alone.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from langchain_openai import OpenAIEmbeddings
from rag_perf_plugins.langchain import PerfEmbeddings

from rag_perf_plugins.cache import CacheManager
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.services.embeddings import CacheEmbeddingStore
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

CACHES: dict[str, dict[str, Any]] = {
    "off": {"enable_caching": False},
    "memory": {"cache_disk_enabled": False},
    "disk": {"cache_size": 0},
    "redis": {"cache_size": 0, "redis_position": "instead-of-disk"},
}
DOCS = [f"Passage {i}: the tide pools of the north coast." for i in range(5)]
QUERY = "Where are the tide pools?"


@pytest.fixture
async def make(
    simulator: Simulator, bodies: list[Any]
) -> AsyncIterator[Callable[[], OpenAIEmbeddings]]:
    """``make()``: a real OpenAIEmbeddings on the simulator whose requests land in bodies."""
    clients: list[Any] = []

    def record(request: httpx.Request) -> None:
        if request.url.path.endswith("/embeddings"):
            bodies.append(json.loads(request.content))

    async def arecord(request: httpx.Request) -> None:
        record(request)

    def build() -> OpenAIEmbeddings:
        sync = httpx.Client(event_hooks={"request": [record]})
        aio = httpx.AsyncClient(event_hooks={"request": [arecord]})
        clients.extend([sync, aio])
        options: dict[str, Any] = {
            "model": "text-embedding-3-small", "base_url": simulator.base_url,
            "api_key": "sk-test", "max_retries": 0, "http_client": sync,
            "http_async_client": aio,
            "check_embedding_ctx_length": False,  # texts as sent (no tiktoken download)
        }  # fmt: skip
        return OpenAIEmbeddings(**options)

    yield build
    for client in clients:
        if isinstance(client, httpx.Client):
            client.close()
        else:
            await client.aclose()


@pytest.fixture
def bodies() -> list[Any]:
    return []


def _config(cache: str, tmp_path: Path, request: pytest.FixtureRequest) -> PerformanceConfig:
    settings = dict(CACHES[cache])
    if cache == "redis":
        settings["redis_url"] = request.getfixturevalue("redis_url")
    return PerformanceConfig(cache_dir=str(tmp_path / "cache"), enable_metrics=False, **settings)


def _wrapped(inner: OpenAIEmbeddings, config: PerformanceConfig) -> PerfEmbeddings:
    """A wrapper with its own cache manager (None when caching is off)."""
    if not config.enable_caching:
        return PerfEmbeddings(inner, config, tracker=PerformanceTracker())
    store = CacheEmbeddingStore(CacheManager(config))
    return PerfEmbeddings(inner, config, store=store, tracker=PerformanceTracker())


def _float32(vectors: Any) -> list[Any]:
    return np.asarray(vectors, dtype=np.float32).astype(np.float64).tolist()  # type: ignore[no-any-return]


async def _call(model: Any, method: str, asynchronous: bool) -> Any:
    if method == "documents":
        return await model.aembed_documents(DOCS) if asynchronous else model.embed_documents(DOCS)
    return await model.aembed_query(QUERY) if asynchronous else model.embed_query(QUERY)


@pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize("method", ["documents", "query"])
@pytest.mark.parametrize("cache", sorted(CACHES))
async def test_wrapped_answers_and_sends_what_the_bare_model_does(
    make: Callable[[], OpenAIEmbeddings],
    bodies: list[Any],
    tmp_path: Path,
    request: pytest.FixtureRequest,
    cache: str,
    method: str,
    asynchronous: bool,
) -> None:
    config = _config(cache, tmp_path, request)
    bare = await _call(make(), method, asynchronous)
    sent_bare = list(bodies)
    assert len(sent_bare) == 1
    bodies.clear()

    wrapped = _wrapped(make(), config)
    expected = _float32(bare)
    cold = await _call(wrapped, method, asynchronous)
    assert cold == expected
    assert bodies == sent_bare  # the same request, field for field
    for _ in range(2):  # after the write: from the cache, or sent again alike when off
        bodies.clear()
        again = await _call(wrapped, method, not asynchronous)
        assert again == expected
        assert bodies == ([] if config.enable_caching else sent_bare)
    if cache == "redis":  # another process: its own memory tier, the same Redis
        bodies.clear()
        peer = _wrapped(make(), config)
        assert await _call(peer, method, asynchronous) == expected
        assert bodies == []
