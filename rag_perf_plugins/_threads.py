"""Blocking work from async code, in a worker thread: one call, or a whole iterator.

Example::

    answer = await run_blocking(service.generate, request, call, codec)
    async for chunk in iterate_blocking(lambda: service.stream(request, open_stream, codec)):
        ...

What ``async_enabled: false`` means for the async methods of the services and wrappers:
they run the blocking path (blocking provider call, blocking cache I/O) in a worker thread,
so the event loop keeps serving. Context variables (per-call ``cache_control``) travel with
the work, as ``asyncio.to_thread`` copies them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any, Final, ParamSpec, TypeVar

__all__ = ["iterate_blocking", "run_blocking"]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")
_END: Final[Any] = object()


async def run_blocking(fn: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """``fn(*args, **kwargs)`` in a worker thread; the loop is not blocked."""
    return await asyncio.to_thread(fn, *args, **kwargs)


async def iterate_blocking(open_iterator: Callable[[], Iterator[T]]) -> AsyncGenerator[T, None]:
    """The items of a blocking iterator, each ``next()`` in a worker thread.

    Closing the async generator (``aclose()``, or ``break`` inside ``contextlib.aclosing``)
    closes the blocking iterator too, in a worker thread.
    """
    iterator = await asyncio.to_thread(open_iterator)
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, _END)
            if item is _END:
                return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if callable(close):
            await asyncio.to_thread(close)
