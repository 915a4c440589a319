"""Issue 13 acceptance: real LlamaIndex pipelines against the simulator (thread mode).

LlamaIndex's ``from_documents`` and ``IngestionPipeline.run`` are sync, so the simulator
runs on its own loop in a background thread; counts are read at the simulator.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import DocstoreStrategy, IngestionCache, IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.storage.docstore import SimpleDocumentStore
from llama_index.embeddings.openai import OpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from llama_index.llms.openai import OpenAI
from rag_perf_plugins.llama_index import PerfEmbedding, configure_settings, restore_settings

from rag_perf_plugins.config import PerformanceConfig
from rag_perf_plugins.simulator import Simulator

TOPICS = ["solar power", "river deltas", "bread baking", "chess openings", "tide pools"]
QUESTIONS = ["How does solar power work?", "What lives in tide pools?", "Why bake bread?"]


def embedded_texts(sim: Simulator) -> int:
    return int(sim.stats()["embedding_inputs_total"])


def embedding_requests(sim: Simulator) -> int:
    return int(sim.stats()["requests_by_endpoint"].get("/v1/embeddings", 0))


def corpus(n: int) -> list[Document]:
    """``n`` documents of two sentences each, with stable ids (as a loader would give)."""
    docs = []
    for i in range(n):
        topic = TOPICS[i % len(TOPICS)]
        text = (
            f"Document {i} is about {topic}. It explains {topic} in plain words for reader {i}. "
            f"A second paragraph adds detail {i} on {topic} and its history."
        )
        docs.append(Document(text=text, id_=f"doc-{i}"))
    return docs


@pytest.fixture
def models(simulator: Simulator) -> Iterator[Callable[..., Any]]:
    """Builds OpenAI / OpenAIEmbedding pointed at the simulator; closes their SDK clients."""
    made: list[Any] = []

    def make(kind: str, **kw: Any) -> Any:
        cls = OpenAI if kind == "llm" else OpenAIEmbedding
        defaults: dict[str, Any] = (
            {"model": "gpt-4o-mini", "temperature": 0.0}
            if kind == "llm"
            else {"model": "text-embedding-3-small"}
        )
        model = cls(api_base=simulator.base_url, api_key="sk-test", max_retries=0, **defaults, **kw)
        made.append(model)
        return model

    yield make
    for model in made:
        if model._client is not None:
            model._client.close()


@pytest.fixture(autouse=True)
def _owned_event_loop() -> Iterator[None]:
    # LlamaIndex's sync query path calls asyncio.get_event_loop() (llama_index.core
    # async_utils.asyncio_run, for token estimates), which on Python 3.11 makes a loop it
    # never closes. Give it one we close, so no ResourceWarning reaches later tests.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        yield
    finally:
        asyncio.set_event_loop(None)
        loop.close()


@pytest.fixture
def clean_settings() -> Iterator[None]:
    saved = (Settings._llm, Settings._embed_model)
    yield
    restore_settings()
    Settings._llm, Settings._embed_model = saved


def _answers() -> list[str]:
    index = VectorStoreIndex.from_documents(corpus(30))
    engine = index.as_query_engine(similarity_top_k=2)
    return [str(engine.query(q)) for q in QUESTIONS]


@pytest.mark.usefixtures("clean_settings")
def test_query_engine_answers_match_and_warm_rebuild_makes_no_embedding_request(
    simulator: Simulator, models: Callable[..., Any], cache_dir: Path
) -> None:
    Settings.llm = models("llm")
    Settings.embed_model = models("embedding")
    plain = _answers()
    assert embedding_requests(simulator) > 0

    configure_settings(PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False))
    assert isinstance(Settings.embed_model, PerfEmbedding)
    cold = _answers()
    assert cold == plain
    assert all(answer.strip() for answer in cold)

    simulator.reset_stats()
    warm = _answers()
    assert warm == plain
    assert embedding_requests(simulator) == 0  # index build and the queries: all cached


def _run(pipeline: IngestionPipeline, docs: list[Document]) -> int:
    return len(pipeline.run(documents=docs))


def test_reingest_after_editing_one_of_500_documents_embeds_only_its_chunks(
    simulator: Simulator, models: Callable[..., Any], cache_dir: Path
) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False, batch_size=100)
    splitter = SentenceSplitter(chunk_size=32, chunk_overlap=0)
    docs = corpus(500)

    def ours() -> IngestionPipeline:
        # A fresh pipeline each run, no docstore, no IngestionCache: only our per-text cache.
        wrapped = PerfEmbedding(models("embedding", dimensions=64), config)
        return IngestionPipeline(transformations=[splitter, wrapped])

    chunks = _run(ours(), docs)
    assert chunks > 500  # several chunks per document
    assert embedded_texts(simulator) == chunks
    edited = list(docs)
    edited[217] = Document(text=docs[217].text + " An edit adds one more sentence.", id_="doc-217")
    edited_chunks = len(splitter.get_nodes_from_documents([edited[217]]))

    simulator.reset_stats()
    assert _run(ours(), edited) == chunks - len(splitter([docs[217]])) + edited_chunks
    # Only the edited document's chunks that changed went out (at most all of its chunks).
    assert 1 <= embedded_texts(simulator) <= edited_chunks

    # LlamaIndex's own IngestionCache, same edit: the whole node list is one cache key,
    # so every chunk is embedded again.
    cache = IngestionCache()
    baseline = IngestionPipeline(
        transformations=[splitter, models("embedding", dimensions=64)], cache=cache
    )
    _run(baseline, docs)
    simulator.reset_stats()
    _run(baseline, edited)
    assert embedded_texts(simulator) == chunks - len(splitter([docs[217]])) + edited_chunks


def test_reingest_with_a_docstore_also_embeds_only_the_edit(
    simulator: Simulator, models: Callable[..., Any], cache_dir: Path
) -> None:
    config = PerformanceConfig(cache_dir=str(cache_dir), enable_metrics=False)
    splitter = SentenceSplitter(chunk_size=32, chunk_overlap=0)
    docs = corpus(50)
    docstore = SimpleDocumentStore()
    wrapped = PerfEmbedding(models("embedding", dimensions=64), config)
    pipeline = IngestionPipeline(
        transformations=[splitter, wrapped],
        docstore=docstore,
        docstore_strategy=DocstoreStrategy.DUPLICATES_ONLY,  # no vector store attached
    )
    _run(pipeline, docs)
    edited = list(docs)
    edited[7] = Document(text=docs[7].text + " Edited.", id_="doc-7")
    simulator.reset_stats()
    _run(pipeline, edited)
    assert 1 <= embedded_texts(simulator) <= len(splitter([edited[7]]))
