"""Build LangChain's OpenAI classes on the registry's pooled HTTP clients, retries off.

Example::

    llm = pooled_chat_openai(model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    embeddings = pooled_openai_embeddings(model="text-embedding-3-small", base_url=url)

Both share one connection pool per origin (and per event loop, for async calls) with every
other client the registry hands out, so 50 concurrent tasks open at most
``connection_pool_size`` connections, and ``asyncio.run()`` twice never meets a client bound
to a closed loop. SDK retries are off (``max_retries=0``): our retry policy is the single
retry owner; SDK retries stacked under it multiply 429 storms.

``pooled_chat_openai`` also sets ``stream_usage=True``: ``ChatOpenAI`` turns it on by itself
only for api.openai.com with its own clients, so with our clients (or any ``base_url``) a
streamed answer would carry no token usage and the tracker would count no tokens for it.
With it on, each stream request sends ``stream_options={"include_usage": true}`` and the
answer ends with one chunk holding ``usage_metadata``. Pass ``stream_usage=False`` for an
endpoint that rejects ``stream_options``.

``pooled_openai_embeddings`` also sets ``check_embedding_ctx_length=False``: with it on,
``OpenAIEmbeddings`` tokenizes with tiktoken, which downloads its encoding file on first use
and fails offline. The cost: texts longer than the model's context are not split
client-side; the provider rejects them.

Not done here: wrapping the result (pass it to ``PerfEmbeddings`` / the chat wrapper).
"""

from __future__ import annotations

from typing import Any

from langchain_openai import ChatOpenAI, OpenAIEmbeddings

from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.pool.http import get_async_http_client, get_http_client, http_timeout

__all__ = ["pooled_chat_openai", "pooled_openai_embeddings"]

OPENAI_BASE_URL = "https://api.openai.com/v1"


def _pooled(
    base_url: str | None, config: PerformanceConfig | None, options: dict[str, Any]
) -> dict[str, Any]:
    for name in ("http_client", "http_async_client", "max_retries"):
        if name in options:
            msg = f"{name} is set by the pooled factory; build the class yourself to choose it"
            raise TypeError(msg)
    config = resolve_config(config)
    url = base_url or OPENAI_BASE_URL
    options.setdefault("timeout", http_timeout(config))
    return {
        "base_url": url,
        "http_client": get_http_client(url, config=config),
        "http_async_client": get_async_http_client(url, config=config),
        "max_retries": 0,
        **options,
    }


def pooled_chat_openai(
    *, base_url: str | None = None, config: PerformanceConfig | None = None, **options: Any
) -> ChatOpenAI:
    """A ``ChatOpenAI`` on the shared pooled clients, SDK retries off, usage on streams.

    Example: ``pooled_chat_openai(model="gpt-4o-mini", base_url=sim.base_url, api_key="sk-...")``.

    ``stream_usage`` defaults to ``True`` (see the module docstring), so streamed answers
    report their tokens; pass ``stream_usage=False`` to leave ``stream_options`` out.

    Args:
        base_url: The OpenAI-compatible endpoint (``None``: api.openai.com).
        config: Pool size, timeouts (seconds); ``None`` means ``PerformanceConfig.load()``.
        **options: Any other ``ChatOpenAI`` field (``model``, ``temperature``, ``api_key``...).

    Raises:
        TypeError: ``http_client``, ``http_async_client`` or ``max_retries`` was passed.
    """
    options = dict(options)
    options.setdefault("stream_usage", True)
    return ChatOpenAI(**_pooled(base_url, config, options))


def pooled_openai_embeddings(
    *, base_url: str | None = None, config: PerformanceConfig | None = None, **options: Any
) -> OpenAIEmbeddings:
    """An ``OpenAIEmbeddings`` on the shared pooled clients, retries off, no tiktoken download.

    Example: ``pooled_openai_embeddings(model="text-embedding-3-small", base_url=sim.base_url)``.

    ``check_embedding_ctx_length`` defaults to ``False`` (see the module docstring); pass
    ``True`` when tiktoken's files are available locally.

    Raises:
        TypeError: ``http_client``, ``http_async_client`` or ``max_retries`` was passed.
    """
    options = dict(options)
    options.setdefault("check_embedding_ctx_length", False)
    return OpenAIEmbeddings(**_pooled(base_url, config, options))
