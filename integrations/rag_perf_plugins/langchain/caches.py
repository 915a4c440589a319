"""PerfLLMCache: LangChain's ``set_llm_cache()`` backed by our persistent, pickle-free tiers.

Example::

    from langchain_core.globals import set_llm_cache
    from rag_perf_plugins.langchain import PerfLLMCache

    set_llm_cache(PerfLLMCache())          # every LLM / chat model call is cached on disk
    llm.invoke("What is RAG?")             # miss: calls the provider, stores the answer
    llm.invoke("What is RAG?")             # hit: no provider call, also in a new process

Keys. LangChain hands a cache only two strings: ``prompt`` (the serialized messages) and
``llm_string`` (the model's serialized parameters). Both go into the key, hashed, so the
full prompt is never a primary key on disk. ``llm_string`` is built by LangChain, not us,
and it includes parameters that do not change the answer, ``request_timeout`` and
``max_retries`` among them: changing a timeout makes every existing entry miss. Only the
chat wrapper (``PerfChatModel``) builds its own complete, timeout-free keys.

Storage. Generations are stored as plain data (message dicts from
``langchain_core.messages.message_to_dict``, text, generation info) through the
:class:`~rag_perf_plugins.cache.CacheManager` (memory tier, then diskcache; msgpack/JSON,
never pickle), under the ``llm`` namespace, with the manager's TTL and size bounds. In
front sits a small in-process table of already decoded answers (``cache_size`` entries,
LRU, TTL respected), so a repeated hit costs a dict lookup, as ``InMemoryCache`` does.

Not done here: another process's ``clear()`` reaches this process's decoded table only
when its entries expire or are evicted; a failing disk degrades to "uncached" (counted by
the manager), never an error for the caller.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from langchain_core.caches import RETURN_VAL_TYPE, BaseCache
from langchain_core.messages import message_to_dict, messages_from_dict
from langchain_core.outputs import ChatGeneration, Generation
from typing_extensions import override

from rag_perf_plugins._signature import checked_kwargs
from rag_perf_plugins.cache import CacheManager, cache_manager_for, current_control, make_key
from rag_perf_plugins.config import PerformanceConfig, resolve_config

__all__ = ["PerfLLMCache", "decode_generations", "encode_generations"]

NAMESPACE = "llm"


def encode_generations(generations: Sequence[Generation]) -> list[dict[str, Any]]:
    """Plain, msgpack/JSON-safe data for a list of generations (no pickle, no classes).

    Example: ``encode_generations([Generation(text="hi")]) == [{"text": "hi", "info": None}]``.
    """
    out: list[dict[str, Any]] = []
    for gen in generations:
        item: dict[str, Any] = {"text": gen.text, "info": gen.generation_info}
        if isinstance(gen, ChatGeneration):
            item["message"] = message_to_dict(gen.message)
        out.append(item)
    return out


def decode_generations(data: Sequence[dict[str, Any]]) -> list[Generation]:
    """The inverse of :func:`encode_generations`; only LangChain message types are built."""
    out: list[Generation] = []
    for item in data:
        message = item.get("message")
        if message is not None:
            msg = messages_from_dict([message])[0]
            out.append(ChatGeneration(message=msg, generation_info=item.get("info")))
        else:
            out.append(Generation(text=item["text"], generation_info=item.get("info")))
    return out


class PerfLLMCache(BaseCache):
    """A persistent LangChain LLM cache with TTL, size bounds and native async methods.

    Example: ``set_llm_cache(PerfLLMCache(ttl=3600.0))``.

    Args:
        cache: The manager holding the entries; ``None`` uses the one for ``config``'s
            cache settings (directory, tiers, Redis).
        config: ``cache_ttl`` (seconds), ``cache_size`` and the cache's settings; ``None``
            means the ``cache`` manager's config when one is given, else
            ``PerformanceConfig.load()``.
        ttl: Seconds an entry lives (``None``: ``config.cache_ttl``).
        memory_items: Decoded answers kept in process (``None``: ``config.cache_size``;
            0 turns the table off).
        clock: Seconds (wall clock, like the manager's), for the decoded table's expiry.

    See the module docstring for what goes into keys and what does not.
    """

    @checked_kwargs
    def __init__(
        self,
        cache: CacheManager | None = None,
        *,
        config: PerformanceConfig | None = None,
        ttl: float | None = None,
        memory_items: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if ttl is not None and not ttl > 0:
            msg = f"ttl must be > 0 seconds or None, got {ttl!r}"
            raise ValueError(msg)
        if config is None:
            config = cache.config if cache is not None else resolve_config(None)
        self.config = config
        self.cache = cache if cache is not None else cache_manager_for(config)
        self.ttl = ttl
        size = config.cache_size if memory_items is None else memory_items
        if size < 0:
            msg = f"memory_items must be >= 0, got {memory_items!r}"
            raise ValueError(msg)
        self._size = size
        self._clock = clock
        self._lock = threading.Lock()
        # (prompt, llm_string) -> (expires_at or None, generations)
        self._decoded: OrderedDict[tuple[str, str], tuple[float | None, RETURN_VAL_TYPE]] = (
            OrderedDict()
        )

    # --- the shared core ------------------------------------------------------------
    @staticmethod
    def key(prompt: str, llm_string: str) -> str:
        """The stored key: a versioned hash of ``prompt`` and ``llm_string``."""
        return make_key("lc-llm", {"prompt": prompt, "llm_string": llm_string})

    def _ttl(self) -> float:
        """Seconds a new entry lives; ``math.inf`` for never (``cache_ttl: null``)."""
        ttl = current_control().ttl or self.ttl or self.config.cache_ttl
        return math.inf if ttl is None else ttl

    def _peek(self, pair: tuple[str, str]) -> RETURN_VAL_TYPE | None:
        if not self._size or not current_control().read:
            return None
        with self._lock:
            entry = self._decoded.get(pair)
            if entry is None:
                return None
            expires_at, value = entry
            if expires_at is not None and self._clock() >= expires_at:
                del self._decoded[pair]
                return None
            self._decoded.move_to_end(pair)
            return value

    def _remember(self, pair: tuple[str, str], value: RETURN_VAL_TYPE) -> None:
        if not self._size:
            return
        ttl = self._ttl()
        expires_at = None if ttl == math.inf else self._clock() + ttl
        with self._lock:
            self._decoded[pair] = (expires_at, value)
            self._decoded.move_to_end(pair)
            while len(self._decoded) > self._size:
                self._decoded.popitem(last=False)

    def _accept(self, pair: tuple[str, str], data: Any) -> RETURN_VAL_TYPE | None:
        if data is None:
            return None
        try:
            value = decode_generations(data)
        except (KeyError, TypeError, ValueError, IndexError):
            return None  # an entry we cannot read is a miss, never an error
        self._remember(pair, value)
        return value

    # --- sync -----------------------------------------------------------------------
    @override
    def lookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        pair = (prompt, llm_string)
        found = self._peek(pair)
        if found is not None:
            return found
        return self._accept(pair, self.cache.get(self.key(*pair), namespace=NAMESPACE))

    @override
    def update(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        if not current_control().write:
            return
        pair = (prompt, llm_string)
        self.cache.set(
            self.key(*pair), encode_generations(return_val), self._ttl(), namespace=NAMESPACE
        )
        self._remember(pair, list(return_val))

    @override
    def clear(self, **kwargs: Any) -> None:
        """Drop every entry of the ``llm`` namespace, in every tier, and the decoded table."""
        with self._lock:
            self._decoded.clear()
        self.cache.clear(NAMESPACE)

    # --- async: the same core, disk I/O off the loop --------------------------------
    @override
    async def alookup(self, prompt: str, llm_string: str) -> RETURN_VAL_TYPE | None:
        pair = (prompt, llm_string)
        found = self._peek(pair)
        if found is not None:
            return found
        data = await self.cache.aget(self.key(*pair), namespace=NAMESPACE)
        return self._accept(pair, data)

    @override
    async def aupdate(self, prompt: str, llm_string: str, return_val: RETURN_VAL_TYPE) -> None:
        if not current_control().write:
            return
        pair = (prompt, llm_string)
        await self.cache.aset(
            self.key(*pair), encode_generations(return_val), self._ttl(), namespace=NAMESPACE
        )
        self._remember(pair, list(return_val))

    @override
    async def aclear(self, **kwargs: Any) -> None:
        with self._lock:
            self._decoded.clear()
        await self.cache.aclear(NAMESPACE)

    def __repr__(self) -> str:
        return f"<PerfLLMCache [decoded: {len(self._decoded)}/{self._size}] {self.cache!r}>"
