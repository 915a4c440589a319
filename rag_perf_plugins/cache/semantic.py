"""The semantic LLM cache: a similar earlier prompt's answer, only inside an exact partition.

Example::

    from rag_perf_plugins.cache.semantic import SemanticCache
    from rag_perf_plugins.services import EmbeddingService, LLMService

    semantic = SemanticCache(embedding_service, config=PerformanceConfig(semantic_cache=True))
    llm_service = LLMService(config=config, semantic=semantic)
    # or: PerfChatModel(inner, semantic=semantic) / wrap_llm(inner, semantic=semantic)

It is consulted only after an exact-cache miss, for non-streamed calls whose effective
semantic switch is on (``semantic_cache`` in the config, or ``cache_control(semantic=...)``
per call). The steps:

1. **Partition** (:meth:`SemanticCache.probe`, no I/O): the last user message is the
   *query*; everything else of the request (model, provider and its settings, every
   sampling parameter, seed, system prompt, tools, tool choice, response format, every
   message before and after the query) plus the :func:`~rag_perf_plugins.cache.cache_scope`
   and the semantic namespace version (bumped by :meth:`SemanticCache.reindex`) is hashed
   into the partition id. Only prompts of the same partition are ever compared: two
   requests that differ in anything but the query's text can never answer each other.
   Sampled requests (temperature above 0 and no seed) get no probe unless
   ``semantic_serve_sampled`` is on; a query that is not plain text (images, tool results)
   gets none either.
2. **Embedding**: the query through the embedding service given (cached and batched by it),
   once per miss; the same vector is stored with the answer.
3. **Search**: the ``semantic_candidates`` most similar stored prompts of the partition, by
   cosine similarity (the dot product of unit vectors, from -1 to 1; 1 is identical).
4. **Match** (:meth:`SemanticCache.match`, no I/O): the most similar candidate whose
   similarity is at least ``semantic_threshold`` and (with ``semantic_guards``) which agrees
   with the query on every rule of :mod:`rag_perf_plugins.cache.guards`.
5. The match names the exact cache key of its answer; that entry is read like an exact
   hit (an expired or unreadable one is a miss).

The default index, :class:`NumpyIndex`, keeps each partition's unit vectors in a bounded
ring (``semantic_max_entries``; the oldest go first) and searches them exactly with numpy.
It writes every entry to the cache manager's ``semantic`` namespace (disk and Redis tiers)
with a per-partition counter (a namespace version), so another process, or this one after
a restart, loads the entries it has not seen yet on its next search in that partition
(within ``version_check_interval`` seconds). A :class:`SemanticIndex` of your own (another
vector database) plugs in with ``index=``.

Failures degrade to an exact-only cache: an embedding or index error is counted
(``cache.semantic_errors``), logged once per kind, and the call goes to the provider.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from .._signature import checked_kwargs
from ..config import PerformanceConfig, resolve_config
from .guards import disagreement
from .keys import is_sampled, llm_fields, make_key
from .manager import CacheManager
from .registry import cache_manager_for

__all__ = [
    "NAMESPACE",
    "Candidate",
    "NumpyIndex",
    "Probe",
    "SemanticCache",
    "SemanticIndex",
    "SemanticMatch",
    "nearest",
    "query_of",
    "stored_metadata",
]

logger = logging.getLogger(__name__)

NAMESPACE: Final = "semantic"
_COUNTER_NS: Final = "semn-{}"  # one namespace version per partition: its entry counter
_QUERY: Final = "\x00rag-perf-semantic-query\x00"
_USER_ROLES: Final = frozenset({"user", "human"})
# What names a framework embedder's model (LangChain and LlamaIndex spellings).
_EMBEDDER_FIELDS: Final = (
    "model",
    "model_name",
    "deployment",
    "azure_deployment",
    "deployment_name",
    "dimensions",
    "embed_dim",
    "openai_api_base",
    "api_base",
    "base_url",
    "azure_endpoint",
    "endpoint",
)
_MAX_COSINE: Final = 1.0 + 1e-4  # float32 rounding of unit vectors; above: not a cosine
Vector = npt.NDArray[np.float32]


class Embedder(Protocol):
    """What the semantic cache embeds queries with: our ``EmbeddingService`` or alike."""

    def embed_query(self, text: str) -> Sequence[float]:
        """The vector of one query."""
        ...

    async def aembed_query(self, text: str) -> Sequence[float]:
        """Async twin of :meth:`embed_query`."""
        ...


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored prompt near the query: ``Candidate(0.93, "How do I reset...", "llm:v1:...")``.

    ``similarity``: cosine similarity, -1..1. ``key``: the exact cache key of its answer.
    """

    similarity: float
    prompt: str
    key: str


@dataclass(frozen=True, slots=True)
class SemanticMatch:
    """The candidate that answers a query, for response metadata and the tracker."""

    similarity: float
    prompt: str
    key: str


@dataclass(slots=True)
class Probe:
    """One request's view for the semantic cache: its query text and partition id."""

    query: str
    partition: str
    vector: Vector | None = None
    failed: bool = False
    refused: dict[str, int] = field(default_factory=dict)  # guard rule -> candidates refused


@runtime_checkable
class SemanticIndex(Protocol):
    """Where query vectors live, per partition; every implementation searches by cosine.

    ``vector`` is a unit float32 vector. ``search`` returns at most ``k`` candidates, most
    similar first, with their cosine similarity (convert a distance before returning it).
    """

    def search(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """The ``k`` nearest stored prompts of ``partition``."""
        ...

    async def asearch(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """Async twin of :meth:`search`."""
        ...

    def add(self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None) -> None:
        """Remember ``prompt`` (answered under the exact cache ``key``) for ``ttl`` seconds."""
        ...

    async def aadd(
        self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None
    ) -> None:
        """Async twin of :meth:`add`."""
        ...

    def info(self) -> dict[str, Any]:
        """Live state for ``rag-perf cache info``."""
        ...


def _text_of(content: Any) -> str | None:
    """Plain text of a message content (a str, or a list of text parts only), else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif (
                isinstance(part, Mapping)
                and isinstance(part.get("text"), str)
                and (part.get("type") in ("text", None) or part.get("block_type") == "text")
            ):
                parts.append(part["text"])
            else:
                return None
        return "\n".join(parts)
    return None


def _replace_query(message: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The query of one user message and the message with the query replaced by a marker."""
    copy = dict(message)
    data = copy.get("data")
    if isinstance(data, Mapping) and copy.get("type") == "human":  # LangChain message_to_dict
        text = _text_of(data.get("content"))
        if text is None:
            return None
        copy["data"] = {**data, "content": _QUERY}
        return text, copy
    found: str | None = None
    if "blocks" in copy:  # LlamaIndex ChatMessage.model_dump()
        found = _text_of(copy["blocks"])
        if found is None:
            return None
        copy["blocks"] = _QUERY
    if "content" in copy and copy["content"] is not None:
        text = _text_of(copy["content"])
        if text is None or (found is not None and text != found):
            return None
        found = text
        copy["content"] = _QUERY
    return (found, copy) if found is not None else None


def query_of(messages: Any) -> tuple[str, Any] | None:
    """The last user message's text and the messages with it replaced by a marker.

    Example: ``query_of([{"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is RAG?"}])`` is ``("What is RAG?", [<system>,
    {"role": "user", "content": <marker>}])``. A plain string prompt is its own query.
    ``None`` when there is no user message or its content is not plain text.
    """
    if isinstance(messages, str):
        return messages, _QUERY
    if not isinstance(messages, list | tuple):
        return None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if not isinstance(message, Mapping):
            return None
        role = message.get("role", message.get("type"))
        if role in _USER_ROLES:
            replaced = _replace_query(message)
            if replaced is None:
                return None
            rest = list(messages)
            rest[index] = replaced[1]
            return replaced[0], rest
    return None


def _unit(vector: Sequence[float] | Vector) -> Vector | None:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(array))
    if not math.isfinite(norm) or norm == 0.0:
        return None
    return (array / norm).astype(np.float32, copy=False)


# --- what the vector-store indexes of the adapters share -----------------------------
PARTITION_FIELD: Final = "rag_perf_partition"


def stored_metadata(partition: str, vector: Vector, key: str) -> dict[str, str]:
    """The metadata a vector-store index stores beside a prompt: partition, key, vector.

    Example: ``store.add_texts([prompt], metadatas=[stored_metadata(p, unit_vector, key)])``.
    The vector goes in as base64 of little-endian float32, so :func:`nearest` computes the
    cosine itself instead of trusting the store's score (stores differ in their metric).
    """
    return {
        PARTITION_FIELD: partition,
        "rag_perf_key": key,
        "rag_perf_vector": base64.b64encode(vector.astype("<f4").tobytes()).decode(),
    }


def nearest(
    found: Iterable[tuple[Mapping[str, Any] | None, str]], partition: str, vector: Vector, k: int
) -> list[Candidate]:
    """The ``k`` best of ``(metadata, prompt)`` documents a store returned for ``vector``.

    Example: ``nearest(((d.metadata, d.page_content) for d in docs), partition, v, k=4)``.
    By cosine similarity with the stored vector (see :func:`stored_metadata`). Skipped: a
    document of another partition (a store that ignored the filter: partitions never
    cross), one without a readable key and vector, of other dimensions, or whose stored
    vector holds NaN, inf or only zeros.
    """
    candidates: list[Candidate] = []
    for meta, prompt in found:
        meta = meta or {}
        if meta.get(PARTITION_FIELD) != partition:
            continue
        key, raw = meta.get("rag_perf_key"), meta.get("rag_perf_vector")
        if not isinstance(key, str) or not isinstance(raw, str):
            continue
        try:
            stored = np.frombuffer(base64.b64decode(raw), dtype="<f4")
        except ValueError:
            continue
        if stored.shape != vector.shape:
            continue
        norm = float(np.linalg.norm(stored))
        if norm > 0 and math.isfinite(norm):
            candidates.append(Candidate(float(stored @ vector) / norm, prompt, key))
    candidates.sort(key=lambda c: -c.similarity)
    return candidates[:k]


class _Ring:
    """One partition's vectors, prompts and keys: a bounded ring, searched exactly."""

    __slots__ = ("count", "keys", "matrix", "prompts", "seen", "size")

    def __init__(self, capacity: int, dim: int) -> None:
        self.matrix = np.zeros((min(capacity, 64), dim), dtype=np.float32)
        self.prompts: list[str] = []
        self.keys: list[str] = []
        self.size = 0  # filled rows
        self.count = 0  # rows ever added (the next row is count % capacity)
        self.seen = 0  # entries of the shared log loaded or written by this process

    def add(self, vector: Vector, prompt: str, key: str, capacity: int) -> None:
        if vector.shape[0] != self.matrix.shape[1]:
            return  # another embedding model's vector: never compared
        if self.size < capacity:
            if self.size == self.matrix.shape[0]:
                grown = np.zeros((min(capacity, self.size * 2), self.matrix.shape[1]), np.float32)
                grown[: self.size] = self.matrix[: self.size]
                self.matrix = grown
            row = self.size
            self.size += 1
            self.prompts.append(prompt)
            self.keys.append(key)
        else:
            row = self.count % capacity
            self.prompts[row], self.keys[row] = prompt, key
        self.matrix[row] = vector
        self.count += 1

    def search(self, vector: Vector, k: int) -> list[Candidate]:
        if self.size == 0 or vector.shape[0] != self.matrix.shape[1]:
            return []
        sims = self.matrix[: self.size] @ vector
        k = min(k, self.size)
        top = np.argpartition(-sims, k - 1)[:k] if k < self.size else np.arange(self.size)
        order = top[np.argsort(-sims[top], kind="stable")]
        return [Candidate(float(sims[i]), self.prompts[i], self.keys[i]) for i in order]


class NumpyIndex:
    """The default :class:`SemanticIndex`: exact numpy search, persisted through the cache.

    Example::

        index = NumpyIndex(cache_manager, max_entries=10_000)
        index.add(partition, unit_vector, "What is RAG?", "llm:v1:...", ttl=None)
        index.search(partition, unit_vector, k=4)[0].similarity     # 1.0

    Args:
        cache: Where entries persist (``semantic`` namespace) and where other processes
            find them; ``None``: this process only.
        max_entries: Prompts kept per partition (the oldest go first), in entries.
        max_partitions: Partitions kept in this process (least recently used go first;
            their entries stay in the cache and are loaded again when needed).

    Memory: ``max_entries * dimensions * 4`` bytes per partition at most (384-d:
    15 MiB for 10,000 entries), plus the prompts.
    """

    __slots__ = ("_cache", "_lock", "_parts", "loaded", "max_entries", "max_partitions", "written")

    @checked_kwargs
    def __init__(
        self, cache: CacheManager | None, *, max_entries: int = 10_000, max_partitions: int = 1024
    ) -> None:
        if max_entries < 1:
            msg = f"max_entries must be >= 1, got {max_entries}"
            raise ValueError(msg)
        if max_partitions < 1:
            msg = f"max_partitions must be >= 1, got {max_partitions}"
            raise ValueError(msg)
        self._cache = cache
        self.max_entries = max_entries
        self.max_partitions = max_partitions
        self._parts: OrderedDict[str, _Ring] = OrderedDict()
        self._lock = threading.Lock()
        self.loaded = 0  # entries read from the shared log (written by others or earlier)
        self.written = 0

    def __repr__(self) -> str:
        entries = sum(r.size for r in self._parts.values())
        return (
            f"<NumpyIndex [partitions: {len(self._parts)}, entries: {entries} | "
            f"max_entries={self.max_entries}, persisted={self._cache is not None}]>"
        )

    @staticmethod
    def _counter(partition: str) -> str:
        return _COUNTER_NS.format(partition.rsplit(":", 1)[-1][:40])

    def _ring(self, partition: str, dim: int) -> _Ring:
        ring = self._parts.get(partition)
        if ring is None:
            ring = self._parts[partition] = _Ring(self.max_entries, dim)
            while len(self._parts) > self.max_partitions:
                self._parts.popitem(last=False)
        else:
            self._parts.move_to_end(partition)
        return ring

    def _missing(self, ring: _Ring, total: int) -> list[int]:
        start = max(ring.seen, total - self.max_entries)
        return list(range(start, total))

    def _absorb(self, ring: _Ring, total: int, stored: Mapping[str, Any], partition: str) -> None:
        for i in self._missing(ring, total):
            entry = stored.get(f"{partition}:{i}")
            if not isinstance(entry, Mapping):
                continue  # expired, evicted or overwritten: nothing to load
            raw, prompt, key = entry.get("v"), entry.get("p"), entry.get("k")
            if (
                not isinstance(raw, bytes)
                or not isinstance(prompt, str)
                or not isinstance(key, str)
            ):
                continue  # corrupt: a miss, never an error
            if len(raw) % 4:
                continue
            vector = _unit(np.frombuffer(raw, dtype="<f4"))
            if vector is not None:
                ring.add(vector, prompt, key, self.max_entries)
                self.loaded += 1
        ring.seen = max(ring.seen, total)

    # --- blocking ---------------------------------------------------------------------
    def _sync(self, partition: str, dim: int) -> _Ring:
        with self._lock:
            ring = self._ring(partition, dim)
        cache = self._cache
        if cache is None:
            return ring
        total = cache.namespace_version(self._counter(partition)) - 1
        if total > ring.seen:
            keys = [f"{partition}:{i}" for i in self._missing(ring, total)]
            stored = cache.get_many(keys, namespace=NAMESPACE)
            with self._lock:
                self._absorb(ring, total, stored, partition)
        return ring

    def search(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """The ``k`` nearest stored prompts of ``partition`` (loads others' new entries first)."""
        ring = self._sync(partition, vector.shape[0])
        with self._lock:
            return ring.search(vector, k)

    def add(self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None) -> None:
        """Remember ``prompt`` here and in the cache's ``semantic`` namespace."""
        ring = self._sync(partition, vector.shape[0])
        cache = self._cache
        if cache is not None:
            # The counter is claimed first, then the entry written. Two processes adding at
            # once may take the same slot, or a reader may pass a slot before its entry
            # lands: that entry is lost to the others (a missed hit later, never a wrong one).
            slot = cache.bump_namespace(self._counter(partition)) - 2
            entry = {"v": vector.astype("<f4").tobytes(), "p": prompt, "k": key}
            cache.set(f"{partition}:{slot}", entry, ttl, namespace=NAMESPACE)
            with self._lock:
                if ring.seen == slot:  # else another process's entries are still to load
                    ring.seen = slot + 1
        with self._lock:
            ring.add(vector, prompt, key, self.max_entries)
            self.written += 1

    # --- async: the cache I/O runs off the loop ---------------------------------------
    async def _async(self, partition: str, dim: int) -> _Ring:
        with self._lock:
            ring = self._ring(partition, dim)
        cache = self._cache
        if cache is None:
            return ring
        total = await cache.anamespace_version(self._counter(partition)) - 1
        if total > ring.seen:
            keys = [f"{partition}:{i}" for i in self._missing(ring, total)]
            stored = await cache.aget_many(keys, namespace=NAMESPACE)
            with self._lock:
                self._absorb(ring, total, stored, partition)
        return ring

    async def asearch(self, partition: str, vector: Vector, k: int) -> list[Candidate]:
        """Async twin of :meth:`search`."""
        ring = await self._async(partition, vector.shape[0])
        with self._lock:
            return ring.search(vector, k)

    async def aadd(
        self, partition: str, vector: Vector, prompt: str, key: str, ttl: float | None
    ) -> None:
        """Async twin of :meth:`add`."""
        ring = await self._async(partition, vector.shape[0])
        cache = self._cache
        if cache is not None:
            slot = await cache.abump_namespace(self._counter(partition)) - 2
            entry = {"v": vector.astype("<f4").tobytes(), "p": prompt, "k": key}
            await cache.aset(f"{partition}:{slot}", entry, ttl, namespace=NAMESPACE)
            with self._lock:
                if ring.seen == slot:  # else another process's entries are still to load
                    ring.seen = slot + 1
        with self._lock:
            ring.add(vector, prompt, key, self.max_entries)
            self.written += 1

    def info(self) -> dict[str, Any]:
        """Partitions and entries held here, for ``rag-perf cache info``."""
        with self._lock:
            sizes = [r.size for r in self._parts.values()]
        return {
            "index": "numpy",
            "partitions": len(sizes),
            "entries": sum(sizes),
            "largest_partition": max(sizes, default=0),
            "max_entries_per_partition": self.max_entries,
            "loaded_from_cache": self.loaded,
            "written": self.written,
            "persisted": self._cache is not None,
        }


class SemanticCache:
    """Opt-in semantic matching of LLM prompts, behind the exact cache (see module docs).

    Example::

        semantic = SemanticCache(EmbeddingService(...), config=PerformanceConfig(
            semantic_cache=True, semantic_threshold=0.9))
        LLMService(config=config, semantic=semantic)

    Args:
        embeddings: Embeds the query (``embed_query`` / ``aembed_query``); pass our
            ``EmbeddingService`` (or a wrapped ``PerfEmbeddings``) so query vectors are
            cached and batched.
        config: ``semantic_threshold`` (cosine similarity), ``semantic_guards``,
            ``semantic_serve_sampled``, ``semantic_max_entries`` (entries per partition);
            ``None``: ``PerformanceConfig.load()``.
        index: Where vectors live; ``None``: a :class:`NumpyIndex` persisted in ``cache``.
        cache: The cache manager of the default index and of the namespace version;
            ``None``: the shared manager for ``config``'s cache settings.
        model: Names the embedding model in the partition id (vectors of two models are
            never compared); ``None``: our embedding service's identity (see
            :meth:`embedder`); pass it for any other embedder.
        candidates: Nearest prompts checked against the threshold and guards per lookup.
    """

    __slots__ = (
        "_cache",
        "_logged",
        "candidates",
        "config",
        "embeddings",
        "guards",
        "index",
        "model",
        "serve_sampled",
        "threshold",
    )

    @checked_kwargs
    def __init__(
        self,
        embeddings: Embedder,
        *,
        config: PerformanceConfig | None = None,
        index: SemanticIndex | None = None,
        cache: CacheManager | None = None,
        model: str | None = None,
        candidates: int = 4,
    ) -> None:
        if not callable(getattr(embeddings, "embed_query", None)):
            msg = f"embeddings must have embed_query/aembed_query, got {type(embeddings).__name__}"
            raise TypeError(msg)
        if candidates < 1:
            msg = f"candidates must be >= 1, got {candidates}"
            raise ValueError(msg)
        self.config = resolve_config(config)
        self.embeddings = embeddings
        if cache is None:
            cache = cache_manager_for(self.config) if self.config.enable_caching else None
        self._cache = cache
        self.index: SemanticIndex = (
            index
            if index is not None
            else NumpyIndex(cache, max_entries=self.config.semantic_max_entries)
        )
        self.threshold = self.config.semantic_threshold
        self.guards = self.config.semantic_guards
        self.serve_sampled = self.config.semantic_serve_sampled
        self.model = model
        self.candidates = candidates
        self._logged: set[str] = set()

    def __repr__(self) -> str:
        return (
            f"<SemanticCache [{self.index!r} | threshold={self.threshold}, "
            f"guards={self.guards}, embedder={self.embedder()!r}]>"
        )

    # --- pure parts -------------------------------------------------------------------
    def embedder(self) -> str:
        """The embedding model's name in every partition id: vectors of two models never meet.

        ``model`` when given; else our embedding service's identity (provider, which holds
        the model's settings digest, model, dimensions), read at each call so a wrapper
        that re-keys after a settings change moves to new partitions; else another
        embedder's class and a digest of the fields that name its model and endpoint
        (:data:`_EMBEDDER_FIELDS`): ``OpenAIEmbeddings`` of two models never share a
        partition, even at one dimension count.
        """
        if self.model is not None:
            return self.model
        service = getattr(self.embeddings, "service", self.embeddings)
        identity = getattr(service, "identity", None)
        if identity is not None:
            return f"{identity.provider}/{identity.model}/{identity.dimensions}"
        # Another embedder: its class and the settings that name its model and endpoint.
        settings = {name: getattr(self.embeddings, name, None) for name in _EMBEDDER_FIELDS}
        named = {k: str(v) for k, v in settings.items() if v is not None}
        if not named:
            return type(self.embeddings).__qualname__
        digest = hashlib.blake2b(repr(sorted(named.items())).encode(), digest_size=8)
        return f"{type(self.embeddings).__qualname__}/{digest.hexdigest()}"

    def version(self) -> int:
        """The semantic namespace version: part of every partition; :meth:`reindex` bumps it."""
        return self._cache.namespace_version(NAMESPACE) if self._cache is not None else 1

    def probe(self, request: Any, scope: str | None, version: int = 1) -> Probe | None:
        """The query and partition of ``request`` (an ``LLMRequest``), or ``None`` (not eligible).

        ``scope``: the tenant/user scope of the call; ``version``: :meth:`version`.
        """
        params = dict(request.params)
        if request.seed is not None:
            params["seed"] = request.seed
        if not self.serve_sampled and is_sampled(params):
            return None
        found = query_of(request.messages)
        if found is None or not found[0].strip():
            return None
        query, rest = found
        fields, _ = llm_fields(
            model=request.model,
            messages=rest,
            provider=request.provider,
            params=request.params,
            tools=request.tools,
            tool_choice=request.tool_choice,
            response_format=request.response_format,
            seed=request.seed,
        )
        fields["semantic"] = {"scope": scope, "version": version, "embedder": self.embedder()}
        return Probe(query, make_key("semp", fields))

    def match(self, probe: Probe, candidates: Sequence[Candidate]) -> SemanticMatch | None:
        """The most similar candidate at or above the threshold that the guards accept."""
        for candidate in candidates:
            similarity = candidate.similarity
            if not (math.isfinite(similarity) and similarity <= _MAX_COSINE):
                continue  # NaN, infinite or above 1: a corrupt vector or index, never a hit
            if similarity < self.threshold:
                break  # most similar first: the rest are below too
            if self.guards:
                rule = disagreement(probe.query, candidate.prompt)
                if rule is not None:
                    probe.refused[rule] = probe.refused.get(rule, 0) + 1
                    continue
            return SemanticMatch(candidate.similarity, candidate.prompt, candidate.key)
        return None

    def _failed(self, probe: Probe, where: str, exc: Exception) -> None:
        probe.failed = True
        if where not in self._logged:
            self._logged.add(where)
            logger.warning(
                "semantic cache %s failed (%s: %s); calls go on with the exact cache only",
                where,
                type(exc).__name__,
                exc,
            )

    # --- blocking ---------------------------------------------------------------------
    def lookup(self, probe: Probe) -> SemanticMatch | None:
        """Embed the query (kept on ``probe`` for :meth:`store`) and find its match."""
        try:
            probe.vector = _unit(self.embeddings.embed_query(probe.query))
        except Exception as exc:
            self._failed(probe, "embedding", exc)
            return None
        if probe.vector is None:
            return None
        try:
            found = self.index.search(probe.partition, probe.vector, self.candidates)
        except Exception as exc:
            self._failed(probe, "search", exc)
            return None
        return self.match(probe, found)

    def store(self, probe: Probe, key: str, ttl: float | None) -> None:
        """Remember the probe's query as answered under the exact cache ``key``."""
        if probe.failed:
            return
        try:
            if probe.vector is None:
                probe.vector = _unit(self.embeddings.embed_query(probe.query))
            if probe.vector is not None:
                self.index.add(probe.partition, probe.vector, probe.query, key, ttl)
        except Exception as exc:
            self._failed(probe, "store", exc)

    # --- async ------------------------------------------------------------------------
    async def alookup(self, probe: Probe) -> SemanticMatch | None:
        """Async twin of :meth:`lookup`."""
        try:
            probe.vector = _unit(await self.embeddings.aembed_query(probe.query))
        except Exception as exc:
            self._failed(probe, "embedding", exc)
            return None
        if probe.vector is None:
            return None
        try:
            found = await self.index.asearch(probe.partition, probe.vector, self.candidates)
        except Exception as exc:
            self._failed(probe, "search", exc)
            return None
        return self.match(probe, found)

    async def astore(self, probe: Probe, key: str, ttl: float | None) -> None:
        """Async twin of :meth:`store`."""
        if probe.failed:
            return
        try:
            if probe.vector is None:
                probe.vector = _unit(await self.embeddings.aembed_query(probe.query))
            if probe.vector is not None:
                await self.index.aadd(probe.partition, probe.vector, probe.query, key, ttl)
        except Exception as exc:
            self._failed(probe, "store", exc)

    async def aversion(self) -> int:
        """Async :meth:`version`."""
        return await self._cache.anamespace_version(NAMESPACE) if self._cache is not None else 1

    def reindex(self) -> int:
        """Forget every semantic entry at once (all processes), e.g. after changing models.

        Bumps the semantic namespace version; exact entries stay. Returns the new version.
        """
        if self._cache is None:
            msg = "reindex needs a cache manager (the namespace version lives there)"
            raise RuntimeError(msg)
        return self._cache.bump_namespace(NAMESPACE)

    def info(self) -> dict[str, Any]:
        """The index's state and the settings, for ``rag-perf cache info``."""
        return {
            **self.index.info(),
            "threshold": self.threshold,
            "guards": self.guards,
            "embedder": self.embedder(),
            "version": self.version(),
        }


def scope_digest(scope: str) -> str:
    """A short digest of a tenant/user scope for cache keys (the scope itself is not stored)."""
    return hashlib.blake2b(scope.encode("utf-8"), digest_size=8).hexdigest()
