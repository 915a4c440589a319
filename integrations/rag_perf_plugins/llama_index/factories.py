"""LlamaIndex OpenAI, Azure OpenAI and Anthropic models on pooled, loop-safe clients, retries off.

Example::

    from rag_perf_plugins.llama_index import PerfEmbedding, pooled_openai_embedding

    inner = pooled_openai_embedding(api_base="http://127.0.0.1:8600/v1", api_key="sk-...")
    embed_model = PerfEmbedding(inner)        # our retry policy is the only retry owner

    llm = wrap_llm(pooled_openai_llm(model="gpt-4o-mini", api_base="http://127.0.0.1:8600/v1"))
    claude = wrap_llm(pooled_anthropic_llm(model="claude-3-5-haiku-latest", base_url=url))
    azure = wrap_llm(pooled_azure_openai_llm(engine="chat", azure_endpoint=endpoint,
                                             api_version="2024-10-21"))
    azure_embed = PerfEmbedding(pooled_azure_openai_embedding(azure_deployment="embed", ...))

Every factory refuses an option its class does not take with a ``TypeError`` naming it and
the close matches (``max_token=``: did you mean ``'max_tokens'``?); most of the classes
would take it silently (LlamaIndex's ``OpenAI`` passes unknown keywords on).
"""

from __future__ import annotations

from typing import Any

from llama_index.embeddings.azure_openai import AzureOpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from llama_index.embeddings.openai import OpenAIEmbedding  # type: ignore[import-untyped, unused-ignore]
from llama_index.embeddings.openai.utils import resolve_openai_credentials  # type: ignore[import-untyped, unused-ignore]
from llama_index.llms.anthropic import Anthropic
from llama_index.llms.azure_openai import AzureOpenAI  # type: ignore[import-untyped, unused-ignore]
from llama_index.llms.openai import OpenAI
from rag_perf_plugins._signature import accepted_keywords, check_options
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.pool.http import get_async_http_client, get_http_client

__all__ = [
    "pooled_anthropic_llm",
    "pooled_azure_openai_embedding",
    "pooled_azure_openai_llm",
    "pooled_openai_embedding",
    "pooled_openai_llm",
]

ANTHROPIC_BASE_URL = "https://api.anthropic.com"


def pooled_openai_embedding(
    *,
    model: str = "text-embedding-3-small",
    api_base: str | None = None,
    api_key: str | None = None,
    dimensions: int | None = None,
    config: PerformanceConfig | None = None,
    proxy: str | None = None,
    **kwargs: Any,
) -> OpenAIEmbedding:
    """LlamaIndex's ``OpenAIEmbedding`` on the registry's shared HTTP clients.

    Example::

        inner = pooled_openai_embedding(api_base=sim.base_url, api_key="sk-test", dimensions=256)
        inner.max_retries            # 0: neither the SDK nor LlamaIndex's tenacity retries

    The sync and async SDK clients share one ``httpx`` pool per origin (at most
    ``connection_pool_size`` connections per event loop, ``keepalive_expiry`` seconds of
    keep-alive, ``connection_timeout`` seconds to connect); the async one routes each
    request to a pool owned by the running loop, so the model works across
    ``asyncio.run()`` calls. The per-request timeout is ``request_deadline`` seconds.

    Args:
        model: Embedding model name.
        api_base: Base URL ending in ``/v1``; ``None`` reads ``OPENAI_API_BASE`` or uses
            OpenAI's.
        api_key: API key; ``None`` reads ``OPENAI_API_KEY``.
        dimensions: Output dimensions (v3 models), or ``None`` for the model's default.
        config: Pool sizes and timeouts; ``None`` means ``PerformanceConfig.load()``.
        proxy: Proxy URL for the shared clients (environment proxies are not read).
        **kwargs: Other ``OpenAIEmbedding`` options (``mode``, ``additional_kwargs``, ...).

    Raises:
        ValueError: ``max_retries`` or ``http_client``/``async_http_client`` were passed
            (retries belong to our retry policy, clients to the registry), or ``api_base``
            is not an absolute http(s) URL.
        TypeError: An option the class does not take (named, with the close matches).

    Not done: wrapping. Pass the result to :class:`PerfEmbedding` for caching, batching,
    admission and retries; on its own it makes exactly one attempt per request. With
    ``enable_connection_pooling=False`` it gets fresh, unshared clients.
    """
    check_options("pooled_openai_embedding", kwargs, accepted_keywords(OpenAIEmbedding))
    kwargs = _pooled_kwargs("pooled_openai_embedding", api_key, api_base, config, proxy, kwargs)
    return OpenAIEmbedding(
        model=model,
        dimensions=dimensions,
        **kwargs,
    )


def pooled_openai_llm(
    *,
    model: str = "gpt-4o-mini",
    api_base: str | None = None,
    api_key: str | None = None,
    temperature: float = 0.0,
    config: PerformanceConfig | None = None,
    proxy: str | None = None,
    **kwargs: Any,
) -> OpenAI:
    """LlamaIndex's ``OpenAI`` LLM on the registry's shared HTTP clients, SDK retries off.

    Example::

        inner = pooled_openai_llm(api_base=sim.base_url, api_key="sk-test")
        inner.max_retries            # 0: neither the SDK nor LlamaIndex's tenacity retries
        llm = wrap_llm(inner)        # a PerfFunctionCallingLLM

    Same clients as :func:`pooled_openai_embedding` (one ``httpx`` pool per origin and
    event loop, ``connection_pool_size`` connections, ``connection_timeout`` seconds to
    connect); the per-request timeout is ``request_deadline`` seconds.

    Args:
        model: Chat model name.
        api_base: Base URL ending in ``/v1``; ``None`` reads ``OPENAI_API_BASE`` or uses
            OpenAI's.
        api_key: API key; ``None`` reads ``OPENAI_API_KEY``.
        temperature: Sampling temperature (0.0 by default: answers worth caching).
        config: Pool sizes and timeouts; ``None`` means ``PerformanceConfig.load()``.
        proxy: Proxy URL for the shared clients (environment proxies are not read).
        **kwargs: Other ``OpenAI`` options (``max_tokens``, ``additional_kwargs``, ...).

    Raises:
        ValueError: ``max_retries`` or ``http_client``/``async_http_client`` were passed.
        TypeError: An option the class does not take (named, with the close matches).

    Streamed answers ask for usage (``stream_options={"include_usage": True}`` in
    ``additional_kwargs``), so their tokens are counted; it is not part of cache keys.

    Not done: wrapping (pass the result to :func:`wrap_llm`); on its own it makes
    exactly one attempt per request.
    """
    check_options("pooled_openai_llm", kwargs, accepted_keywords(OpenAI))
    kwargs = _pooled_kwargs("pooled_openai_llm", api_key, api_base, config, proxy, kwargs)
    # Streams report usage in their last chunk, so token counts cover streamed answers too.
    # LlamaIndex drops stream_options from non-streaming requests; pass
    # additional_kwargs={"stream_options": None} to leave it out for an endpoint that rejects it.
    extra = dict(kwargs.pop("additional_kwargs", None) or {})
    extra.setdefault("stream_options", {"include_usage": True})
    if extra["stream_options"] is None:
        del extra["stream_options"]
    kwargs["additional_kwargs"] = extra
    return OpenAI(
        model=model,
        temperature=temperature,
        **kwargs,
    )


def _pooled_kwargs(
    factory: str,
    api_key: str | None,
    api_base: str | None,
    config: PerformanceConfig | None,
    proxy: str | None,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    """The client arguments both factories share: credentials, shared clients, no retries."""
    for name in ("max_retries", "http_client", "async_http_client"):
        if name in kwargs:
            msg = f"{factory}() sets {name} itself (retries off, shared clients); do not pass it"
            raise ValueError(msg)
    config = resolve_config(config)
    api_key, api_base, api_version = resolve_openai_credentials(api_key, api_base, None)
    kwargs.setdefault("api_version", api_version)
    kwargs.setdefault(
        "timeout", config.request_deadline if config.request_deadline is not None else 600.0
    )
    return {
        **kwargs,
        "api_key": api_key,
        "api_base": api_base,
        "max_retries": 0,
        "http_client": get_http_client(api_base, config=config, proxy=proxy),
        "async_http_client": get_async_http_client(api_base, config=config, proxy=proxy),
    }


def _azure_kwargs(
    factory: str,
    azure_endpoint: str,
    api_version: str,
    config: PerformanceConfig | None,
    kwargs: dict[str, Any],
) -> dict[str, Any]:
    for name in ("max_retries", "http_client", "async_http_client", "api_base"):
        if name in kwargs:
            msg = f"{factory}() sets {name} itself (retries off, shared clients); do not pass it"
            raise ValueError(msg)
    if not api_version:
        msg = f"{factory}() needs api_version (e.g. '2024-10-21')"
        raise ValueError(msg)
    config = resolve_config(config)
    kwargs.setdefault(
        "timeout", config.request_deadline if config.request_deadline is not None else 600.0
    )
    return {
        **kwargs,
        "azure_endpoint": azure_endpoint,
        "api_version": api_version,
        "max_retries": 0,
        "http_client": get_http_client(azure_endpoint, config=config),
        "async_http_client": get_async_http_client(azure_endpoint, config=config),
    }


def pooled_azure_openai_llm(
    *,
    engine: str,
    azure_endpoint: str,
    api_version: str,
    temperature: float = 0.0,
    config: PerformanceConfig | None = None,
    **kwargs: Any,
) -> AzureOpenAI:
    """LlamaIndex's ``AzureOpenAI`` on the registry's shared HTTP clients, SDK retries off.

    Example: ``wrap_llm(pooled_azure_openai_llm(engine="chat", azure_endpoint=url,
    api_version="2024-10-21", api_key=key))``.

    ``engine`` (the deployment) and ``api_version`` are part of the model's identity (cache
    keys); the wrapper's gate is the deployment's, as Azure limits per deployment.

    Args:
        engine: The deployment name.
        azure_endpoint: ``https://NAME.openai.azure.com``.
        api_version: The API version, e.g. ``"2024-10-21"``.
        temperature: Sampling temperature (0.0 by default: answers worth caching).
        config: Pool sizes and timeouts; ``None`` means ``PerformanceConfig.load()``.
        **kwargs: Other ``AzureOpenAI`` options (``model``, ``api_key``, ``max_tokens``...).

    Raises:
        ValueError: ``api_version`` is empty, or ``max_retries``, ``http_client``,
            ``async_http_client`` or ``api_base`` was passed.
        TypeError: An option the class does not take (named, with the close matches).
    """
    check_options("pooled_azure_openai_llm", kwargs, accepted_keywords(AzureOpenAI))
    kwargs = _azure_kwargs("pooled_azure_openai_llm", azure_endpoint, api_version, config, kwargs)
    return AzureOpenAI(engine=engine, temperature=temperature, **kwargs)


def pooled_azure_openai_embedding(
    *,
    azure_deployment: str,
    azure_endpoint: str,
    api_version: str,
    config: PerformanceConfig | None = None,
    **kwargs: Any,
) -> AzureOpenAIEmbedding:
    """LlamaIndex's ``AzureOpenAIEmbedding`` on the shared HTTP clients, SDK retries off.

    Example: ``PerfEmbedding(pooled_azure_openai_embedding(azure_deployment="embed",
    azure_endpoint=url, api_version="2024-10-21", api_key=key))``.

    Raises:
        ValueError: as :func:`pooled_azure_openai_llm`.
        TypeError: An option the class does not take (named, with the close matches).
    """
    check_options("pooled_azure_openai_embedding", kwargs, accepted_keywords(AzureOpenAIEmbedding))
    kwargs = _azure_kwargs(
        "pooled_azure_openai_embedding", azure_endpoint, api_version, config, kwargs
    )
    return AzureOpenAIEmbedding(azure_deployment=azure_deployment, **kwargs)


def pooled_anthropic_llm(
    *,
    model: str = "claude-sonnet-4-5",
    base_url: str | None = None,
    temperature: float = 0.0,
    config: PerformanceConfig | None = None,
    **kwargs: Any,
) -> Anthropic:
    """LlamaIndex's ``Anthropic`` LLM on the shared HTTP clients, SDK retries off.

    Example: ``wrap_llm(pooled_anthropic_llm(model="claude-3-5-haiku-latest", base_url=url,
    api_key=key, max_tokens=512))``.

    The class builds its ``anthropic.Anthropic`` / ``AsyncAnthropic`` clients itself; this
    factory rebuilds both (``with_options``: same key and headers) on the registry's shared
    clients of ``base_url``'s origin (one pool per event loop for the async one) with
    ``max_retries=0``. Vertex and Bedrock variants are not pooled here.

    Args:
        model: The Claude model.
        base_url: The API root, without ``/v1`` (``None``: api.anthropic.com).
        temperature: Sampling temperature (0.0 by default: answers worth caching).
        config: Pool sizes and timeouts; ``None`` means ``PerformanceConfig.load()``.
        **kwargs: Other ``Anthropic`` options (``api_key``, ``max_tokens``,
            ``system_prompt``, ``thinking_dict``...).

    Raises:
        ValueError: ``max_retries``, ``region``/``project_id`` or ``aws_region`` was passed.
        TypeError: An option the class does not take (named, with the close matches).
    """
    for name in ("max_retries", "region", "project_id", "aws_region"):
        if name in kwargs:
            msg = f"pooled_anthropic_llm() does not take {name} (retries off, shared clients)"
            raise ValueError(msg)
    check_options("pooled_anthropic_llm", kwargs, accepted_keywords(Anthropic))
    config = resolve_config(config)
    url = base_url or ANTHROPIC_BASE_URL
    kwargs.setdefault("timeout", config.request_deadline)
    llm = Anthropic(model=model, base_url=url, temperature=temperature, max_retries=0, **kwargs)
    llm._client = llm._client.with_options(
        http_client=get_http_client(url, config=config), max_retries=0
    )
    llm._aclient = llm._aclient.with_options(
        http_client=get_async_http_client(url, config=config), max_retries=0
    )
    return llm
