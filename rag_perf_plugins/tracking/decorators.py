"""``track_performance`` (decorator) and ``track`` (context manager) over the tracker.

Example::

    @track_performance("retrieve")
    async def retrieve(query: str) -> list[str]: ...

    @track_performance("llm.stream")
    async def stream(prompt: str) -> AsyncIterator[str]: ...   # TTFT and abandonment too

    with track("rerank") as call:
        call.batch_size = len(docs)
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from types import TracebackType
from typing import Any, TypeVar, cast

from .tracker import PerformanceTracker, get_performance_tracker

__all__ = ["TrackedCall", "track", "track_performance"]

F = TypeVar("F", bound=Callable[..., Any])


class TrackedCall:
    """One timed call; a sync and async context manager. Get one from ``track("op")``.

    Example::

        with track("llm") as call:
            reply = client.chat(...)
            call.tokens_in = reply.usage.prompt_tokens
            call.cache_hit = False
            call.first_token()          # for streams: stamps time to first token now

    Set any of ``tokens_in``, ``tokens_out``, ``cache_hit``, ``queue_wait_s`` (seconds),
    ``batch_size``, ``retries``, ``tokens_saved``, ``ttft_s`` (seconds) or ``error``
    before the block ends; they go into one ``record`` call when it ends. An exception
    leaving the block sets ``error``. Not reusable: one handle, one call.
    """

    __slots__ = (
        "_done",
        "_start",
        "_tracker",
        "batch_size",
        "cache_hit",
        "error",
        "operation",
        "queue_wait_s",
        "retries",
        "tokens_in",
        "tokens_out",
        "tokens_saved",
        "ttft_s",
    )

    def __init__(self, tracker: PerformanceTracker, operation: str) -> None:
        self._tracker = tracker
        self.operation = operation
        self._start = 0.0
        self._done = False
        self.tokens_in = 0
        self.tokens_out = 0
        self.cache_hit: bool | None = None
        self.queue_wait_s: float | None = None
        self.batch_size: int | None = None
        self.retries = 0
        self.tokens_saved = 0
        self.ttft_s: float | None = None
        self.error = False

    def start(self) -> TrackedCall:
        """Start the timer (``__enter__`` does this)."""
        self._start = self._tracker.clock()
        return self

    def first_token(self) -> None:
        """Stamp the time to first token as now (only the first stamp counts)."""
        if self.ttft_s is None:
            self.ttft_s = self._tracker.clock() - self._start

    def finish(self, *, error: bool | None = None, abandoned: bool = False) -> None:
        """Record the call (``__exit__`` does this); later calls do nothing."""
        if self._done:
            return
        self._done = True
        if error is not None:
            self.error = self.error or error
        self._tracker.record(
            self.operation,
            self._tracker.clock() - self._start,
            error=self.error,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
            cache_hit=self.cache_hit,
            queue_wait_s=self.queue_wait_s,
            batch_size=self.batch_size,
            retries=self.retries,
            tokens_saved=self.tokens_saved,
            ttft_s=self.ttft_s,
            abandoned=abandoned,
        )

    def __enter__(self) -> TrackedCall:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    async def __aenter__(self) -> TrackedCall:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(error=exc_type is not None)

    def __repr__(self) -> str:
        state = "done" if self._done else "running"
        return f"<TrackedCall {self.operation!r} [{state}, error: {self.error}]>"


def track(operation: str, *, tracker: PerformanceTracker | None = None) -> TrackedCall:
    """Time a block on the process-wide tracker (or on ``tracker``).

    Example: ``with track("op") as call: call.cache_hit = True``.

    Works with ``with`` and ``async with``; see :class:`TrackedCall` for what the handle
    records.
    """
    return TrackedCall(tracker or get_performance_tracker(), operation)


def track_performance(
    operation: str, *, tracker: PerformanceTracker | None = None
) -> Callable[[F], F]:
    """Decorate a function, coroutine function, generator or async generator to be tracked.

    Example::

        @track_performance("embed")
        def embed(texts: list[str]) -> list[list[float]]: ...

    Plain and async functions are timed call to return (an exception records an error
    and propagates). Generators are timed from the first ``next`` to exhaustion; the time
    to the first item is recorded as TTFT, and a stream closed before its end (``break``
    then ``close()``/garbage collection, or ``aclose()``) is recorded as *abandoned*, not
    as an error.

    The tracker is looked up at each call when ``tracker`` is None, so
    ``set_performance_tracker`` applies to functions decorated earlier. When the tracker
    is disabled the call goes straight through. Generators: ``send``/``throw`` values are
    not forwarded to the wrapped generator (streams are only iterated).
    """
    if not isinstance(operation, str) or not operation:
        msg = f"operation must be a non-empty str, got {operation!r}"
        raise ValueError(msg)

    def decorate(fn: F) -> F:
        if inspect.isasyncgenfunction(fn):
            return cast(F, _wrap_async_gen(fn, operation, tracker))
        if inspect.isgeneratorfunction(fn):
            return cast(F, _wrap_gen(fn, operation, tracker))
        if inspect.iscoroutinefunction(fn):
            return cast(F, _wrap_async(fn, operation, tracker))
        return cast(F, _wrap_sync(fn, operation, tracker))

    return decorate


def _wrap_sync(
    fn: Callable[..., Any], op: str, fixed: PerformanceTracker | None
) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tracker = fixed or get_performance_tracker()
        if not tracker.enabled:
            return fn(*args, **kwargs)
        clock = tracker._clock  # the attribute, not the property: this is the hot path
        start = clock()
        try:
            result = fn(*args, **kwargs)
        except BaseException:
            tracker.record(op, clock() - start, error=True)
            raise
        tracker.record(op, clock() - start)
        return result

    return wrapper


def _wrap_async(
    fn: Callable[..., Any], op: str, fixed: PerformanceTracker | None
) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        tracker = fixed or get_performance_tracker()
        if not tracker.enabled:
            return await fn(*args, **kwargs)
        clock = tracker._clock  # the attribute, not the property: this is the hot path
        start = clock()
        try:
            result = await fn(*args, **kwargs)
        except BaseException:
            tracker.record(op, clock() - start, error=True)
            raise
        tracker.record(op, clock() - start)
        return result

    return wrapper


def _wrap_gen(
    fn: Callable[..., Iterator[Any]], op: str, fixed: PerformanceTracker | None
) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, None, None]:
        tracker = fixed or get_performance_tracker()
        if not tracker.enabled:
            yield from fn(*args, **kwargs)
            return
        call = TrackedCall(tracker, op).start()
        inner = fn(*args, **kwargs)
        with _StreamEnd(call, inner):
            for item in inner:
                call.first_token()
                yield item

    return wrapper


def _wrap_async_gen(
    fn: Callable[..., AsyncIterator[Any]], op: str, fixed: PerformanceTracker | None
) -> Callable[..., Any]:
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        tracker = fixed or get_performance_tracker()
        inner = fn(*args, **kwargs)
        if not tracker.enabled:
            async for item in inner:
                yield item
            return
        call = TrackedCall(tracker, op).start()
        async with _StreamEnd(call, inner):
            async for item in inner:
                call.first_token()
                yield item

    return wrapper


class _StreamEnd:
    """How a tracked stream ends, recorded once: the context both generator wrappers share.

    ``with _StreamEnd(call, inner):`` around the item loop. An exception leaving the loop
    is recorded first (``GeneratorExit``, the consumer closed us before the end:
    *abandoned*, not failed; anything else: an error), then the wrapped generator is
    closed; a stream that ran to its end is closed first and then recorded. Only the
    close differs between the twins (``close()`` or ``await aclose()``).
    """

    __slots__ = ("_call", "_inner")

    def __init__(self, call: TrackedCall, inner: Iterator[Any] | AsyncIterator[Any]) -> None:
        self._call = call
        self._inner = inner

    def _failed(self, exc_type: type[BaseException] | None) -> None:
        if exc_type is None:
            return
        if issubclass(exc_type, GeneratorExit):
            self._call.finish(abandoned=True)
        else:
            self._call.finish(error=True)

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._failed(exc_type)
        if isinstance(self._inner, Generator):
            self._inner.close()
        if exc_type is None:
            self._call.finish()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self._failed(exc_type)
        if isinstance(self._inner, AsyncGenerator):
            await self._inner.aclose()
        if exc_type is None:
            self._call.finish()
