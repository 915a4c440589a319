"""LangChain chat model peers: PerfChatModel's hit paths, stream replay, and abatch vs our engine.

Run with ``rag-perf bench --only langchain``. LangChain is imported inside each function, so
loading this module never imports a framework.

- ``invoke`` cache hit: a chat model with LangChain's ``InMemoryCache`` vs ``PerfChatModel``
  (memory tier in front of the disk tier); the inner model is LangChain's in-process
  ``GenericFakeChatModel``, so the figures are the caches' own cost per call.
- ``stream`` of a cached answer: LangChain's ``stream()`` never reads its LLM cache, so with
  ``InMemoryCache`` every stream is a provider call; ``PerfChatModel`` replays the recorded
  chunks. Both sides are timed per complete stream, and the provider calls are counted.
- Time to first token of a stream, cold (the simulator's latency) vs replayed from the
  cache, with the real ``ChatOpenAI`` over HTTP.
- The same RAG chain (retriever | prompt | chat model | parser) run with LangChain's
  ``abatch(max_concurrency=N)`` and through our ``AsyncRAGEngine`` with
  ``process_queries_concurrently(max_concurrent=N)``: cold (no caches, every query reaches
  the simulator) and warm (a second run of the same questions: LLM/embedding caches for the
  chain, the engine's query cache for the engine).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

from ...config import PerformanceConfig
from ...tracking import NULL_TRACKER
from ..registry import BenchContext, Result, Target, benchmark

ANSWER = (
    "Retrieval augmented generation grounds the answer in passages retrieved from an index "
    "of your own documents, so the model cites what it was given."
)


def _interleaved_us(
    contenders: dict[str, Callable[[int], object]], n: int, rounds: int
) -> dict[str, float]:
    """Best per-call µs of each contender, rounds interleaved (a noisy, shared machine)."""
    best = {name: float("inf") for name in contenders}
    for r in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            for i in range(n):
                fn(r * n + i)
            best[name] = min(best[name], (time.perf_counter() - start) / n * 1e6)
    return best


def _fake_model(**fields: Any) -> Any:
    from langchain_core.language_models import GenericFakeChatModel
    from langchain_core.messages import AIMessage

    class RepeatingFake(GenericFakeChatModel):
        """Answers ANSWER forever (GenericFakeChatModel streams it word by word)."""

        calls: int = 0

        def _generate(self, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            self.messages = iter([AIMessage(ANSWER)])
            return super()._generate(*args, **kwargs)

        def _stream(self, *args: Any, **kwargs: Any) -> Any:
            # GenericFakeChatModel._stream calls _generate, which counts the call.
            self.messages = iter([AIMessage(ANSWER)])
            return super()._stream(*args, **kwargs)

    return RepeatingFake(messages=iter([]), **fields)


def _perf(inner: Any, ctx: BenchContext, name: str) -> Any:
    from rag_perf_plugins.langchain import PerfChatModel

    from ...cache import CacheManager
    from ...tracking import PerformanceTracker

    config = PerformanceConfig(cache_dir=str(ctx.workdir / name), enable_metrics=False)
    return PerfChatModel(
        inner, config, cache_manager=CacheManager(config), tracker=PerformanceTracker()
    )


@benchmark("langchain", "PerfChatModel invoke and stream hit paths vs InMemoryCache")
def chat_hit_paths(ctx: BenchContext) -> Iterator[Result]:
    """Per-call µs of a cached ``invoke`` and of a cached ``stream`` consumed to the end."""
    from langchain_core.caches import InMemoryCache

    n = ctx.scale(2000, quick=300)
    prompt = "What is retrieval augmented generation?"

    theirs = _fake_model(cache=InMemoryCache())
    theirs.invoke(prompt)  # the miss that fills the cache
    ours = _perf(_fake_model(), ctx, "perf-chat-invoke")
    ours.invoke(prompt)
    times = _interleaved_us(
        {"memory": lambda _i: theirs.invoke(prompt), "ours": lambda _i: ours.invoke(prompt)},
        max(1, n // 5),
        rounds=10,
    )
    yield Result.compare(
        "lc_chat_invoke_hit_us_vs_inmemory",
        times["ours"],
        "us",
        baseline=("InMemoryCache", times["memory"]),
        better="lower",
        target=Target.ratio_at_least(1.0),
        notes="PerfChatModel computes a complete key (messages, every parameter) per call; "
        "InMemoryCache keys on LangChain's prompt and llm strings; ours also persists. No "
        "callback handler on either: ours answers the hit before LangChain's run machinery",
    )
    # The same with a callback handler attached (a traced application): both take
    # LangChain's whole path, with its run events.
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.runnables import RunnableConfig

    listened: RunnableConfig = {"callbacks": [BaseCallbackHandler()]}
    loud = _interleaved_us(
        {
            "memory": lambda _i: theirs.invoke(prompt, config=listened),
            "ours": lambda _i: ours.invoke(prompt, config=listened),
        },
        max(1, n // 5),
        rounds=10,
    )
    yield Result.compare(
        "lc_chat_invoke_hit_us_vs_inmemory_with_callbacks",
        loud["ours"],
        "us",
        baseline=("InMemoryCache", loud["memory"]),
        better="lower",
        notes="one (no-op) callback handler on both calls: run events fire on both paths",
    )

    stream_theirs = _fake_model(cache=InMemoryCache())
    stream_ours = _perf(_fake_model(), ctx, "perf-chat-stream")
    list(stream_theirs.stream(prompt))
    list(stream_ours.stream(prompt))
    calls_before = (stream_theirs.calls, stream_ours.inner.calls)
    m = max(1, ctx.scale(400, quick=60) // 5)
    stimes = _interleaved_us(
        {
            "memory": lambda _i: list(stream_theirs.stream(prompt)),
            "ours": lambda _i: list(stream_ours.stream(prompt)),
        },
        m,
        rounds=5,
    )
    chunks = len(list(stream_ours.stream(prompt)))
    theirs_calls = stream_theirs.calls - calls_before[0]
    ours_calls = stream_ours.inner.calls - calls_before[1]
    yield Result.compare(
        "lc_chat_stream_hit_us_vs_inmemory",
        stimes["ours"],
        "us",
        baseline=("InMemoryCache (stream not cached)", stimes["memory"]),
        better="lower",
        notes=f"{chunks} chunks per answer; provider calls for {5 * m} repeated streams: "
        f"InMemoryCache {theirs_calls}, ours {ours_calls} (the inner is an in-process fake, "
        "so the baseline's live stream costs no network time here)",
        chunks=chunks,
        provider_calls_theirs=theirs_calls,
        provider_calls_ours=ours_calls,
    )


@benchmark("langchain", "PerfChatModel time to first token: cold stream vs replayed")
def chat_ttft(ctx: BenchContext) -> Iterator[Result]:
    """TTFT of ``stream()`` against the simulator (real ChatOpenAI), cold vs from the cache."""
    from rag_perf_plugins.langchain import pooled_chat_openai

    from ...simulator import Simulator

    n = ctx.scale(30, quick=8)
    latency_ms = 150.0
    with Simulator(latency_ms=latency_ms, chunk_latency_ms=2.0).in_thread() as sim:
        inner = pooled_chat_openai(
            model="gpt-4o-mini", base_url=sim.base_url, api_key="sk-bench", temperature=0
        )
        llm = _perf(inner, ctx, "perf-chat-ttft")

        def ttft(prompt: str) -> float:
            start = time.perf_counter()
            stream = llm.stream(prompt)
            next(iter(stream))
            first = time.perf_counter() - start
            for _ in stream:
                pass
            return first

        cold = sorted(ttft(f"question {i}") for i in range(n))
        warm = sorted(ttft(f"question {i}") for i in range(n))
        requests = sim.stats()["requests_by_endpoint"]
    yield Result.compare(
        "lc_chat_ttft_replayed_ms",
        warm[len(warm) // 2] * 1e3,
        "ms",
        baseline=("cold stream (simulator latency 150 ms)", cold[len(cold) // 2] * 1e3),
        better="lower",
        notes=f"median of {n} prompts each; simulator requests: {requests}",
    )


@benchmark("langchain", "RAG chain: abatch(max_concurrency) vs AsyncRAGEngine")
def chain_abatch_vs_engine(ctx: BenchContext) -> Iterator[Result]:
    """Queries per second of one RAG chain, LangChain's abatch vs our engine, cold and warm."""
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_core.vectorstores import InMemoryVectorStore

    from rag_perf_plugins.langchain import (
        PerfChatModel,
        PerfEmbeddings,
        pooled_chat_openai,
        pooled_openai_embeddings,
    )

    from ...cache import CacheManager
    from ...engine import AsyncRAGEngine, process_queries_concurrently
    from ...tracking import PerformanceTracker
    from ..suites.concurrency import simulator_process

    concurrency = 16
    q = ctx.scale(160, quick=48)
    questions = [f"How does feature {i} of the cache work?" for i in range(q)]
    texts = [f"Feature {i}: the cache keeps answer {i} on disk with a TTL." for i in range(64)]
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context.\n\n{context}"), ("user", "{question}")]
    )

    def fmt(docs: list[Any]) -> str:
        return "\n\n".join(d.page_content for d in docs)

    # The simulator runs in its own process, off this process's GIL (see suites.concurrency).
    with simulator_process(latency_ms=40.0, embedding_dim=256) as base_url:
        config = PerformanceConfig(
            cache_dir=str(ctx.workdir / "perf-chain"),
            enable_metrics=False,
            max_concurrent_requests=64,
        )
        cache = CacheManager(config)
        tracker = PerformanceTracker()

        def components(wrapped: bool) -> tuple[Any, Any]:
            emb: Any = pooled_openai_embeddings(
                model="text-embedding-3-small", base_url=base_url, api_key="sk-bench"
            )
            llm: Any = pooled_chat_openai(
                model="gpt-4o-mini", base_url=base_url, api_key="sk-bench", temperature=0
            )
            if wrapped:
                from ...services.embeddings import CacheEmbeddingStore

                emb = PerfEmbeddings(emb, config, store=CacheEmbeddingStore(cache), tracker=tracker)
                llm = PerfChatModel(llm, config, cache_manager=cache, tracker=tracker)
            store = InMemoryVectorStore(emb)
            store.add_texts(texts)
            return store.as_retriever(search_kwargs={"k": 2}), llm

        def chain_of(retriever: Any, llm: Any) -> Any:
            return (
                {"context": retriever | fmt, "question": RunnablePassthrough()}
                | prompt
                | llm
                | StrOutputParser()
            )

        def engine_of(retriever: Any, llm: Any, *, cached: bool) -> AsyncRAGEngine:
            generate = prompt | llm | StrOutputParser()

            async def aretrieve(query: str, top_k: int) -> list[str]:
                return [d.page_content for d in await retriever.ainvoke(query)]

            async def agenerate(query: str, passages: Any) -> str:
                answer: str = await generate.ainvoke(
                    {"context": "\n\n".join(passages), "question": query}
                )
                return answer

            return AsyncRAGEngine(
                config,
                retriever=aretrieve,
                generator=agenerate,
                cache=cache if cached else False,
                retry=False,
                tracker=NULL_TRACKER,
                engine_id="bench-chain",
            )

        async def run_abatch(chain: Any) -> float:
            start = time.perf_counter()
            answers = await chain.abatch(questions, config={"max_concurrency": concurrency})
            assert len(answers) == len(questions)
            return len(questions) / (time.perf_counter() - start)

        async def run_engine(engine: AsyncRAGEngine) -> float:
            start = time.perf_counter()
            results = await process_queries_concurrently(
                engine, questions, max_concurrent=concurrency
            )
            failed = [r for r in results if not getattr(r, "ok", True)]
            if failed:
                raise RuntimeError(f"{len(failed)} engine queries failed: {failed[0]}")
            return len(questions) / (time.perf_counter() - start)

        async def measure() -> dict[str, float]:
            plain_retriever, plain_llm = components(wrapped=False)
            out = {
                "abatch_cold": await run_abatch(chain_of(plain_retriever, plain_llm)),
                "engine_cold": await run_engine(
                    engine_of(plain_retriever, plain_llm, cached=False)
                ),
            }
            retriever, llm = components(wrapped=True)
            chain = chain_of(retriever, llm)
            await run_abatch(chain)  # fills the LLM and embedding caches
            out["abatch_warm"] = await run_abatch(chain)
            engine = engine_of(plain_retriever, plain_llm, cached=True)
            await run_engine(engine)  # fills the engine's query cache
            out["engine_warm"] = await run_engine(engine)
            await engine.aclose()
            return out

        qps = asyncio.run(measure())
        cache.close()
    yield Result.compare(
        "lc_chain_cold_qps_engine_vs_abatch",
        qps["engine_cold"],
        "queries/s",
        baseline=(f"abatch(max_concurrency={concurrency})", qps["abatch_cold"]),
        better="higher",
        notes=f"{q} distinct questions, simulator (own process) latency 40 ms, no caches on "
        "either side; same retriever, prompt, model and parser objects",
    )
    yield Result.compare(
        "lc_chain_warm_qps_engine_vs_abatch",
        qps["engine_warm"],
        "queries/s",
        baseline=(f"abatch(max_concurrency={concurrency}) + Perf wrappers", qps["abatch_warm"]),
        better="higher",
        notes="second run of the same questions: the chain hits PerfEmbeddings and "
        "PerfChatModel caches (retrieval still runs); the engine hits its query cache",
    )
