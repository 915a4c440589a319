"""The request paths every framework adapter calls: embeddings, LLM calls, searches, defaults.

Example::

    from rag_perf_plugins.services import EmbeddingService, LLMRequest, LLMService

Modules: :mod:`.embeddings` (cached, coalesced, batched, admitted embedding calls),
:mod:`.llm` (cached, coalesced, admitted LLM calls and stream record/replay).
"""

from __future__ import annotations

from .embeddings import CacheEmbeddingStore, EmbeddingService, EmbeddingStore
from .llm import ChunkCodec, LLMRequest, LLMService, ResultCodec, Usage

__all__ = [
    "CacheEmbeddingStore",
    "ChunkCodec",
    "EmbeddingService",
    "EmbeddingStore",
    "LLMRequest",
    "LLMService",
    "ResultCodec",
    "Usage",
]
