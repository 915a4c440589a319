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
from typing import Any, TypeVar, cast

from .call import TrackedCall
from .tracker import PerformanceTracker, get_performance_tracker

__all__ = ["track", "track_performance"]

F = TypeVar("F", bound=Callable[..., Any])


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


# unasync: generated from _wrap_async
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
