"""The semantic cache behind PerfChatModel: real ChatOpenAI and OpenAIEmbeddings, the simulator.

The simulator's embeddings make texts that share words close (``simulator/embeddings.py``),
so a reordered question with an extra polite word is a paraphrase here, and a question
with one word changed is a near-miss the guards must refuse.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from langchain_core.messages import HumanMessage, SystemMessage
from langchain_core.runnables import RunnableConfig
from langchain_openai import ChatOpenAI
from rag_perf_plugins.langchain import (
    PerfChatModel,
    PerfEmbeddings,
    pooled_chat_openai,
    pooled_openai_embeddings,
)

from rag_perf_plugins.cache import CacheManager, cache_control, cache_scope
from rag_perf_plugins.cache.semantic import SemanticCache
from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator
from rag_perf_plugins.tracking import PerformanceTracker

ASKED = "How do I reset my account password?"
PARAPHRASE = "how do I reset my account password, please?"


def chat_requests(sim: Simulator) -> int:
    by_endpoint: dict[str, int] = sim.stats()["requests_by_endpoint"]
    return sum(n for path, n in by_endpoint.items() if path.endswith("/chat/completions"))


def _chat(sim: Simulator, **options: Any) -> ChatOpenAI:
    params: dict[str, Any] = {"model": "gpt-4o-mini", "api_key": "sk-test", "temperature": 0.0}
    return pooled_chat_openai(base_url=sim.base_url, **(params | options))


@pytest.fixture
def config(tmp_path: Path) -> PerformanceConfig:
    return PerformanceConfig(
        cache_dir=str(tmp_path / "cache"),
        cache_shards=1,
        semantic_cache=True,
        semantic_threshold=0.8,
        version_check_interval=0.0,
    )


@pytest.fixture
def manager(config: PerformanceConfig) -> CacheManager:
    return CacheManager(config)


def _semantic(sim: Simulator, config: PerformanceConfig, cache: CacheManager) -> SemanticCache:
    inner = pooled_openai_embeddings(
        base_url=sim.base_url, model="text-embedding-3-small", api_key="sk-test"
    )
    embeddings = PerfEmbeddings(inner, config=config)
    return SemanticCache(embeddings, config=config, cache=cache, model="sim-3-small")


def _llm(
    sim: Simulator,
    config: PerformanceConfig,
    cache: CacheManager,
    tracker: PerformanceTracker | None = None,
    **options: Any,
) -> PerfChatModel:
    return PerfChatModel(
        _chat(sim, **options),
        config,
        cache_manager=cache,
        semantic=_semantic(sim, config, cache),
        tracker=tracker or PerformanceTracker(),
    )


def test_paraphrase_is_a_semantic_hit_with_its_metadata(
    simulator: Simulator, config: PerformanceConfig, manager: CacheManager
) -> None:
    tracker = PerformanceTracker()
    llm = _llm(simulator, config, manager, tracker)
    first = llm.invoke(ASKED)
    assert first.response_metadata.get("cache_hit") is None
    second = llm.invoke(PARAPHRASE)
    meta = second.response_metadata
    assert meta["cache_hit"] is True and meta["cache_hit_kind"] == "semantic"
    assert meta["cache_matched_prompt"] == ASKED
    assert 0.8 <= meta["cache_similarity"] <= 1.0
    assert second.content == first.content
    assert chat_requests(simulator) == 1
    # exact first: the same prompt again is an exact hit, never a semantic one
    third = llm.invoke(ASKED)
    assert third.response_metadata["cache_hit_kind"] == "exact"
    stats = tracker.get_metrics("llm.chat")
    assert stats["counters"]["cache.semantic_hits"] == 1  # counted apart from exact hits
    assert stats["counters"]["cache.hits"] == 1
    assert stats["cache_hits"] == 2  # both are hits of the operation


def test_off_by_default_and_per_call_opt_in(
    simulator: Simulator, tmp_path: Path, manager: CacheManager
) -> None:
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    semantic = _semantic(
        simulator, PerformanceConfig(cache_dir=config.cache_dir, semantic_threshold=0.8), manager
    )
    llm = PerfChatModel(_chat(simulator), config, cache_manager=manager, semantic=semantic)
    llm.invoke(ASKED)
    assert llm.invoke(PARAPHRASE).response_metadata.get("cache_hit") is None  # off: a miss
    assert chat_requests(simulator) == 2
    # Answers of calls that did not opt in are not indexed (no embedding is computed).
    with cache_control(semantic=True):
        assert llm.invoke(ASKED).response_metadata["cache_hit_kind"] == "exact"
        llm.invoke("How can I change my billing address?")
    assert chat_requests(simulator) == 3
    meta = {"rag_perf": {"semantic": True}}
    hit = llm.invoke("how can I change my billing address, please?", config={"metadata": meta})
    assert hit.response_metadata["cache_hit_kind"] == "semantic"
    plain = llm.invoke("change my billing address: how can I?")  # not opted in: a miss
    assert plain.response_metadata.get("cache_hit") is None
    assert chat_requests(simulator) == 4


@pytest.mark.parametrize(
    ("near_miss", "rule"),
    [
        ("How do I not reset my account password?", "negation"),
        ("How do I reset my 2 account passwords?", "numbers"),
        ("How do I reset my account password on Monday?", "dates"),
        ("How do I reset my Google account password?", "entities"),
    ],
)
def test_guards_refuse_near_misses(
    simulator: Simulator,
    config: PerformanceConfig,
    manager: CacheManager,
    near_miss: str,
    rule: str,
) -> None:
    llm = _llm(simulator, config, manager)
    llm.invoke(ASKED)
    answer = llm.invoke(near_miss)
    assert answer.response_metadata.get("cache_hit") is None, rule
    assert chat_requests(simulator) == 2


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ({"model": "gpt-4o-mini"}, {"model": "gpt-4o"}),
        ({"temperature": 0.0}, {"temperature": 0.0, "max_tokens": 50}),
        ({"temperature": 0.0, "seed": 1}, {"temperature": 0.0, "seed": 2}),
        ({"temperature": 0.0, "seed": 1}, {"temperature": 0.5, "seed": 1}),
    ],
)
def test_partitions_never_cross_models_or_parameters(
    simulator: Simulator,
    config: PerformanceConfig,
    manager: CacheManager,
    first: dict[str, Any],
    second: dict[str, Any],
) -> None:
    _llm(simulator, config, manager, **first).invoke(ASKED)
    answer = _llm(simulator, config, manager, **second).invoke(PARAPHRASE)
    assert answer.response_metadata.get("cache_hit") is None
    assert chat_requests(simulator) == 2


def test_partitions_never_cross_system_prompts_tools_or_tenants(
    simulator: Simulator, config: PerformanceConfig, manager: CacheManager
) -> None:
    llm = _llm(simulator, config, manager)
    llm.invoke([SystemMessage("Answer in French."), HumanMessage(ASKED)])
    other = llm.invoke([SystemMessage("Answer in German."), HumanMessage(PARAPHRASE)])
    assert other.response_metadata.get("cache_hit") is None

    def lookup(term: str) -> str:
        """Look a term up."""
        return term

    llm.bind_tools([lookup]).invoke(ASKED)
    assert llm.invoke(PARAPHRASE).response_metadata.get("cache_hit") is None  # no tools here
    assert chat_requests(simulator) == 4
    with cache_scope("tenant-a"):
        llm.invoke("How do I rename my account?")
    with cache_scope("tenant-b"):
        leaked = llm.invoke("How do I rename my account?")  # exact text, other tenant
        assert leaked.response_metadata.get("cache_hit") is None
    with cache_scope("tenant-a"):
        own = llm.invoke("how do I rename my account, please?")
        assert own.response_metadata["cache_hit_kind"] == "semantic"
    meta: RunnableConfig = {"metadata": {"rag_perf": {"cache_scope": "tenant-b"}}}
    assert (
        llm.invoke("How do I rename my account?", config=meta).response_metadata["cache_hit_kind"]
        == "exact"
    )  # tenant-b's own entry, through metadata
    assert chat_requests(simulator) == 6


def test_sampled_requests_are_not_served_semantically(
    simulator: Simulator, config: PerformanceConfig, manager: CacheManager
) -> None:
    llm = _llm(simulator, config, manager, temperature=0.7)
    llm.invoke(ASKED)
    assert llm.invoke(PARAPHRASE).response_metadata.get("cache_hit") is None
    assert chat_requests(simulator) == 2


def test_async_twin_and_the_prompt_is_embedded_once_per_miss(
    simulator: Simulator, config: PerformanceConfig, manager: CacheManager
) -> None:
    llm = _llm(simulator, config, manager)

    async def run() -> tuple[Any, Any]:
        return await llm.ainvoke(ASKED), await llm.ainvoke(PARAPHRASE)

    first, second = asyncio.run(run())
    assert second.response_metadata["cache_hit_kind"] == "semantic"
    assert second.content == first.content
    embedding_calls = simulator.stats()["requests_by_endpoint"]
    # one embedding request per distinct prompt: the miss's vector was reused to store
    assert sum(n for p, n in embedding_calls.items() if p.endswith("/embeddings")) == 2


def test_off_by_default_the_wrapper_answers_as_the_inner_model(
    simulator: Simulator, tmp_path: Path, manager: CacheManager
) -> None:
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    llm = PerfChatModel(
        _chat(simulator),
        config,
        cache_manager=manager,
        semantic=_semantic(simulator, config, manager),
    )
    inner = _chat(simulator)
    for text in (ASKED, PARAPHRASE):
        assert llm.invoke(text).content == inner.invoke(text).content


def test_scoped_and_unscoped_calls_never_share_exact_entries_on_any_path(
    simulator: Simulator, tmp_path: Path, manager: CacheManager
) -> None:
    """cache_scope joins the exact key on invoke, ainvoke, stream, astream and batch alike."""
    config = PerformanceConfig(cache_dir=str(tmp_path / "cache"), cache_shards=1)
    llm = PerfChatModel(_chat(simulator), config, cache_manager=manager)
    scoped: RunnableConfig = {"metadata": {"rag_perf": {"cache_scope": "tenant-a"}}}

    def hit(message: Any) -> Any:
        return message.response_metadata.get("cache_hit")

    def streamed(chunks: list[Any]) -> Any:
        return next((c.response_metadata.get("cache_hit") for c in chunks), None)

    async def run_async(text: str, config: RunnableConfig | None = None) -> tuple[Any, Any]:
        answer = await llm.ainvoke(text, config=config)
        chunks = [c async for c in llm.astream(text + " (stream)", config=config)]
        return hit(answer), streamed(chunks)

    for text in ("sync one", "async one"):
        # unscoped first, then the same text scoped: a miss each time, then each its own hit
        if text == "sync one":
            assert hit(llm.invoke(text)) is None
            assert streamed(list(llm.stream(text + " (stream)"))) is None
            with cache_scope("tenant-a"):
                assert hit(llm.invoke(text)) is None
                assert streamed(list(llm.stream(text + " (stream)"))) is None
                assert hit(llm.invoke(text)) is True
            assert [hit(m) for m in llm.batch([text, text], config=scoped)] == [True, True]
            assert hit(llm.invoke(text)) is True  # the unscoped entry is still its own
        else:
            assert asyncio.run(run_async(text)) == (None, None)
            assert asyncio.run(run_async(text, scoped)) == (None, None)
            assert asyncio.run(run_async(text, scoped)) == (True, True)
            assert asyncio.run(run_async(text)) == (True, True)
    assert [hit(m) for m in llm.batch(["batch one"], config=scoped)] == [None]
    assert [hit(m) for m in llm.batch(["batch one"])] == [None]
    # a stream's metadata (LangChain hands _stream no run manager) is applied as invoke's
    assert streamed(list(llm.stream("meta one"))) is None
    assert streamed(list(llm.stream("meta one", config=scoped))) is None
    assert streamed(list(llm.stream("meta one", config=scoped))) is True
    bypass: RunnableConfig = {"metadata": {"rag_perf": {"cache": "bypass"}}}
    assert streamed(list(llm.stream("meta one", config=bypass))) is None
    assert chat_requests(simulator) == 2 + 2 + 4 + 2 + 3


def test_a_bare_embedder_of_another_model_never_shares_a_partition(
    simulator: Simulator, config: PerformanceConfig, manager: CacheManager
) -> None:
    """Without our embedding service, the embedder's model still names the partition."""
    from langchain_openai import OpenAIEmbeddings
    from pydantic import SecretStr

    from rag_perf_plugins.services.llm import LLMRequest

    def bare(model: str) -> SemanticCache:
        inner = OpenAIEmbeddings(
            openai_api_base=simulator.base_url, openai_api_key=SecretStr("sk-test"), model=model
        )
        return SemanticCache(inner, config=config, cache=manager)

    # ada-002 and 3-small both give 1536 dimensions: only the name keeps them apart
    ada, small = bare("text-embedding-ada-002"), bare("text-embedding-3-small")
    assert ada.embedder() != small.embedder()
    assert ada.embedder() == bare("text-embedding-ada-002").embedder()
    request = LLMRequest(model="m", messages="q", params={"temperature": 0.0})
    p1, p2 = ada.probe(request, None), small.probe(request, None)
    assert p1 is not None and p2 is not None and p1.partition != p2.partition


def test_a_misspelt_index_argument_names_its_close_match() -> None:
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_core.vectorstores import InMemoryVectorStore
    from rag_perf_plugins.langchain import VectorStoreSemanticIndex

    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=8))
    with pytest.raises(TypeError, match=r"'fetches'.*did you mean 'fetch'"):
        VectorStoreSemanticIndex(store, fetches=4)  # type: ignore[call-arg]
