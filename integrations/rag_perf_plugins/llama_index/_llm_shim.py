"""A framework-free LLM request path: cache, single-flight, gate and retry, tracker, streams.

STOP-GAP. The one implementation of this path is meant to be
``rag_perf_plugins.llm_service`` (issue 12), shared with LangChain's ``PerfChatModel``.
It had not landed when the LlamaIndex LLM wrapper was written, so this module holds the
smallest path the wrapper needs, built only from core parts (``CacheManager``,
``AdmissionGate``, ``RetryPolicy``, ``PerformanceTracker``) and importing no framework.
Replace it with the service when it lands; :class:`LLMRequestPath` is the seam.

Example::

    path = LLMRequestPath(provider="openai", model="gpt-4o-mini", config=config, ...)
    key = path.key("chat", messages=[{"role": "user", "content": "hi"}], params={...})
    value, hit = path.call("chat", key, call_provider, dump=..., load=..., usage=...)

Statistics go to ``llm.<kind>`` (``llm.chat``, ``llm.complete``, ``llm.stream_chat``,
``llm.stream_complete``): latency in seconds, provider tokens on misses, zero tokens and
``tokens_saved`` on hits, time to first chunk for streams, abandoned streams.

Not done: single-flight for streams (identical concurrent streams each call the
provider); the admission gate admits a stream's start (slot, RPM and TPM until its first
chunk), not its whole length.
"""

from __future__ import annotations

from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from typing import Any, Final, TypeVar

from rag_perf_plugins._clock import Clock, monotonic
from rag_perf_plugins.admission import AdmissionGate
from rag_perf_plugins.cache import CacheManager, llm_key
from rag_perf_plugins.cache.control import CacheControl, applied, current_control
from rag_perf_plugins.retry import RetryPolicy
from rag_perf_plugins.tracking import PerformanceTracker

__all__ = ["NAMESPACE", "LLMRequestPath"]

NAMESPACE: Final = "llm"
T = TypeVar("T")
C = TypeVar("C")
Usage = tuple[int, int]
_END: Final[Any] = object()


class LLMRequestPath:
    """Cache, single-flight, admission, retry and statistics for one LLM's calls.

    Args:
        provider: Provider identity in keys and gate names.
        model: Model name in keys; tags cache entries for ``purge_model``.
        cache: The cache manager, or ``None`` for no caching.
        gate: Admission gate taken around every provider attempt, or ``None``.
        retry: The retry owner for provider calls, or ``None`` for one attempt.
        tracker: Statistics sink, or ``None``.
        clock: Seconds, monotonic.
        operation: Prefix of the tracker operation names.
    """

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        cache: CacheManager | None,
        gate: AdmissionGate | None,
        retry: RetryPolicy | None,
        tracker: PerformanceTracker | None,
        clock: Clock = monotonic,
        operation: str = "llm",
    ) -> None:
        self.provider = provider
        self.model = model
        self.cache = cache if cache is not None and cache.enabled else None
        self.gate = gate
        self.retry = retry
        self.tracker = tracker
        self.clock = clock
        self.operation = operation
        self.provider_calls = 0

    # --- keys -------------------------------------------------------------------------
    def key(
        self,
        kind: str,
        *,
        messages: Any,
        params: Mapping[str, Any],
        sampling: Mapping[str, Any] | None = None,
    ) -> str | None:
        """The cache key, or ``None`` when this call is not cached (policy or unkeyable).

        ``sampling`` (``temperature``, ``seed``) feeds the ``cache_skip_sampled`` policy;
        ``None`` reads them from ``params``.
        """
        cache = self.cache
        if cache is None or not cache.should_cache_llm(params if sampling is None else sampling):
            return None
        try:
            return llm_key(
                model=self.model,
                messages=messages,
                provider=self.provider,
                params={"kind": kind, **params},
            )
        except (TypeError, ValueError):
            if self.tracker is not None:
                self.tracker.incr("cache.unkeyable", operation=f"{self.operation}.{kind}")
            return None

    # --- statistics -------------------------------------------------------------------
    def _record(
        self,
        kind: str,
        started: float,
        *,
        hit: bool | None,
        usage: Usage = (0, 0),
        saved: int = 0,
        error: bool = False,
        ttft: float | None = None,
        abandoned: bool = False,
    ) -> None:
        if self.tracker is not None:
            self.tracker.record(
                f"{self.operation}.{kind}",
                self.clock() - started,
                error=error,
                tokens_in=usage[0],
                tokens_out=usage[1],
                cache_hit=hit,
                tokens_saved=saved,
                ttft_s=ttft,
                abandoned=abandoned,
            )

    def _readable(self, key: str | None, control: CacheControl) -> CacheManager | None:
        cache = self.cache
        if key is None or cache is None or not control.read:
            return None
        return cache

    # --- one answer -------------------------------------------------------------------
    def _guarded(self, fn: Callable[[], T], tokens: int) -> T:
        self.provider_calls += 1
        if self.retry is not None:
            return self.retry.call(fn, gate=self.gate, tokens=tokens)
        if self.gate is not None:
            with self.gate.acquire_sync(tokens=tokens):
                return fn()
        return fn()

    async def _aguarded(self, fn: Callable[[], Awaitable[T]], tokens: int) -> T:
        self.provider_calls += 1
        if self.retry is not None:
            return await self.retry.acall(fn, gate=self.gate, tokens=tokens)
        if self.gate is not None:
            async with self.gate.acquire(tokens=tokens):
                return await fn()
        return await fn()

    def call(
        self,
        kind: str,
        key: str | None,
        fn: Callable[[], T],
        *,
        dump: Callable[[T], Any],
        load: Callable[[Any], T],
        usage: Callable[[T], Usage],
        tokens: int = 0,
    ) -> tuple[T, bool]:
        """``(answer, hit)``: from the cache, or ``fn()`` through the gate and retry, stored.

        Identical concurrent misses share one provider call (single-flight); the followers
        get the stored form and count as hits (they cost no tokens).
        """
        started = self.clock()
        cache = self._readable(key, current_control())
        if cache is not None:
            data = cache.get(key, namespace=NAMESPACE)  # type: ignore[arg-type]
            if data is not None:
                self._record(kind, started, hit=True, saved=sum(data["u"]))
                return load(data["r"]), True
        live: list[T] = []

        def compute() -> dict[str, Any]:
            result = self._guarded(fn, tokens)
            live.append(result)
            return {"r": dump(result), "u": list(usage(result))}

        try:
            if key is None or self.cache is None:
                result = self._guarded(fn, tokens)
                self._record(kind, started, hit=None, usage=usage(result))
                return result, False
            data = self.cache.get_or_compute(key, compute, namespace=NAMESPACE, model=self.model)
        except BaseException:
            self._record(kind, started, hit=None if key is None else False, error=True)
            raise
        if live:
            self._record(kind, started, hit=False, usage=usage(live[0]))
            return live[0], False
        self._record(kind, started, hit=True, saved=sum(data["u"]))
        return load(data["r"]), True

    async def acall(
        self,
        kind: str,
        key: str | None,
        fn: Callable[[], Awaitable[T]],
        *,
        dump: Callable[[T], Any],
        load: Callable[[Any], T],
        usage: Callable[[T], Usage],
        tokens: int = 0,
    ) -> tuple[T, bool]:
        """Async :meth:`call`; cache reads stay off the loop, the leader is shielded."""
        started = self.clock()
        cache = self._readable(key, current_control())
        if cache is not None:
            data = await cache.aget(key, namespace=NAMESPACE)  # type: ignore[arg-type]
            if data is not None:
                self._record(kind, started, hit=True, saved=sum(data["u"]))
                return load(data["r"]), True
        live: list[T] = []

        async def compute() -> dict[str, Any]:
            result = await self._aguarded(fn, tokens)
            live.append(result)
            return {"r": dump(result), "u": list(usage(result))}

        try:
            if key is None or self.cache is None:
                result = await self._aguarded(fn, tokens)
                self._record(kind, started, hit=None, usage=usage(result))
                return result, False
            data = await self.cache.aget_or_compute(
                key, compute, namespace=NAMESPACE, model=self.model
            )
        except BaseException:
            self._record(kind, started, hit=None if key is None else False, error=True)
            raise
        if live:
            self._record(kind, started, hit=False, usage=usage(live[0]))
            return live[0], False
        self._record(kind, started, hit=True, saved=sum(data["u"]))
        return load(data["r"]), True

    # --- streams ----------------------------------------------------------------------
    def stream(
        self,
        kind: str,
        key: str | None,
        start: Callable[[], Iterator[C]],
        *,
        dump: Callable[[list[C]], Any],
        replay: Callable[[Any], Iterator[C]],
        usage: Callable[[list[C]], Usage],
        tokens: int = 0,
    ) -> Generator[C, None, None]:
        """A generator of chunks: replayed from the cache, or live and recorded.

        A live stream is stored only when it ran to its end; one the consumer abandons
        (closes early) or that fails is not stored, and is counted (``streams_abandoned``
        or an error). Opening the stream and its first chunk go through gate and retry.
        The cache control in effect at this call applies, wherever the stream is read.
        """
        return self._stream(
            current_control(),
            kind,
            key,
            start,
            dump=dump,
            replay=replay,
            usage=usage,
            tokens=tokens,
        )

    def _stream(
        self,
        control: CacheControl,
        kind: str,
        key: str | None,
        start: Callable[[], Iterator[C]],
        *,
        dump: Callable[[list[C]], Any],
        replay: Callable[[Any], Iterator[C]],
        usage: Callable[[list[C]], Usage],
        tokens: int,
    ) -> Generator[C, None, None]:
        started = self.clock()
        cache = self._readable(key, control)
        if cache is not None:
            with applied(control):
                data = cache.get(key, namespace=NAMESPACE)  # type: ignore[arg-type]
            if data is not None:
                yield from self._replayed(kind, started, data, replay)
                return
        write = control.write

        def open_stream() -> tuple[Iterator[C], Any]:
            it = start()
            return it, next(it, _END)

        chunks: list[C] = []
        ttft: float | None = None
        finished = False
        try:
            it, first = self._guarded(open_stream, tokens)
            if first is not _END:
                ttft = self.clock() - started
                chunks.append(first)
                yield first
                for chunk in it:
                    chunks.append(chunk)
                    yield chunk
            finished = True
        except GeneratorExit:
            self._record(kind, started, hit=self._hit_flag(key), ttft=ttft, abandoned=True)
            raise
        except BaseException:
            self._record(kind, started, hit=self._hit_flag(key), ttft=ttft, error=True)
            raise
        finally:
            if finished:
                spent = usage(chunks)
                with applied(control):
                    self._store_stream(key, chunks, dump, spent, write)
                self._record(kind, started, hit=self._hit_flag(key), usage=spent, ttft=ttft)

    def astream(
        self,
        kind: str,
        key: str | None,
        start: Callable[[], Awaitable[AsyncIterator[C]]],
        *,
        dump: Callable[[list[C]], Any],
        replay: Callable[[Any], Iterator[C]],
        usage: Callable[[list[C]], Usage],
        tokens: int = 0,
    ) -> AsyncGenerator[C, None]:
        """Async :meth:`stream` (an async generator; same rules)."""
        return self._astream(
            current_control(),
            kind,
            key,
            start,
            dump=dump,
            replay=replay,
            usage=usage,
            tokens=tokens,
        )

    async def _astream(
        self,
        control: CacheControl,
        kind: str,
        key: str | None,
        start: Callable[[], Awaitable[AsyncIterator[C]]],
        *,
        dump: Callable[[list[C]], Any],
        replay: Callable[[Any], Iterator[C]],
        usage: Callable[[list[C]], Usage],
        tokens: int,
    ) -> AsyncGenerator[C, None]:
        started = self.clock()
        cache = self._readable(key, control)
        if cache is not None:
            with applied(control):
                data = await cache.aget(key, namespace=NAMESPACE)  # type: ignore[arg-type]
            if data is not None:
                for chunk in self._replayed(kind, started, data, replay):
                    yield chunk
                return
        write = control.write

        async def open_stream() -> tuple[AsyncIterator[C], Any]:
            it = await start()
            return it, await anext(aiter(it), _END)

        chunks: list[C] = []
        ttft: float | None = None
        finished = False
        try:
            it, first = await self._aguarded(open_stream, tokens)
            if first is not _END:
                ttft = self.clock() - started
                chunks.append(first)
                yield first
                async for chunk in it:
                    chunks.append(chunk)
                    yield chunk
            finished = True
        except GeneratorExit:
            self._record(kind, started, hit=self._hit_flag(key), ttft=ttft, abandoned=True)
            raise
        except BaseException:
            self._record(kind, started, hit=self._hit_flag(key), ttft=ttft, error=True)
            raise
        if finished:
            spent = usage(chunks)
            if key is not None and self.cache is not None and write:
                data = self._stream_data(chunks, dump, spent)
                if data is not None:
                    with applied(control):
                        await self.cache.aset(key, data, namespace=NAMESPACE, model=self.model)
            self._record(kind, started, hit=self._hit_flag(key), usage=spent, ttft=ttft)

    def _hit_flag(self, key: str | None) -> bool | None:
        return None if key is None or self.cache is None else False

    def _replayed(
        self, kind: str, started: float, data: Any, replay: Callable[[Any], Iterator[C]]
    ) -> Iterator[C]:
        ttft: float | None = None
        for chunk in replay(data["c"]):
            if ttft is None:
                ttft = self.clock() - started
            yield chunk
        self._record(kind, started, hit=True, saved=sum(data["u"]), ttft=ttft)

    def _stream_data(self, chunks: list[C], dump: Callable[[list[C]], Any], spent: Usage) -> Any:
        try:
            return {"c": dump(chunks), "u": list(spent)}
        except (TypeError, ValueError):
            if self.tracker is not None:
                self.tracker.incr("cache.unstorable", operation=f"{self.operation}.stream")
            return None

    def _store_stream(
        self,
        key: str | None,
        chunks: list[C],
        dump: Callable[[list[C]], Any],
        spent: Usage,
        write: bool,
    ) -> None:
        if key is None or self.cache is None or not write:
            return
        data = self._stream_data(chunks, dump, spent)
        if data is not None:
            try:
                self.cache.set(key, data, namespace=NAMESPACE, model=self.model)
            except Exception:  # CacheError: a value msgpack cannot store
                if self.tracker is not None:
                    self.tracker.incr("cache.unstorable", operation=f"{self.operation}.stream")
