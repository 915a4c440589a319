"""async_enabled: false runs one query at a time and async calls on the blocking path."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rag_perf_plugins import (
    AsyncRAGEngine,
    EmbeddingService,
    LLMRequest,
    LLMService,
    PerformanceConfig,
    RAGEngine,
    process_queries_concurrently,
)
from rag_perf_plugins.services import Usage

OFF: dict[str, Any] = {"async_enabled": False, "enable_metrics": False}


class Pipeline:
    """Async retriever and generator that count how many queries run at once."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0

    async def retrieve(self, query: str, top_k: int) -> list[str]:
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        self.active -= 1
        return [f"<{query}>"]

    async def generate(self, query: str, passages: Sequence[Any]) -> str:
        return f"{query}!"


async def _engine_peak(tmp_path: Path, **config: Any) -> tuple[int, int]:
    pipe = Pipeline()
    cfg = PerformanceConfig(cache_dir=str(tmp_path / "c"), enable_caching=False, **config)
    engine = AsyncRAGEngine(cfg, retriever=pipe.retrieve, generator=pipe.generate)
    results = await asyncio.gather(*(engine.query(f"q{i}") for i in range(8)))
    assert [r.answer for r in results] == [f"q{i}!" for i in range(8)]
    with_helper = Pipeline()
    engine2 = AsyncRAGEngine(cfg, retriever=with_helper.retrieve, generator=with_helper.generate)
    await process_queries_concurrently(engine2, [f"p{i}" for i in range(8)], max_concurrent=8)
    return pipe.peak, with_helper.peak


async def test_the_async_engine_runs_one_query_at_a_time(tmp_path: Path) -> None:
    assert await _engine_peak(tmp_path, enable_metrics=False) == (8, 8)
    assert await _engine_peak(tmp_path, **OFF) == (1, 1)


def test_the_blocking_engine_runs_one_query_at_a_time(tmp_path: Path) -> None:
    active = peak = 0
    lock = threading.Lock()
    barrier = threading.Barrier(4, timeout=0.2)

    def retrieve(query: str, top_k: int) -> list[str]:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait()  # all four meet here only when they run together
        with lock:
            active -= 1
        return ["p"]

    cfg = PerformanceConfig(cache_dir=str(tmp_path / "c"), enable_caching=False, **OFF)
    engine = RAGEngine(cfg, retriever=retrieve, generator=lambda q, p: "a")
    threads = [threading.Thread(target=engine.query, args=(f"q{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 1


async def test_embedding_service_runs_the_blocking_path_in_a_worker(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    sync_threads: list[int] = []
    async_calls: list[list[str]] = []

    def embed(texts: list[str]) -> list[list[float]]:
        sync_threads.append(threading.get_ident())
        return [[float(len(t))] for t in texts]

    async def aembed(texts: list[str]) -> list[list[float]]:
        async_calls.append(texts)
        return [[float(len(t))] for t in texts]

    for enabled, expect_async in ((True, True), (False, False)):
        sync_threads.clear()
        async_calls.clear()
        config = PerformanceConfig(
            cache_dir=str(tmp_path / "c"), async_enabled=enabled, enable_metrics=False
        )
        service = EmbeddingService(
            embed, aembed_many=aembed, provider="p", model=f"m{enabled}", symmetric=True,
            config=config, batching=False,
        )  # fmt: skip
        assert await service.aembed_documents(["ab", "abc"]) == [[2.0], [3.0]]
        assert await service.aembed_query("abcd") == [4.0]
        assert bool(async_calls) is expect_async
        assert bool(sync_threads) is not expect_async
        assert loop_thread not in sync_threads


class Codec:
    def encode(self, value: str) -> Any:
        return value

    def decode(self, data: Any) -> str:
        return str(data)

    def usage(self, value: str) -> Usage | None:
        return None


class ChunkCodec(Codec):
    def usage(self, chunks: Sequence[str]) -> Usage | None:
        return None


async def test_llm_service_uses_the_blocking_twin_in_a_worker(tmp_path: Path) -> None:
    loop_thread = threading.get_ident()
    used: list[tuple[str, int]] = []

    async def call() -> str:
        used.append(("async", threading.get_ident()))
        return "answer"

    def blocking() -> str:
        used.append(("blocking", threading.get_ident()))
        return "answer"

    def blocking_stream() -> Any:
        used.append(("blocking stream", threading.get_ident()))
        yield "a"
        yield "b"

    async def open_stream() -> Any:
        used.append(("async stream", threading.get_ident()))
        yield "a"
        yield "b"

    request = LLMRequest(model="m", messages=[{"role": "user", "content": "hi"}])
    service = LLMService(config=PerformanceConfig(enable_caching=False, **OFF))
    assert await service.agenerate(request, call, Codec(), blocking=blocking) == "answer"
    chunks = [
        c
        async for c in service.astream(request, open_stream, ChunkCodec(), blocking=blocking_stream)
    ]
    assert chunks == ["a", "b"]
    assert [kind for kind, _ in used] == ["blocking", "blocking stream"]
    assert all(thread != loop_thread for _, thread in used)
    used.clear()
    on = LLMService(config=PerformanceConfig(enable_caching=False, enable_metrics=False))
    await on.agenerate(request, call, Codec(), blocking=blocking)
    assert [kind for kind, _ in used] == ["async"]
