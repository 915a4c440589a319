"""Build LangChain's OpenAI, Azure OpenAI and Anthropic classes on pooled clients, retries off.

Example::

    llm = pooled_chat_openai(model="gpt-4o-mini", base_url="http://127.0.0.1:8000/v1")
    embeddings = pooled_openai_embeddings(model="text-embedding-3-small", base_url=url)
    claude = pooled_chat_anthropic(model="claude-3-5-haiku-latest", base_url=anthropic_url)
    azure = pooled_azure_chat_openai(azure_deployment="chat", azure_endpoint=endpoint,
                                     api_version="2024-10-21")
    azure_embeddings = pooled_azure_openai_embeddings(azure_deployment="embed", ...)

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

Every factory refuses an option its class does not take, naming it and the close matches
(``temprature=0``: did you mean ``'temperature'``?). The classes themselves would move it
into ``model_kwargs`` with only a warning and send it to the provider.

Not done here: wrapping the result (pass it to ``PerfEmbeddings`` / the chat wrapper).
"""

from __future__ import annotations

from typing import Any

import anthropic
from langchain_anthropic import ChatAnthropic
from langchain_openai import AzureChatOpenAI, AzureOpenAIEmbeddings, ChatOpenAI, OpenAIEmbeddings

from rag_perf_plugins._signature import accepted_keywords, check_options
from rag_perf_plugins.config import PerformanceConfig, resolve_config
from rag_perf_plugins.pool.http import get_async_http_client, get_http_client, http_timeout

__all__ = [
    "pooled_azure_chat_openai",
    "pooled_azure_openai_embeddings",
    "pooled_chat_anthropic",
    "pooled_chat_openai",
    "pooled_openai_embeddings",
]

OPENAI_BASE_URL = "https://api.openai.com/v1"
ANTHROPIC_BASE_URL = "https://api.anthropic.com"


def _pooled(
    factory: str,
    cls: type,
    base_url: str | None,
    config: PerformanceConfig | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    for name in ("http_client", "http_async_client", "max_retries"):
        if name in options:
            msg = f"{name} is set by the pooled factory; build the class yourself to choose it"
            raise TypeError(msg)
    check_options(factory, options, accepted_keywords(cls))
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
        TypeError: ``http_client``, ``http_async_client`` or ``max_retries`` was passed, or
            an option the class does not take (named, with the close matches).
    """
    options = dict(options)
    options.setdefault("stream_usage", True)
    return ChatOpenAI(**_pooled("pooled_chat_openai", ChatOpenAI, base_url, config, options))


def pooled_openai_embeddings(
    *, base_url: str | None = None, config: PerformanceConfig | None = None, **options: Any
) -> OpenAIEmbeddings:
    """An ``OpenAIEmbeddings`` on the shared pooled clients, retries off, no tiktoken download.

    Example: ``pooled_openai_embeddings(model="text-embedding-3-small", base_url=sim.base_url)``.

    ``check_embedding_ctx_length`` defaults to ``False`` (see the module docstring); pass
    ``True`` when tiktoken's files are available locally.

    Raises:
        TypeError: ``http_client``, ``http_async_client`` or ``max_retries`` was passed, or
            an option the class does not take (named, with the close matches).
    """
    options = dict(options)
    options.setdefault("check_embedding_ctx_length", False)
    built = _pooled("pooled_openai_embeddings", OpenAIEmbeddings, base_url, config, options)
    return OpenAIEmbeddings(**built)


def _azure(
    factory: str,
    cls: type,
    azure_endpoint: str,
    config: PerformanceConfig | None,
    options: dict[str, Any],
) -> dict[str, Any]:
    for name in ("http_client", "http_async_client", "max_retries", "base_url"):
        if name in options:
            msg = f"{name} is set by the pooled factory; build the class yourself to choose it"
            raise TypeError(msg)
    check_options(factory, options, accepted_keywords(cls))
    if "api_version" not in options and "openai_api_version" not in options:
        msg = "api_version is required for Azure OpenAI (e.g. api_version='2024-10-21')"
        raise TypeError(msg)
    config = resolve_config(config)
    options.setdefault("timeout", http_timeout(config))
    return {
        "azure_endpoint": azure_endpoint,
        "http_client": get_http_client(azure_endpoint, config=config),
        "http_async_client": get_async_http_client(azure_endpoint, config=config),
        "max_retries": 0,
        **options,
    }


def pooled_azure_chat_openai(
    *, azure_endpoint: str, config: PerformanceConfig | None = None, **options: Any
) -> AzureChatOpenAI:
    """An ``AzureChatOpenAI`` on the shared pooled clients, SDK retries off, usage on streams.

    Example::

        llm = pooled_azure_chat_openai(
            azure_endpoint="https://my-resource.openai.azure.com", azure_deployment="chat",
            api_version="2024-10-21", api_key=key, temperature=0,
        )

    The deployment and the API version are part of the model's identity (cache keys), and
    the admission gate is the deployment's (Azure limits per deployment), unless
    ``rate_limit_scope`` names a shared budget.

    Args:
        azure_endpoint: The resource endpoint (``https://NAME.openai.azure.com``).
        config: Pool size, timeouts (seconds); ``None`` means ``PerformanceConfig.load()``.
        **options: Other ``AzureChatOpenAI`` fields; ``azure_deployment`` and
            ``api_version`` are needed.

    Raises:
        TypeError: ``api_version`` is missing, or ``http_client``, ``http_async_client``,
            ``max_retries`` or ``base_url`` was passed, or an option ``AzureChatOpenAI``
            does not take (named, with the close matches).
    """
    options = dict(options)
    options.setdefault("stream_usage", True)
    built = _azure("pooled_azure_chat_openai", AzureChatOpenAI, azure_endpoint, config, options)
    return AzureChatOpenAI(**built)


def pooled_azure_openai_embeddings(
    *, azure_endpoint: str, config: PerformanceConfig | None = None, **options: Any
) -> AzureOpenAIEmbeddings:
    """An ``AzureOpenAIEmbeddings`` on the shared pooled clients, retries off, no tiktoken.

    Example: ``pooled_azure_openai_embeddings(azure_endpoint=url, azure_deployment="embed",
    api_version="2024-10-21", api_key=key)``. ``check_embedding_ctx_length`` defaults to
    ``False`` as in :func:`pooled_openai_embeddings`.

    Raises:
        TypeError: as :func:`pooled_azure_chat_openai`.
    """
    options = dict(options)
    options.setdefault("check_embedding_ctx_length", False)
    built = _azure(
        "pooled_azure_openai_embeddings", AzureOpenAIEmbeddings, azure_endpoint, config, options
    )
    return AzureOpenAIEmbeddings(**built)


def pooled_chat_anthropic(
    *, base_url: str | None = None, config: PerformanceConfig | None = None, **options: Any
) -> ChatAnthropic:
    """A ``ChatAnthropic`` whose Anthropic SDK clients use the shared pools, SDK retries off.

    Example: ``pooled_chat_anthropic(model="claude-3-5-haiku-latest", base_url=url,
    api_key=key, temperature=0)``.

    ``ChatAnthropic`` has no client fields: it builds its ``anthropic.Client`` /
    ``AsyncClient`` on first use, each on an ``httpx`` client of its own. This factory
    builds both up front on the registry's shared clients for ``base_url``'s origin (one
    pool per event loop for the async one), with the model's own API key, headers and
    ``max_retries=0``. Our retry policy then owns retries: 429 (``retry-after``) and 529
    (overloaded) included.

    Args:
        base_url: The API root, without ``/v1`` (``None``: api.anthropic.com).
        config: Pool size, timeouts (seconds); ``None`` means ``PerformanceConfig.load()``.
        **options: Other ``ChatAnthropic`` fields (``model``, ``max_tokens``,
            ``temperature``, ``top_k``, ``thinking``, ``api_key``...).

    Raises:
        TypeError: ``max_retries`` was passed, or an option ``ChatAnthropic`` does not take
            (``top_kk=5``: named, with the close matches; LangChain itself would only warn
            and send it to the API in ``model_kwargs``).
    """
    if "max_retries" in options:
        msg = "max_retries is set by the pooled factory; build the class yourself to choose it"
        raise TypeError(msg)
    check_options("pooled_chat_anthropic", options, accepted_keywords(ChatAnthropic))
    config = resolve_config(config)
    url = base_url or ANTHROPIC_BASE_URL
    options.setdefault("default_request_timeout", config.request_deadline)
    model = ChatAnthropic(base_url=url, max_retries=0, **options)
    params = dict(model._client_params)
    params["max_retries"] = 0
    # The two clients are cached properties of the model: filled here, they are never built
    # again (and model_copy, as PerfChatModel does, keeps them).
    model.__dict__["_client"] = anthropic.Client(
        **params, http_client=get_http_client(url, config=config)
    )
    model.__dict__["_async_client"] = anthropic.AsyncClient(
        **params, http_client=get_async_http_client(url, config=config)
    )
    return model
