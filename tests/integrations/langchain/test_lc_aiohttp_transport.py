"""LangChain ``ChatOpenAI`` on the shared async client, carried by httpx or by aiohttp.

The same answers and the same streamed chunks from the simulator on both backends.
"""

from __future__ import annotations

import asyncio

from langchain_openai import ChatOpenAI

from rag_perf_plugins.config import HttpTransport, PerformanceConfig
from rag_perf_plugins.pool.http import get_async_http_client
from rag_perf_plugins.simulator import Simulator


def test_chatopenai_answers_and_streams_the_same_on_both_backends(simulator: Simulator) -> None:
    def model(backend: HttpTransport) -> ChatOpenAI:
        client = get_async_http_client(
            simulator.base_url, config=PerformanceConfig(http_transport=backend)
        )
        return ChatOpenAI(
            model="gpt-4o-mini",
            base_url=simulator.base_url,
            api_key="sk-test",
            http_async_client=client,
            max_retries=0,
            temperature=0,
        )

    async def run(backend: HttpTransport) -> tuple[str, list[str]]:
        chat = model(backend)
        answer = await chat.ainvoke("What does a connection pool save?")
        chunks = [str(c.content) async for c in chat.astream("Stream three words.")]
        return str(answer.content), chunks

    httpx_answer, httpx_chunks = asyncio.run(run("httpx"))
    aiohttp_answer, aiohttp_chunks = asyncio.run(run("aiohttp"))
    assert aiohttp_answer == httpx_answer and aiohttp_answer
    assert aiohttp_chunks == httpx_chunks and len(aiohttp_chunks) > 2
